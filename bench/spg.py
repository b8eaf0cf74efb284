"""Benchmark (issue 10): does SPG training (`fastai_attncrop.spg.SPGCallback`) make a from-scratch classifier localize better?

Two trainings per setting that differ only in the callback (same architecture, data, epochs, learning rate, seed):
(a) the synthetic small-object set of bench/refit.py (objects 5-10% of the image, 4 classes x 300 images, 64 px,
    `small_cnn`, `fit_one_cycle(10, 3e-3)`), over `--seeds` seeds, scored on its 200 validation images;
(b) real photographs: Imagenette (../shared/data/imagenette224, 10 classes, 5,000 training images) from scratch at
    `--real-size` px, scored for classification on its 1,000 validation images and for localization on the 250
    box-annotated ImageNet-val photographs of ../shared/data/imagenet10_valbox_dev.
Localization: Grad-CAM of each image's true class (the WSOL convention) on the body's last feature map, the 2.5%
mass-cut box (recall, IoU, image-area reduction against the ground-truth boxes), and MaxBoxAccV2 over all thresholds.
Real-set models are cached in bench/cache/ (git-ignored). Writes results/spg.json and .md with the harness's stamp; the
last line printed is one JSON object.

    PYTHONPATH=. python bench/spg.py [--part synthetic|real|both]
    PYTHONPATH=. python bench/spg.py --quick    # a smoke run: the synthetic part on a few images, one seed (bench/out/spg.*)"""
import argparse, datetime, hashlib, json, platform, sys, tempfile, time, warnings
from functools import partial
from pathlib import Path
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402
import numpy as np, pandas as pd, torch
from PIL import Image
from fastai.vision.all import (ImageDataLoaders, Resize, Flip, Normalize, imagenet_stats, vision_learner, accuracy,
                               set_seed, resnet18, get_image_files, DataBlock, ImageBlock, CategoryBlock, GrandparentSplitter,
                               parent_label)
from fastai_attncrop.data import make_shapes, read_boxes_csv, save_image_atomic, atomic_write
from fastai_attncrop.models import small_cnn
from fastai_attncrop.saliency import saliency_maps
from fastai_attncrop.metrics import boxes_from_maps, evaluate_localization
from fastai_attncrop.spg import SPGCallback

DATA = H.DATA
ARCHS = {'small_cnn': small_cnn, 'resnet18': resnet18}
COLS = ['acc', 'Recall', 'IoU', 'Image Area Reduction', 'MaxBoxAccV2', 'train_s']

def fit(make_dls, arch, epochs, lr, seed, spg):
    "DataLoaders and a from-scratch vision learner made after `set_seed(seed)`, fitted with `fit_one_cycle` with or without SPG; and the seconds."
    set_seed(seed, reproducible=True)   # before the DataLoaders: their shuffling draws from a generator seeded at creation
    learn = vision_learner(make_dls(), ARCHS[arch], pretrained=False, metrics=accuracy)
    t0 = time.time()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr, cbs=[SPGCallback()] if spg else [])
    return learn, time.time() - t0

def localize(learn, root, keys, gt, bs=64):
    "Mass-cut boxes and localization scores of Grad-CAM maps for `keys` [(image relative to `root`, label)]."
    vocab = list(learn.dls.vocab)
    dl = learn.dls.test_dl([root/k[0] for k in keys], bs=bs)
    maps, i = {}, 0
    for (xb,) in dl:
        tg = [vocab.index(k[1]) for k in keys[i:i+len(xb)]]
        sm = saliency_maps(learn, xb, 'gradcam', target=tg)
        for k, m in zip(keys[i:i+len(xb)], sm.maps.cpu()): maps[k] = m
        i += len(xb)
    preds = boxes_from_maps(maps, gt, eps=0.025)
    _, summary = evaluate_localization(preds, gt, maps={'model': maps})
    return summary

def accuracy_on(learn, root, keys, bs=64):
    "Top-1 accuracy of `learn` on the images `keys` [(image relative to `root`, label)]."
    dl = learn.dls.test_dl([root/k[0] for k in keys], bs=bs)
    with learn.no_bar(): p = learn.get_preds(dl=dl)[0].argmax(1)
    return float(np.mean([learn.dls.vocab[int(j)] == k[1] for j, k in zip(p, keys)]))

def row(learn, summary, secs, acc=None):
    m = summary.loc['model']
    if acc is None:
        with learn.no_bar(): acc = float(learn.validate()[1])
    return dict(acc=float(acc), Recall=float(m.Recall), IoU=float(m.IoU), **{'Image Area Reduction': float(m['Image Area Reduction'])},
                MaxBoxAccV2=float(m.MaxBoxAccV2), train_s=float(secs))

# ------------------------------------------------------------------------------------------------ (a) synthetic
def synthetic(a):
    root = make_shapes(Path(tempfile.gettempdir())/f'attncrop_refit_{a.n_train}_{a.size}', n_train=a.n_train, n_valid=a.n_valid,
                       classes=a.classes, size=a.size, obj_frac=tuple(a.obj_frac), seed=0)
    gt = read_boxes_csv(root/'boxes.csv')
    vgt = gt[gt.split == 'valid']
    keys = list(zip(vgt.image, vgt.label))
    rows, centred = [], None
    for seed in range(a.seeds):
        for spg in (False, True):
            make = partial(ImageDataLoaders.from_folder, root, valid='valid', item_tfms=Resize(a.size), bs=a.bs, num_workers=0, seed=seed)
            learn, secs = fit(make, 'small_cnn', a.epochs, a.lr, seed, spg)
            s = localize(learn, root, keys, vgt)
            centred = s.loc[[i for i in s.index if i.startswith('centred')][0]]
            rows.append(dict(seed=seed, method='spg' if spg else 'plain', **row(learn, s, secs)))
            print(f"synthetic seed {seed} {'spg' if spg else 'plain'}: {rows[-1]}", flush=True)
    return pd.DataFrame(rows), centred

# ------------------------------------------------------------------------------------------------ (b) real photographs
def resized_copy(src:Path, dest:Path, size:int) -> Path:
    "Imagenette squashed to `size` px once (JPEG q95) in the cache: decoding 224 px files every epoch costs more than the model."
    if (dest/'.done').exists(): return dest
    for f in get_image_files(src):
        out = dest/f.relative_to(src)
        if not out.exists(): save_image_atomic(Image.open(f).convert('RGB').resize((size, size), Image.BICUBIC), out, quality=95)
    (dest/'.done').touch()
    return dest

def real_dls(root, a):
    "Imagenette train (the first `--real-max-train` images per class, sorted, if given) and valid, flips, ImageNet stats."
    files = []
    for split in ('train', 'valid'):
        for d in sorted((root/split).iterdir()):
            fs = sorted(get_image_files(d))
            files += fs[:a.real_max_train] if split == 'train' and a.real_max_train else fs
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=lambda _: files, splitter=GrandparentSplitter(valid_name='valid'),
                      get_y=parent_label, item_tfms=Resize(a.real_size), batch_tfms=[Flip(), Normalize.from_stats(*imagenet_stats)])
    return block.dataloaders(root, bs=a.real_bs, num_workers=0)

def real(a):
    src, dev = DATA/'imagenette224', DATA/'imagenet10_valbox_dev'
    H.need_data(src, dev)
    cache = Path(a.cache)
    root = resized_copy(src, cache/f'imagenette{a.real_size}', a.real_size)
    labels = pd.read_csv(dev/'labels.csv')
    gt = read_boxes_csv(dev/'boxes.csv', label_col='wnid').merge(labels[['image', 'w', 'h']], on='image')
    gt = gt.rename(columns={'w': 'width', 'h': 'height'})
    keys = list(zip(labels.image, labels.wnid))
    rows, centred = [], None
    for spg in (False, True):
        name = 'spg' if spg else 'plain'
        tag = hashlib.sha1(json.dumps([a.real_arch, a.real_size, a.real_epochs, a.real_lr, a.real_bs, a.real_max_train, name]).encode()).hexdigest()[:10]
        path = cache/f'spg_real_{name}_{tag}.pth'
        meta = cache/f'spg_real_{name}_{tag}.json'
        if path.exists():
            set_seed(0, reproducible=True)
            learn = vision_learner(real_dls(root, a), ARCHS[a.real_arch], pretrained=False, metrics=accuracy)
            learn.model.load_state_dict(torch.load(path)); secs = json.loads(meta.read_text())['train_s']
        else:
            learn, secs = fit(partial(real_dls, root, a), a.real_arch, a.real_epochs, a.real_lr, 0, spg)
            atomic_write(path, lambda tmp: torch.save(learn.model.state_dict(), tmp), suffix='.pth')
            meta.write_text(json.dumps({'train_s': secs}))
        s = localize(learn, dev, keys, gt)
        centred = s.loc[[i for i in s.index if i.startswith('centred')][0]]
        r = dict(method=name, **row(learn, s, secs))
        r['dev_acc'] = accuracy_on(learn, dev, keys)
        rows.append(r)
        print(f"real {name}: {r}", flush=True)
    return pd.DataFrame(rows), centred

def fmt(df):
    cols = [c for c in df.columns]
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|'*len(cols)]
    for r in df.itertuples(index=False):
        lines.append('| ' + ' | '.join(f'{v:.3f}' if isinstance(v, float) and c != 'train_s' else (f'{v:.0f}' if c == 'train_s' else str(v))
                                       for c, v in zip(cols, r)) + ' |')
    return '\n'.join(lines)

def main(a):
    H.setup(a)
    t0, out, res, tables = time.time(), ["# SPG benchmark\n"], {}, {}
    if a.part in ('synthetic', 'both'):
        df, centred = synthetic(a)
        mean = df.drop(columns='seed').groupby('method', sort=False).mean().reset_index()
        out.append(f"## (a) Synthetic small objects\n\nobjects {a.obj_frac} of the area, {a.classes} classes x {a.n_train} training / "
                   f"{a.n_valid} validation images, {a.size} px, `small_cnn`, `fit_one_cycle({a.epochs}, {a.lr})`, bs {a.bs}, "
                   f"seeds 0-{a.seeds-1}; SPGCallback with its defaults. Localization on the validation images (Grad-CAM of the "
                   f"true class, 2.5% mass cut; MaxBoxAccV2 over all thresholds). train_s: seconds of the fit.\n")
        out.append(fmt(df) + '\n\nMean over seeds:\n\n' + fmt(mean) + '\n')
        tables['synthetic'], tables['synthetic_mean'] = df.to_dict('records'), mean.to_dict('records')
        out.append(f"Reference, no model: the best centred box has IoU {centred.IoU:.3f}, recall {centred.Recall:.3f}.\n")
        res['synthetic_maxboxacc_v2_plain'] = float(mean.set_index('method').loc['plain', 'MaxBoxAccV2'])
        res['synthetic_maxboxacc_v2_spg'] = float(mean.set_index('method').loc['spg', 'MaxBoxAccV2'])
    if a.part in ('real', 'both'):
        df, centred = real(a)
        n_tr = f"{10*a.real_max_train:,}" if a.real_max_train else '5,000'
        out.append(f"## (b) Real photographs\n\nImagenette (10 classes, {n_tr} training images) squashed to {a.real_size} px, "
                   f"`{a.real_arch}` from scratch, `fit_one_cycle({a.real_epochs}, {a.real_lr})`, bs {a.real_bs}, flips, seed 0; "
                   f"acc: Imagenette validation (1,000 images); dev_acc and localization: the 250 box-annotated ImageNet-val "
                   f"photographs of imagenet10_valbox_dev (224 px boxes; maps computed at {a.real_size} px).\n")
        out.append(fmt(df) + '\n')
        out.append(f"Reference, no model: the best centred box has IoU {centred.IoU:.3f}, recall {centred.Recall:.3f}.\n")
        tables['real'] = df.to_dict('records')
        d = df.set_index('method')
        res.update(real_maxboxacc_v2_plain=float(d.loc['plain', 'MaxBoxAccV2']), real_maxboxacc_v2_spg=float(d.loc['spg', 'MaxBoxAccV2']),
                   real_acc_plain=float(d.loc['plain', 'acc']), real_acc_spg=float(d.loc['spg', 'acc']))
    text = '\n'.join(out)
    print(text)
    res = {k: round(v, 4) for k, v in res.items()}
    H.finish('spg', res, text, a, settings={k: v for k, v in vars(a).items() if k not in ('argv', 'cache')}, t0=t0, tables=tables)

if __name__ == '__main__':
    import sys
    p = H.parser(__doc__, 'the synthetic part only, 10 + 4 images a class at 32 px, one seed, one epoch; results in bench/out/')
    p.add_argument('--part', default='both', choices=['synthetic', 'real', 'both'])
    p.add_argument('--n-train', type=int, default=300, help='synthetic: training images per class')
    p.add_argument('--n-valid', type=int, default=50, help='synthetic: validation images per class')
    p.add_argument('--classes', type=int, default=4)
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--obj-frac', type=float, nargs=2, default=[0.05, 0.1])
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--real-arch', default='small_cnn', choices=list(ARCHS))
    p.add_argument('--real-size', type=int, default=96)
    p.add_argument('--real-epochs', type=int, default=8)
    p.add_argument('--real-lr', type=float, default=3e-3)
    p.add_argument('--real-bs', type=int, default=64)
    p.add_argument('--real-max-train', type=int, default=0, help='real: training images per class (0: all 500)')
    p.add_argument('--cache', default=str(Path(__file__).parent/'cache'))
    a = p.parse_args()
    if a.out and a.out.endswith('.md'): a.out = str(Path(a.out).parent)   # the old form: the results file itself
    if a.quick: a.part, a.n_train, a.n_valid, a.size, a.seeds, a.epochs = 'synthetic', 10, 4, 32, 1, 1
    main(a)
