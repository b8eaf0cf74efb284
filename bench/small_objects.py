"""Benchmark (not a timed test, issue 29): box rules on small objects: how tight are `box_pass`'s boxes, rule by rule?

Three sets, each with exact boxes; each built once (deterministic, seeded) under the git-ignored `bench/cache/small_objects/`:
* `shapes`: synthetic shapes (`fastai_attncrop.data.make_shapes`, `SHAPE_CLASSES` classes, images of 384-512 px) in four
  object-area bins (`BINS`: 0.5-2%, 2-5%, 5-15%, 15-40% of the image); the validation images of each bin are its set; a
  `pretrained_learner` (EfficientNet-Lite0, ImageNet weights, offline) with `item_tfms=Resize(SHAPE_INPUT)` fine-tuned on the
  training images of all bins (`fine_tune`, weights cached);
* `photos_small`: the 250 ImageNet-val photographs of `../shared/data/imagenet10_valbox_dev/`, each one's true box region (the box
  around its ground-truth boxes, in its original aspect) pasted at 1-16% (log-uniform) of a 448 px scene at a random place on a
  blurred photograph of another class (another dev photograph); the known pasted box is the ground truth; the learner is the
  ImageNet classifier cut to the 10 classes (bench/localization.py `imagenet_head`, no fine-tuning) over these files with
  `item_tfms=Resize(224)`; boxes of the true class (`target='label'`) and of the predicted class;
* `full`: the dev photographs themselves (224 px, as bench/localization.py), the same classifier, the predicted class.

Each row is a rule: a dict of `box_pass` keyword arguments (`RULES`: today's behaviour `TODAY`, each lever of `LEVERS` alone, the
floor with a zoom, the chosen default with one option changed, the chosen default `{}`, i.e. `box_pass`'s own defaults), plus two rows that are not rules: the oracle box (the box around the ground truth) and the best
centred box (one fixed centred size for the whole set). Columns, from the package's metrics (`evaluate_localization`, `box_accuracy`):
recall, precision, IoU, area reduction at the default margin (0.95); the largest area reduction with recall >= 0.90 over the
margins of one `box_pass` call (`MARGINS`; a zoomed rule: up to 0.95, see `rule_margins`) and the margin that gives it; on `full`
MaxBoxAccV2 of the rule's map as its boxes are cut from it (none for a zoomed rule); the classifier's accuracy on each group;
seconds per image and the ratio to today's pass on the same images (one `box_pass` call, cache off; today's: the faster of two).
A rule whose keyword the installed `box_pass` lacks is left out with a note.

Writes results/small_objects.md and .json with the harness's stamp (`--out`; `--quick`, `--limit`: bench/out/); the last printed
line is one JSON object. Without ../shared/data a `--quick` run boxes the shapes set only and says so (the photo sets are skipped).

    PYTHONPATH=. python bench/small_objects.py            # the full run
    PYTHONPATH=. python bench/small_objects.py --quick    # a smoke run: a few images a set, a tiny shapes learner
    PYTHONPATH=. python bench/small_objects.py --sets photos_small full --limit 100   # a seeded subset of each set
    SMALL_OBJECTS_CACHE=DIR ...                           # the sets and the shapes learner from another copy of the cache

From Python (the sets and learners, to experiment with box rules):

    import sys; sys.path.insert(0, 'bench'); from small_objects import load_set, score_rule
    s = load_set('photos_small')          # or 'shapes', 'full'; quick=True for the small versions
    bx = box_pass(s.learn, items=s.items, margins=MARGINS, target='label', cache=False, progress=False, floor=0.8)
    score_rule(bx, s)                     # recall, precision, IoU, area reduction per margin
"""
import argparse, contextlib, io, datetime, hashlib, inspect, json, os, platform, subprocess, sys, time, warnings
from dataclasses import dataclass
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np, pandas as pd, torch
from PIL import Image, ImageFilter
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, ColReader, Resize, Normalize, accuracy, set_seed, get_image_files,
                               parent_label, GrandparentSplitter)
from fastai_attncrop.data import make_shapes, read_boxes_csv, write_csv_atomic, write_text_atomic, save_image_atomic
from fastai_attncrop.models import pretrained_learner
from fastai_attncrop.saliency import saliency_maps, dilated_last_stage, find_target_layer, finer_stage
from fastai_attncrop.boxes import cut_maps
from fastai_attncrop.metrics import evaluate_localization, score_boxes, box_accuracy, centred_box, centre_map
from fastai_attncrop.boxtable import margin_cols, boxes_as_preds
from fastai_attncrop.boxpass import box_pass, load_batches
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402
from localization import imagenet_head, box_set, LITE_STATS, ARCH   # noqa: E402  (the ImageNet classifier cut to the 10 classes)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent/'shared'/'data'
DEV = DATA/'imagenet10_valbox_dev'
CACHE = Path(os.environ.get('SMALL_OBJECTS_CACHE', REPO/'bench'/'cache'/'small_objects'))   # the sets and the shapes learner (env: another copy)

# shapes: object-area bins (share of the image), image sizes, classes, the network input and the fine-tune
BINS = {'0.5-2%': (0.005, 0.02), '2-5%': (0.02, 0.05), '5-15%': (0.05, 0.15), '15-40%': (0.15, 0.4)}
SHAPE_SIZES = [(384, 384), (448, 448), (512, 512), (512, 384), (384, 512)]
SHAPE_CLASSES = 5
SHAPE_INPUT = 224
# n_train / n_valid: images a class and a bin; epochs: fine_tune(epochs, lr) (one frozen epoch first)
# n_monitor: validation images a class and a bin the learner reports its accuracy on during the fine-tune
SHAPES_CFG = dict(n_train=20, n_valid=25, epochs=3, lr=3e-3, bs=16, n_monitor=5)
SHAPES_QUICK = dict(n_train=2, n_valid=2, epochs=1, lr=3e-3, bs=8, n_monitor=1)
# photographs made small: scene side, object area (log-uniform), background blur (Gaussian radius, px)
SCENE, SMALL_FRAC, BLUR = 448, (0.01, 0.16), 6
QUICK_N = 20   # --quick: photographs a set

MARGIN = 0.95   # the default margin
MARGINS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999]
MIN_RECALL = 0.90
TODAY = dict(floor=0, zoom=0, dilate=False, native=False, upsample=1, fuse=False, adapt=0.)   # today's behaviour (before issue 29)
LEVERS = dict(floor=0.8, zoom=1, dilate=True, native=True, upsample=2, fuse=True, adapt=-1.)  # each lever's setting in its own row
# a zoom alone looks again through a window around today's wide first box (padded by zoom_pad per side): mostly the whole
# image; the row with the floor shows the zoom on a tight first box
RULES = {'today': TODAY, **{f'{k}={v}': {**TODAY, k: v} for k, v in LEVERS.items()},
         'floor=0.8, zoom=1': {**TODAY, 'floor': LEVERS['floor'], 'zoom': LEVERS['zoom']},
         'chosen default, upsample=1': {'upsample': 1}, 'chosen default, fuse=True': {'fuse': True},
         'chosen default, adapt=-1.0': {'adapt': -1.}, 'chosen default': {}}
ORACLE, CENTRED = 'oracle box (the true box)', 'best centred box'
QUICK_RULES = ('today', 'chosen default')   # --quick: the two rows the final JSON line reads

# ---------------------------------------------------------------------------------------------------------------- the sets
@dataclass
class BoxSet:
    "One benchmark set: its learner, the items to box (`item`, `split`, `label`), the ground truth (keys relative to `root`)."
    name: str
    learn: object
    items: pd.DataFrame
    gt: pd.DataFrame          # image (relative to root), label, xmin, ymin, xmax, ymax, width, height (+ bin for shapes)
    root: Path
    info: dict

def _key(*args) -> str: return hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:10]

def shapes_data(quick=False) -> Path:
    "The shapes set: one `make_shapes` folder a bin under one root (`bin<i>/train`, `bin<i>/valid`), and `boxes.csv` of all bins."
    c = SHAPES_QUICK if quick else SHAPES_CFG
    root = CACHE/f"shapes_{_key(c['n_train'], c['n_valid'], SHAPE_CLASSES, SHAPE_SIZES, BINS)}"
    if (root/'boxes.csv').exists(): return root
    parts = []
    for i, (name, frac) in enumerate(BINS.items()):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):   # make_shapes' progress bar
            d = make_shapes(root/f'bin{i}', n_train=c['n_train'], n_valid=c['n_valid'], classes=SHAPE_CLASSES, size=SHAPE_SIZES,
                            obj_frac=frac, seed=100 + i)
        b = pd.read_csv(d/'boxes.csv')
        parts.append(b.assign(image=f'bin{i}/' + b.image, bin=name))
    write_csv_atomic(pd.concat(parts, ignore_index=True), root/'boxes.csv')
    return root

def shapes_learner(root, quick=False):
    "`pretrained_learner` over the training images of every bin (validation: `n_monitor` a class and bin), `Resize(SHAPE_INPUT)`, fine-tuned; cached."
    c = SHAPES_QUICK if quick else SHAPES_CFG
    files = sorted(f for f in get_image_files(root) if 'masks' not in f.parts and (f.parent.parent.name == 'train' or
                   (f.parent.parent.name == 'valid' and int(f.stem.split('_')[-1]) < c['n_monitor'])))
    dblock = DataBlock((ImageBlock, CategoryBlock), get_y=parent_label, splitter=GrandparentSplitter(), item_tfms=Resize(SHAPE_INPUT))
    dls = dblock.dataloaders(files, path=root, bs=c['bs'], num_workers=0, seed=0)
    set_seed(0, reproducible=True)
    learn = pretrained_learner(dls, metrics=accuracy)
    pth = root/f"lite0_{_key(c, SHAPE_INPUT)}.pth"
    meta = pth.with_suffix('.json')
    if pth.exists() and meta.exists():
        learn.model.load_state_dict(torch.load(pth, map_location='cpu'))
        return learn, json.loads(meta.read_text())
    t0 = time.time()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(c['epochs'], c['lr'])
    info = dict(arch=ARCH, input=SHAPE_INPUT, recipe=f"fine_tune({c['epochs']}, {c['lr']:g}), bs {c['bs']}", n_train=len(dls.train_ds),
                n_valid=len(dls.valid_ds), val_accuracy=round(float(learn.recorder.values[-1][2]), 4),
                train_seconds=round(time.time() - t0), threads=torch.get_num_threads())
    torch.save(learn.model.state_dict(), pth.with_suffix('.tmp')); pth.with_suffix('.tmp').replace(pth)
    write_text_atomic(json.dumps(info, indent=1), meta)
    return learn, info

def small_photos(boxes_dir=DEV, n=None, size=SCENE, frac=SMALL_FRAC, blur=BLUR, seed=0) -> Path:
    """Scenes of `size` px, each one dev photograph's true box region (around all its boxes, in the original photo's aspect) pasted at
    `frac` (log-uniform) of the area at a random place on another class's dev photograph blurred by `blur`; `boxes.csv` the pasted boxes."""
    boxes_dir = Path(boxes_dir)
    labels, gt = box_set(boxes_dir)
    if n: labels = labels.iloc[np.sort(np.random.default_rng(seed).permutation(len(labels))[:n])]
    dest = CACHE/f"photos_small_{_key(str(boxes_dir.resolve()), list(labels.image), size, frac, blur, seed)}"
    if (dest/'boxes.csv').exists(): return dest
    all_labels = box_set(boxes_dir)[0]
    rows = []
    for r in labels.itertuples():
        rng = np.random.default_rng([seed, int(all_labels.index[all_labels.image == r.image][0])])
        g = gt[gt.image == r.image]
        x0, y0, x1, y1 = g.xmin.min(), g.ymin.min(), g.xmax.max(), g.ymax.max()
        region = Image.open(boxes_dir/r.image).convert('RGB').crop((int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))))
        aspect = (x1 - x0)*r.orig_w/r.w/((y1 - y0)*r.orig_h/r.h)   # width / height in the original photograph's pixels
        area = np.exp(rng.uniform(*np.log(frac)))*size*size
        w = min(size, np.sqrt(area*aspect)); h = min(size, area/w); w = area/h if h == size else w
        w, h = (int(max(4, min(size, round(v)))) for v in (w, h))
        others = all_labels[all_labels.wnid != r.wnid].image.tolist()
        bg_name = others[int(rng.integers(len(others)))]
        scene = Image.open(boxes_dir/bg_name).convert('RGB').resize((size, size), Image.BILINEAR).filter(ImageFilter.GaussianBlur(blur))
        x, y = (int(v) for v in rng.integers(0, [size - w + 1, size - h + 1]))
        scene.paste(region.resize((w, h), Image.LANCZOS), (x, y))
        rel = f"images/{r.wnid}/{Path(r.image).stem}.jpg"
        save_image_atomic(scene, dest/rel, quality=95)
        rows.append(dict(image=rel, label=r.wnid, xmin=x, ymin=y, xmax=x + w, ymax=y + h, width=size, height=size,
                         object_frac=w*h/size**2, source=r.image, background=bg_name))
    write_csv_atomic(pd.DataFrame(rows), dest/'boxes.csv')
    return dest

def imagenet10_learner(root, images, labels, size=224):
    """A Learner over `images` (relative to `root`; every one in both splits) with `item_tfms=Resize(size)`, vocab the 10 wnids of the
    dev set, whose model is the pretrained EfficientNet-Lite0 with the ImageNet classifier cut to the 10 classes (no fine-tuning)."""
    wnids = sorted(pd.read_csv(DEV/'classes.csv').wnid)
    df = pd.DataFrame(dict(image=list(images), label=list(labels)))
    both = lambda o: (list(range(len(o))), list(range(len(o))))
    dblock = DataBlock((ImageBlock, CategoryBlock(vocab=wnids)), get_x=ColReader('image', pref=f'{Path(root)}/'), get_y=ColReader('label'),
                       splitter=both, item_tfms=Resize(size), batch_tfms=Normalize.from_stats(*LITE_STATS))
    dls = dblock.dataloaders(df, path=root, bs=32, num_workers=0)
    learn = pretrained_learner(dls, ARCH)
    imagenet_head(learn, DEV/'classes.csv')
    return learn

def _items(root, gt) -> pd.DataFrame:
    "The `box_pass` items of `gt`'s images: `item` (absolute path), `split`, `label`."
    g = gt.drop_duplicates('image')
    return pd.DataFrame(dict(item=[str(Path(root)/i) for i in g.image], split='valid', label=g.label.values))

def load_set(name, quick=False, limit=None) -> BoxSet:
    "The set `name` ('shapes', 'photos_small', 'full'), built or read from `CACHE`, with its learner; `limit`: a seeded subset (shapes: a bin)."
    if name != 'shapes' and not DEV.exists():
        raise SystemExit(f"{DEV} is not there: the photo sets need ../shared/data/imagenet10_valbox_dev (see ../shared/data/README.md)")
    if name == 'shapes':
        root = shapes_data(quick)
        learn, info = shapes_learner(root, quick)
        gt = read_boxes_csv(root/'boxes.csv')
        gt = gt[gt.split == 'valid'].reset_index(drop=True)
    elif name == 'photos_small':
        root = small_photos(n=QUICK_N if quick else None)
        gt = read_boxes_csv(root/'boxes.csv')
        learn, info = imagenet10_learner(root, gt.image, gt.label), dict(model='ImageNet head', scene=SCENE, frac=SMALL_FRAC, blur=BLUR)
    elif name == 'full':
        root = DEV
        labels, gt = box_set(DEV)
        if quick: gt = gt[gt.image.isin(labels.image.iloc[::len(labels)//QUICK_N][:QUICK_N])].reset_index(drop=True)
        g = gt.drop_duplicates('image')
        learn, info = imagenet10_learner(root, g.image, g.label), dict(model='ImageNet head', size=224)
    else: raise ValueError(f"unknown set {name!r}: 'shapes', 'photos_small' or 'full'")
    if limit:
        g = gt.drop_duplicates('image')
        g = g.groupby('bin', group_keys=False) if name == 'shapes' else [(None, g)]
        keep = [i for _, d in g for i in d.image.iloc[np.sort(np.random.default_rng(0).permutation(len(d))[:limit])]]
        gt = gt[gt.image.isin(keep)].reset_index(drop=True)
    return BoxSet(name, learn, _items(root, gt), gt, Path(root), info)

# ------------------------------------------------------------------------------------------------------------- the scores
def box_kwargs(rule) -> dict | None:
    "`rule` as keyword arguments the installed `box_pass` takes (an option at its 'off' value dropped if unknown), or None if it needs one it lacks."
    known = inspect.signature(box_pass).parameters
    out = {}
    for k, v in rule.items():
        if k in known: out[k] = v
        elif v != TODAY.get(k, object()): return None
    return out

def default_rule() -> dict:
    "The installed `box_pass`'s defaults of the rule options (`TODAY`'s keys) it has."
    return {k: p.default for k, p in inspect.signature(box_pass).parameters.items() if k in TODAY}

def rule_margins(rule) -> list:
    "The margins boxed in one call for `rule`: `MARGINS`, up to `MARGIN` for a zoomed rule (`zoom_boxes` windows each item at the"
    " largest margin's box: with 0.999 in the call the window is the whole image, and every margin's zoomed box depends on it)."
    return [m for m in MARGINS if m <= MARGIN] if {**TODAY, **default_rule(), **rule}['zoom'] else MARGINS

def boxes_at(bx, s:BoxSet, m) -> pd.DataFrame:
    "The boxes of margin `m` of a `box_pass` table as `evaluate_localization` predictions (image keys relative to the set's root)."
    return boxes_as_preds(bx, s.root, m)

def score_rule(bx, s:BoxSet, images=None, margins=MARGINS) -> pd.DataFrame:
    "Recall, precision, IoU, area reduction (means, `evaluate_localization`) of the boxes of each margin, over `images` (default all)."
    preds = pd.concat([boxes_at(bx, s, m).assign(method=m) for m in margins], ignore_index=True)
    if images is not None: preds = preds[preds.image.isin(images)]
    t = evaluate_localization(preds, s.gt, baselines=False)[1]
    return t.rename(columns={'Recall': 'recall', 'Precision': 'precision', 'IoU': 'iou', 'Image Area Reduction': 'area_reduction'}
                    )[['recall', 'precision', 'iou', 'area_reduction', 'BoxAcc', 'Fallback', 'N']].rename_axis('margin')

def table_row(curve) -> dict:
    "A table row from a per-margin score table: the scores at `MARGIN`, the largest area reduction with recall >= `MIN_RECALL` and its margin."
    r = curve.loc[MARGIN]
    ok = curve[curve.recall >= MIN_RECALL]
    best = None if not len(ok) else ok.area_reduction.idxmax()
    return dict(recall=r.recall, precision=r.precision, iou=r.iou, area_reduction=r.area_reduction,
                area_at_recall90=np.nan if best is None else ok.area_reduction[best], margin_at_recall90=best, n=int(r.N))

def baseline_rows(s:BoxSet, images) -> dict:
    "The oracle row (the box around each image's true boxes) and the best centred box: its size by mean IoU (the package's"
    " `best_centred_size`, via `evaluate_localization`) for the margin columns, by area at recall >= 0.90 for that column."
    gt = s.gt[s.gt.image.isin(images)]
    enc = gt.groupby('image', sort=False).agg(xmin=('xmin', 'min'), ymin=('ymin', 'min'), xmax=('xmax', 'max'), ymax=('ymax', 'max')).reset_index()
    summ = evaluate_localization(enc.assign(method=ORACLE), gt)[1]
    cname = next(i for i in summ.index if i.startswith('centred box'))
    rows = {}
    for name, key in ((ORACLE, ORACLE), (CENTRED, cname)):
        r = summ.loc[key]
        rows[name] = dict(recall=r.Recall, precision=r.Precision, iou=r.IoU, area_reduction=r['Image Area Reduction'], n=int(r.N))
    rows[ORACLE].update(area_at_recall90=rows[ORACLE]['area_reduction'], margin_at_recall90=None)
    wh = gt.drop_duplicates('image').set_index('image')[['width', 'height']]
    sweep = []
    for rel in np.round(np.arange(0.05, 1.0001, 0.02), 2):
        b = pd.DataFrame([dict(image=i, **dict(zip(['xmin', 'ymin', 'xmax', 'ymax'], centred_box((w, h), rel)))) for i, (w, h) in wh.iterrows()])
        d = score_boxes(b, gt)
        sweep.append((rel, d.recall.mean(), d.area_reduction.mean()))
    ok = [t for t in sweep if t[1] >= MIN_RECALL]
    best = max(ok, key=lambda t: t[2]) if ok else None
    rows[CENTRED].update(area_at_recall90=np.nan if best is None else best[2], margin_at_recall90=None,
                         note=f"{cname[len('centred box '):]} for the margin columns; sides {best[0]:.0%} for recall >= 0.90" if best else cname)
    return rows

def rule_maps(s:BoxSet, rule, target=None, bs=32) -> dict | None:
    """{image: map} of `rule` on the set's images, for MaxBoxAccV2: Grad-CAM of the learner's own input (`dilate`: the last stage
    dilated, `dilated_last_stage`; `fuse`: with the finer stage's, `finer_stage`), upsampled and less its `floor` quantile (`cut_maps`), as `box_pass` cuts it; None for a rule with `zoom` (the
    zoomed look's map covers only the window). Only for sets whose images are the learner's input size (the maps are then on the
    images' pixels, and `native` changes nothing): `full`."""
    rule = {**TODAY, **default_rule(), **rule}
    if rule['zoom']: return None
    root = s.root.resolve()
    vocab, keys = list(s.learn.dls.vocab), [Path(p).resolve().relative_to(root).as_posix() for p in s.items.item]
    labels = s.items.label.tolist()
    maps = {}
    for pos, xb in load_batches(s.learn, s.items.item.tolist(), bs=bs):
        t = None if target is None else [vocab.index(labels[p]) for p in pos]
        with dilated_last_stage(s.learn.model, xb) if rule['dilate'] else contextlib.nullcontext():
            lay = find_target_layer(s.learn.model, xb)
            lays = [lay, finer_stage(s.learn.model, xb, layer=lay)] if rule.get('fuse') else None
            sm = saliency_maps(s.learn, xb, 'gradcam', target=t, layers=lays)
        m = cut_maps(sm.maps, rule['floor'], rule.get('upsample', 1)).cpu()
        for r in range(len(sm)): maps[keys[pos[int(sm.img_idx[r])]]] = m[r]
    return maps

def run_set(s:BoxSet, target, groups=None, maxboxacc=False, bs=32, log=print, rules=None) -> dict:
    """Every rule of `RULES` on set `s` (one `box_pass` each, all `MARGINS`, cache off, timed) and the two baselines: {group: table}
    (`groups`: {name: images}, default the whole set) and the rules' timings."""
    groups = groups or {'all': list(s.gt.image.unique())}
    box_pass(s.learn, items=s.items.head(bs), margins=(MARGIN,), target=target, cache=False, progress=False, bs=bs)   # warm-up
    tables, times, notes, v2, acc, v2_memo = {g: {} for g in groups}, {}, [], {}, {}, {}
    for name, rule in RULES.items():
        if rules is not None and name not in rules: continue
        kw = box_kwargs(rule)
        if kw is None:
            notes.append(f"`{name}` left out: the installed `box_pass` has no {[k for k in rule if k not in inspect.signature(box_pass).parameters]}")
            continue
        ms = rule_margins(rule)
        t0 = time.time()
        bx = box_pass(s.learn, items=s.items, margins=ms, target=target, cache=False, progress=False, bs=bs, **kw)
        times[name] = (time.time() - t0)/len(s.items)
        for g, images in groups.items(): tables[g][name] = table_row(score_rule(bx, s, images, ms))
        if target is None and not acc:   # the classifier's accuracy on each group (the explained class is the prediction)
            key = boxes_at(bx, s, MARGIN).image.to_numpy()
            acc.update({g: float(bx['correct'][np.isin(key, images)].mean()) for g, images in groups.items()})
        if maxboxacc:   # rules with the same map (on `full`: the same `dilate`, `floor`, `upsample`, `fuse`; none with `zoom`) share one computation
            eff = {**TODAY, **default_rule(), **rule}
            mk = None if eff['zoom'] else (bool(eff['dilate']), float(eff['floor']), int(eff['upsample']), bool(eff['fuse']))
            if mk is None: v2[name] = np.nan
            else:
                if mk not in v2_memo: v2_memo[mk] = box_accuracy(rule_maps(s, rule, target, bs), s.gt)['MaxBoxAccV2']
                v2[name] = v2_memo[mk]
        log(f"  {s.name} {target or 'pred'} {name}: {times[name]*1000:.0f} ms/image; " + '; '.join(
            f"{g}: recall {t[name]['recall']:.3f} area {t[name]['area_reduction']:.3f} iou {t[name]['iou']:.3f} "
            f"area@r90 {t[name]['area_at_recall90']:.3f}" for g, t in tables.items()))
    if 'today' in times:   # today's pass once more (the first timed pass pays for warming up): the faster of the two
        t0 = time.time()
        box_pass(s.learn, items=s.items, margins=MARGINS, target=target, cache=False, progress=False, bs=bs, **box_kwargs(TODAY))
        times['today'] = min(times['today'], (time.time() - t0)/len(s.items))
    for g, images in groups.items(): tables[g].update(baseline_rows(s, images))
    if maxboxacc: v2[CENTRED] = box_accuracy({k: centre_map() for k in s.gt.image.unique()}, s.gt)['MaxBoxAccV2']
    out = {}
    for g, t in tables.items():
        df = pd.DataFrame(t).T
        df['s_per_image'] = pd.Series(times)
        df['cost_vs_today'] = df.s_per_image/times['today'] if 'today' in times else np.nan
        if maxboxacc: df['MaxBoxAccV2'] = pd.Series(v2)
        out[g] = df
    return dict(tables=out, times=times, notes=notes, accuracy=acc)

# ------------------------------------------------------------------------------------------------------------------ report
def md_table(df, fmt='.3f'):
    try: return df.to_markdown(floatfmt=fmt)
    except ImportError: return '```\n' + df.to_string(float_format=lambda v: format(v, fmt)) + '\n```'

def _f(v): return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else round(float(v), 4)

def main(a):
    H.setup(a)
    t_start, load0 = time.time(), os.getloadavg()[0]
    out = Path(a.out) if a.out else (H.OUT if a.quick or a.limit else H.RESULTS)
    res, sections, infos, skipped = {}, [], {}, []
    rules = QUICK_RULES if a.quick else None
    for name in a.sets:
        if name != 'shapes' and a.quick and not DEV.exists():
            skipped.append(f"`{name}` skipped: {DEV} is not there (the project's benchmark photographs)")
            print(f"{name}: skipped: {DEV} is not there", flush=True); continue
        t0 = time.time()
        s = load_set(name, a.quick, a.limit)
        infos[name] = dict(s.info, n_images=len(s.items), build_and_load_seconds=round(time.time() - t0))
        print(f"{name}: {len(s.items)} images ({time.time() - t0:.0f}s to build/load)", flush=True)
        if name == 'shapes':
            bins = s.gt.drop_duplicates('image')
            groups = {**{f'objects {b} of the image': list(bins.image[bins.bin == b]) for b in BINS}, 'all bins': list(bins.image)}
            res['shapes'] = run_set(s, None, groups, bs=a.bs, rules=rules)
        elif name == 'photos_small':
            for tgt in ('label', None): res[f"photos_small_{tgt or 'pred'}"] = run_set(s, tgt, bs=a.bs, rules=rules)
        else: res['full'] = run_set(s, None, maxboxacc=True, bs=a.bs, rules=rules)
    def get(set_, group, row, col):
        try: return _f(res[set_]['tables'][group].loc[row, col])
        except KeyError: return None
    n_of = {k: infos[k.split('_pred')[0].split('_label')[0]]['n_images'] for k in res}
    cost = {k: _f(v['times']['chosen default']/v['times']['today']) for k, v in res.items() if {'today', 'chosen default'} <= set(v['times'])}
    tot_today = sum(v['times']['today']*n_of[k] for k, v in res.items() if k in cost)
    tot_def = sum(v['times']['chosen default']*n_of[k] for k, v in res.items() if k in cost)
    j = dict(small_area_at_recall90=get('photos_small_label', 'all', 'chosen default', 'area_at_recall90'),
             small_margin_at_recall90=get('photos_small_label', 'all', 'chosen default', 'margin_at_recall90'),
             small_iou=get('photos_small_label', 'all', 'chosen default', 'iou'),
             small_recall=get('photos_small_label', 'all', 'chosen default', 'recall'),
             small_area_reduction=get('photos_small_label', 'all', 'chosen default', 'area_reduction'),
             small_pred_recall=get('photos_small_pred', 'all', 'chosen default', 'recall'),
             small_pred_area_reduction=get('photos_small_pred', 'all', 'chosen default', 'area_reduction'),
             small_pred_area_at_recall90=get('photos_small_pred', 'all', 'chosen default', 'area_at_recall90'),
             small_today_area_at_recall90=get('photos_small_label', 'all', 'today', 'area_at_recall90'),
             small_oracle_area_reduction=get('photos_small_label', 'all', ORACLE, 'area_reduction'),
             shapes_area_at_recall90=get('shapes', 'all bins', 'chosen default', 'area_at_recall90'),
             shapes_recall=get('shapes', 'all bins', 'chosen default', 'recall'),
             shapes_area_reduction=get('shapes', 'all bins', 'chosen default', 'area_reduction'),
             shapes_iou=get('shapes', 'all bins', 'chosen default', 'iou'),
             shapes_bins_area_at_recall90={b: get('shapes', f'objects {b} of the image', 'chosen default', 'area_at_recall90') for b in BINS},
             full_maxboxacc_v2=get('full', 'all', 'chosen default', 'MaxBoxAccV2'),
             full_today_maxboxacc_v2=get('full', 'all', 'today', 'MaxBoxAccV2'),
             full_centre_maxboxacc_v2=get('full', 'all', CENTRED, 'MaxBoxAccV2'),
             full_recall=get('full', 'all', 'chosen default', 'recall'), full_area_reduction=get('full', 'all', 'chosen default', 'area_reduction'),
             cost_vs_single_pass=_f(tot_def/tot_today) if tot_today else None, cost_by_set=cost,
             chosen_default=default_rule(),
             quick=bool(a.quick), limit=a.limit, seconds=round(time.time() - t_start))
    titles = {'shapes': 'Synthetic shapes (fine-tuned Lite0, predicted class)', 'photos_small_label': 'Photographs made small, true class',
              'photos_small_pred': 'Photographs made small, predicted class', 'full': 'Full-size dev photographs (224 px), predicted class'}
    for k, v in res.items():
        sections.append(f"## {titles[k]}\n")
        for g, df in v['tables'].items():
            if len(v['tables']) > 1 or g in v['accuracy']:
                sections.append(f"### {g}: {int(df.n.iloc[0])} images" + (f", classifier accuracy {v['accuracy'][g]:.3f}" if g in v['accuracy'] else '') + "\n")
            sections.append(md_table(df.drop(columns=[c for c in ('note',) if c in df]).astype({c: float for c in df.columns if c not in ('note', 'margin_at_recall90')})) + '\n')
            if 'note' in df and df.note.notna().any(): sections.append(f"Best centred box: {df.note.dropna().iloc[0]}.\n")
        sections += [f"* {n}\n" for n in v['notes']]
    rules = '\n'.join(f"* `{n}`: `box_pass(learn, items, margins=MARGINS, target=..., cache=False, **{r})`" for n, r in RULES.items())
    md = f"""# Box rules on small objects (issue 29)

Load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {time.time() - t_start:.0f} s.{''.join(chr(10) + '* ' + x for x in skipped)}

Sets (built once under the git-ignored bench/cache/small_objects/; see the script's docstring):
* shapes: `make_shapes`, {SHAPE_CLASSES} classes, images {sorted(set(SHAPE_SIZES))} px, one object in each bin of {BINS} (share of the image
  area, log-uniform); {infos.get('shapes', {}).get('n_images', '-')} validation images (all bins); the learner: {json.dumps(infos.get('shapes'))}.
* photos made small: each dev photograph's true box region pasted at {SMALL_FRAC[0]:.0%}-{SMALL_FRAC[1]:.0%} (log-uniform) of a {SCENE} px
  scene on another class's dev photograph blurred (Gaussian radius {BLUR}); the ImageNet classifier cut to the 10 classes, `Resize(224)`.
* full: the dev photographs (224 px), the same classifier.

Rows (`box_kwargs` drops an option at today's value that the installed `box_pass` does not know; a lever it does not know is left out):
{rules}
* `{ORACLE}`: the box around the image's true boxes; `{CENTRED}`: one centred box size for the set (see below each table).

Columns: recall, precision, IoU, area reduction of the margin {MARGIN} boxes (`evaluate_localization`); `area_at_recall90`: the largest
area reduction whose recall is >= {MIN_RECALL} over the margins {MARGINS} (one `box_pass` call), `margin_at_recall90` the margin
(a zoomed rule: the margins up to {MARGIN} only, since `zoom_boxes` windows each item at the call's largest margin's box);
`s_per_image`: the whole `box_pass` call (cache off) over the set, `cost_vs_today` against the `today` row on the same images;
MaxBoxAccV2 (`box_accuracy`, full set only): the rule's map as its boxes are cut from it (Grad-CAM, dilated or not, fused or not, less its floor
quantile, upsampled: `cut_maps`; `adapt` moves the cut, not the map), `nan` for a zoomed rule (its second map covers only the window);
the best centred box's is the centre map's (every centred size).

{''.join(s + chr(10) for s in sections)}
"""
    with pd.option_context('display.width', 250, 'display.max_columns', 20):
        for k, v in res.items():
            for g, df in v['tables'].items(): print(f"\n{k} / {g}\n" + df.round(3).to_string())
    tables = {k: {g: json.loads(df.to_json(orient='index')) for g, df in v['tables'].items()} for k, v in res.items()}
    H.write_results('small_objects', j, md, out, settings=dict(sets=a.sets, quick=a.quick, limit=a.limit, bs=a.bs, rules=RULES, margins=MARGINS,
                    bins=BINS, shapes=SHAPES_QUICK if a.quick else SHAPES_CFG, scene=SCENE, small_frac=SMALL_FRAC, blur=BLUR, skipped=skipped),
                    tables=tables, infos=infos, seconds=time.time() - t_start)
    print(json.dumps(j))

def parse(args=None):
    p = H.parser(__doc__, f'{QUICK_N} photographs a set, a tiny shapes set and learner, the rows {QUICK_RULES} only; results in bench/out/')
    p.add_argument('--sets', nargs='+', default=['shapes', 'photos_small', 'full'], choices=['shapes', 'photos_small', 'full'])
    p.add_argument('--limit', type=int, default=None, help='a seeded subset of this many images a set (shapes: a bin); results in bench/out/')
    p.add_argument('--bs', type=int, default=32)
    return p.parse_args(args)

if __name__ == '__main__':
    main(parse())
