"""Benchmark (issue 25): what squashing images to the batched input costs localization, against the native-resolution
box pass (each image at its own size, batched by size), on synthetic sets of several image sizes and aspect ratios.

Two `make_shapes` sets: `large` objects (15-50% of the image area) and `logo`-sized ones (3-10%), each drawn at six
image sizes (square, 4:3 both ways, 2.4:1 both ways, an odd 300x200). One learner for both, as a user would make it:
`pretrained_learner(dls)` (ImageNet EfficientNet-Lite0, offline weights) with `item_tfms=Resize(--size)` (squash), then
`learn.fine_tune(--epochs)`; the weights are cached in git-ignored `bench/cache/batched/`. Then, on the validation
images of both sets, `box_pass` (Grad-CAM, predicted class, margin 0.95: the seed's 2.5% mass cut per side) with
* `batched squash <size>`: the learner's own input (the package's default),
* `batched pad <size>` (`frame=Resize(size, method='pad', pad_mode='zeros')`), squash at 1.25x the size, squash and pad
  at 1.5x (`frame=Resize(...)`: the box pass's input only, the same model),
* `native` (`native=True`: each image at its own size rounded to the stride, no cap) and `native max <s>` (capped),
each timed (images/s of the whole `box_pass`, cache off, best of `--rounds` rounds with the modes interleaved), scored against the known boxes
(recall, precision, IoU, image-area reduction: `evaluate_localization`) and by MaxBoxAccV2 of the same maps
(recomputed by the same loaders, mapped onto the original image's pixels through each frame; thresholds every 0.02).
Writes results/batched.json and .md with the harness's stamp; the last printed line is one JSON object.

    PYTHONPATH=. python bench/batched.py [--size 128] [--epochs 3] [--n-train 60] [--n-valid 30] [--rounds 2]
    PYTHONPATH=. python bench/batched.py --quick    # a smoke run: 64 px, 2 + 1 images a class and set (bench/out/batched.*)
"""
import argparse, datetime, hashlib, json, os, platform, sys, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402
import numpy as np, pandas as pd, torch, torch.nn.functional as F
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, parent_label, GrandparentSplitter, Resize, accuracy,
                               get_image_files, set_seed)
from fastai_attncrop.data import make_shapes, read_boxes_csv, write_text_atomic, atomic_write
from fastai_attncrop.models import pretrained_learner
from fastai_attncrop.saliency import saliency_maps
from fastai_attncrop.boxes import InputFrame
from fastai_attncrop.metrics import evaluate_localization, box_accuracy
from fastai_attncrop.crop import margin_cols
from fastai_attncrop.boxpass import (box_pass, load_batches, native_batches, native_size, feature_stride, frame_tfms,
                                     _image_sizes, _with_frame, _native_resize)

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO/'bench'/'cache'/'batched'
SIZES = [(256, 256), (320, 240), (240, 320), (384, 160), (160, 384), (300, 200)]
SETS = {'large': (0.15, 0.5), 'logo': (0.03, 0.1)}   # object area, share of the image
MARGIN = 0.95
COLS = ['Recall', 'Precision', 'IoU', 'Image Area Reduction', 'MaxBoxAccV2', 'accuracy', 'N']

def data(a):
    "The two sets (cached under CACHE/data) and {set name: root}."
    return {name: make_shapes(CACHE/'data'/f'{name}_{a.n_train}_{a.n_valid}', n_train=a.n_train, n_valid=a.n_valid, classes=4,
                              size=SIZES, obj_frac=frac, background='mixed', seed=i)
            for i, (name, frac) in enumerate(SETS.items())}

def learner(a, roots):
    "`pretrained_learner` fine-tuned on the training images of both sets at `a.size` (squash); weights cached."
    files = [f for r in roots.values() for f in get_image_files(r, folders=['train', 'valid'])]
    dblock = DataBlock((ImageBlock, CategoryBlock), get_y=parent_label, splitter=GrandparentSplitter(), item_tfms=Resize(a.size))
    dls = dblock.dataloaders(files, bs=a.bs, num_workers=0, seed=0)
    set_seed(0, reproducible=True)
    learn = pretrained_learner(dls, metrics=accuracy)
    key = hashlib.sha256(json.dumps([a.size, a.epochs, a.lr, a.n_train, a.n_valid, a.bs, SIZES, list(SETS.items())]).encode()).hexdigest()[:12]
    pth, meta = CACHE/f'model-{key}.pth', CACHE/f'model-{key}.json'
    if pth.exists():
        learn.model.load_state_dict(torch.load(pth, map_location='cpu'))
        return learn, dict(json.loads(meta.read_text()), cached=True)
    t0 = time.time()
    with learn.no_bar(): learn.fine_tune(a.epochs, a.lr)
    info = dict(size=a.size, epochs=a.epochs, lr=a.lr, n_train=len(dls.train_ds), n_valid=len(dls.valid_ds),
                train_seconds=round(time.time() - t0), val_accuracy=round(float(learn.validate()[1]), 4))
    atomic_write(pth, lambda tmp: torch.save(learn.model.state_dict(), tmp), suffix='.pth')
    write_text_atomic(json.dumps(info, indent=1), meta)
    return learn, info

def modes(a):
    "{name: box_pass keyword arguments} of the compared frames."
    mid, big = (int(round(a.size*f/32))*32 for f in (1.25, 1.5))
    return {f'batched squash {a.size}': {},
            f'batched pad {a.size}': dict(frame=Resize(a.size, method='pad', pad_mode='zeros')),
            f'batched squash {mid}': dict(frame=Resize(mid)),
            f'batched squash {big}': dict(frame=Resize(big)),
            f'batched pad {big}': dict(frame=Resize(big, method='pad', pad_mode='zeros')),
            'native': dict(native=True),
            f'native max {a.max_side}': dict(native=True, max_side=a.max_side)}

def image_maps(learn, paths, kw, bs):
    "{position: Grad-CAM map on the original image's pixels} with the loader and frame of box_pass's `kw`."
    sizes = _image_sizes(paths)[0]
    stride = feature_stride(learn.model)
    if kw.get('native'): batches = native_batches(learn, paths, bs=bs, sizes=sizes, max_side=kw.get('max_side'), stride=stride)
    else: batches = load_batches(learn, paths, bs=bs, item_tfms=frame_tfms(learn, kw.get('frame')))
    out, frames = {}, {}
    for pos, xb in batches:
        sm = saliency_maps(learn, xb, 'gradcam')
        H, W = sm.input_size
        for r in range(len(sm)):
            i = pos[int(sm.img_idx[r])]
            wh = tuple(int(v) for v in sizes[i])
            if wh not in frames:
                frames[wh] = InputFrame.from_tfms(_with_frame(frame_tfms(learn), _native_resize(native_size(wh, kw.get('max_side'), stride)))
                                                  if kw.get('native') else frame_tfms(learn, kw.get('frame')), wh)
            out[i] = on_image(sm.maps[r].float(), frames[wh], (W, H))
    return out

def on_image(m, frame, input_wh):
    "Map `m` (h, w over an input of size `input_wh`) resampled (bilinear) at the centres of the original image's pixels."
    (x0, y0, x1, y1), (W, H), (Wo, Ho) = frame.window, input_wh, frame.orig_wh
    xs = ((torch.arange(Wo) + .5) - x0) / (x1 - x0) * 2 - 1   # image pixel centres in the input's [-1, 1] (the whole input)
    ys = ((torch.arange(Ho) + .5) - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), -1)[None].float()
    return F.grid_sample(m[None, None], grid, mode='bilinear', padding_mode='border', align_corners=False)[0, 0]

def aspect_group(w, h):
    r = max(w, h) / min(w, h)
    return 'square' if r < 1.1 else ('4:3, 3:2' if r < 2 else 'extreme 2.4:1')

def run(a):
    t_start = time.time()
    roots = data(a)
    learn, info = learner(a, roots)
    print('model', info, flush=True)
    gt = pd.concat([read_boxes_csv(r/'boxes.csv').assign(image=lambda d, n=n: n + '/' + d.image) for n, r in roots.items()], ignore_index=True)
    items = pd.DataFrame([dict(item=str(f), split='valid', label=f.parent.name, set=n, image=f"{n}/{f.relative_to(r).as_posix()}")
                          for n, r in roots.items() for f in sorted(get_image_files(r/'valid'))])
    wh = gt.drop_duplicates('image').set_index('image')[['width', 'height']]
    items['aspect'] = [aspect_group(*wh.loc[i]) for i in items.image]
    box_pass(learn, items.head(4), margins=(MARGIN,), cache=False, progress=False)   # warm-up
    stride = feature_stride(learn.model)
    preds, maps, times, tables = [], {}, {m: [] for m in [*modes(a), 'one']}, {}
    cols = ['item', 'split', 'label']
    for r in range(a.rounds):   # the modes interleaved within every round (the order rotated), so that load drifts hit all alike
        names = [*modes(a), 'one']; names = names[r % len(names):] + names[:r % len(names)]
        for name in names:
            kw = dict(native=True, bs=1) if name == 'one' else dict(bs=a.bs, **modes(a)[name])   # 'one': the seed's "unbatched"
            t0 = time.perf_counter()
            bx = box_pass(learn, items[cols], margins=(MARGIN,), cache=False, progress=False, **kw)
            times[name].append(time.perf_counter() - t0)
            if name != 'one': tables[name] = bx
    speed = {m: len(items) / min(t) for m, t in times.items()}
    speed_one = speed.pop('one')
    print(f"  native, one image at a time: {speed_one:.1f} images/s (rounds {[round(t, 1) for t in times['one']]} s)", flush=True)
    for name, kw in modes(a).items():
        bx = tables[name]
        b = bx[margin_cols(MARGIN)].to_numpy(float)
        preds.append(pd.DataFrame(dict(method=name, image=items.image, xmin=b[:, 0], ymin=b[:, 1], xmax=b[:, 2], ymax=b[:, 3],
                                       fallback=bx.fallback.notna().to_numpy(), correct_class=bx.correct.to_numpy())))
        m = image_maps(learn, items.item.tolist(), kw, a.bs)
        maps[name] = {items.image[i]: v for i, v in m.items()}
        print(f"  {name}: {speed[name]:.1f} images/s (rounds {[round(t, 1) for t in times[name]]} s), accuracy {bx.correct.mean():.3f}", flush=True)
    preds = pd.concat(preds, ignore_index=True)
    per_image, _ = evaluate_localization(preds.drop(columns='correct_class'), gt, baselines=False)
    per_image['correct_class'] = preds.correct_class.to_numpy()
    per_image = per_image.merge(items[['image', 'set', 'aspect']], on='image')
    taus = np.arange(0, 1, 0.02)
    def summary(d, name):
        keys = d.image.tolist()
        return dict(Recall=d.recall.mean(), Precision=d.precision.mean(), IoU=d.iou.mean(),
                    **{'Image Area Reduction': d.area_reduction.mean()},
                    MaxBoxAccV2=box_accuracy({k: maps[name][k] for k in keys}, gt, taus)['MaxBoxAccV2'],
                    accuracy=d.correct_class.mean(), N=len(d))
    rows = {}
    for name in modes(a):
        d = per_image[per_image.method == name]
        rows[(name, 'all')] = summary(d, name)
        for s in SETS: rows[(name, s)] = summary(d[d.set == s], name)
    table = pd.DataFrame(rows).T[COLS]
    table.index.names = ['mode', 'set']
    table['images/s'] = [speed[m] for m, _ in table.index]
    by_aspect = per_image.pivot_table(index=['set', 'aspect'], columns='method', values='iou', aggfunc='mean')[list(modes(a))]
    elapsed = time.time() - t_start
    base, nat = f'batched squash {a.size}', 'native'
    best = max((m for m in modes(a) if m.startswith('batched')), key=lambda m: table.loc[(m, 'all'), 'IoU'])
    r = lambda m, c: round(float(table.loc[(m, 'all'), c]), 4)
    res = dict(batched_iou=r(base, 'IoU'), native_iou=r(nat, 'IoU'), batched_recall=r(base, 'Recall'), native_recall=r(nat, 'Recall'),
               batched_precision=r(base, 'Precision'), native_precision=r(nat, 'Precision'),
               batched_area_reduction=r(base, 'Image Area Reduction'), native_area_reduction=r(nat, 'Image Area Reduction'),
               batched_maxboxacc_v2=r(base, 'MaxBoxAccV2'), native_maxboxacc_v2=r(nat, 'MaxBoxAccV2'),
               batched_images_per_s=round(speed[base], 2), native_images_per_s=round(speed[nat], 2),
               speedup=round(speed[base]/speed[nat], 2), speedup_vs_one_at_a_time=round(speed[base]/speed_one, 2), best_batched=best, best_batched_iou=r(best, 'IoU'),
               best_batched_speedup=round(speed[best]/speed[nat], 2), n_images=len(items), seconds=round(elapsed))
    fmt = lambda df: df.to_markdown(floatfmt='.3f') if _has_tabulate() else '```\n' + df.round(3).to_string() + '\n```'
    md = f"""# Batched (squashed) against native-resolution saliency boxes

The run took {elapsed:.0f} s{' with the cached model' if info.get('cached') else ''}; a shared machine slows every mode.

Sets: `make_shapes(classes=4, background='mixed', size={SIZES})`, `large` objects (area {SETS['large'][0]:.0%}-{SETS['large'][1]:.0%}
of the image) and `logo` objects ({SETS['logo'][0]:.0%}-{SETS['logo'][1]:.0%}); {a.n_train} training and {a.n_valid} validation images a class and set.
Model: `pretrained_learner(dls)` (ImageNet EfficientNet-Lite0) with `item_tfms=Resize({a.size})` (squash), `fine_tune({a.epochs}, {a.lr})`
on the training images of both sets (validation accuracy {info['val_accuracy']}, {info['train_seconds']} s to fine-tune).
Boxes: `box_pass(..., margins=({MARGIN},))`, Grad-CAM of the predicted class, on the {len(items)} validation images;
`native` runs each image at its own size (sides rounded to the stride, {stride}; no cap), `native max {a.max_side}` caps the
longest side; `pad` modes resize with zero padding (aspect kept); `accuracy`: the predicted class is the label.
images/s: the whole `box_pass` (files read, maps, boxes), cache off, {a.bs} images a batch, best of {a.rounds} rounds, the modes
interleaved within each round; `native` one image at a time (`bs=1`, the seed's "unbatched"): {speed_one:.1f} images/s.

## Localization and speed

{fmt(table)}

## IoU by image aspect ratio (the squash distorts the non-square images)

{fmt(by_aspect)}
"""
    with pd.option_context('display.width', 220, 'display.max_columns', 20):
        print(table.round(3).to_string()); print(by_aspect.round(3).to_string())
    rows = table.reset_index().rename(columns=str)
    H.finish('batched', res, md, a, settings={**vars(a), 'sizes': SIZES, 'sets': SETS, 'margin': MARGIN, 'model': info},
             tables=dict(localization_and_speed=json.loads(rows.to_json(orient='records')),
                         iou_by_aspect=json.loads(by_aspect.reset_index().to_json(orient='records'))))

def _has_tabulate():
    try: import tabulate; return True
    except ImportError: return False

def parse(args=None):
    p = H.parser(__doc__, '64 px, 2 training and 1 validation image a class and set, one epoch, one round; results in bench/out/')
    p.add_argument('--size', type=int, default=128, help="the learner's input size (Resize, squash): the batched mode")
    p.add_argument('--epochs', type=int, default=3, help='fine_tune epochs (after one frozen epoch)')
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--n-train', type=int, default=60, help='training images a class and set')
    p.add_argument('--n-valid', type=int, default=30, help='validation (scored) images a class and set')
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--max-side', type=int, default=256, help="the capped native mode's longest side")
    p.add_argument('--rounds', type=int, default=2, help='timed box passes a mode (the best counts)')
    a = p.parse_args(args)
    if a.quick: a.size, a.epochs, a.n_train, a.n_valid, a.rounds, a.max_side = 64, 1, 2, 1, 1, 128
    return a

if __name__ == '__main__':
    a = parse(); H.setup(a); run(a)
