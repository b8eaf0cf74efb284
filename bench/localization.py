"""Benchmark (not a timed test): weakly-supervised localization on real photographs, in the seed paper's layout.

Two classifiers trained from scratch with fastai (resnet18, 128 px, `pretrained=False`):
* full: `--weights` (../shared/data/weights/resnet18_imagenette128.pth, trained here from scratch on 9,103 Imagenette
  images) when present, as the cached full model; otherwise (or with `--train-full`) the same recipe is trained on
  all training images of `--train-dir` and cached in git-ignored `bench/cache/localization/`;
* small: 100 images per class (the seed's "small model"), trained here and cached the same way.
Then, on the box set (`--boxes-dir`: images/, labels.csv, boxes.csv, classes.csv), computes Grad-CAM, Grad-CAM++ and
DDT maps (DDT fitted on 150 training images a class) for the predicted and for the ground-truth class, cuts boxes with `mass_box` at eps = 2.5% (and a sweep of eps),
and scores them with `evaluate_localization`: recall, precision, IoU, mAP, area reduction, BoxAcc@0.5, MaxBoxAccV2,
next to the baselines (whole image, best centred box, centre map) and pytorch-grad-cam's Grad-CAM map through the
same box rule. Writes bench/results/localization.md and localization_examples.png; the last printed line is one JSON
object for Grad-CAM on the full model at eps = 2.5% (predicted class).

    python bench/localization.py                       # defaults point at ../shared/data/
    python bench/localization.py --boxes-dir DIR --train-dir DIR
"""
import argparse, copy, json, platform, time, warnings, datetime
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np, pandas as pd, torch
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, parent_label, Resize, aug_transforms, Normalize, imagenet_stats, vision_learner,
                               create_vision_model, accuracy, set_seed, get_image_files, resnet18, GrandparentSplitter)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent/'shared'/'data'
CACHE = REPO/'bench'/'cache'/'localization'

ARCHS = {'resnet18': resnet18}

def _subset(files, per_class, seed=0):
    "The first `per_class` files of each class folder after a seeded shuffle."
    rng, by = np.random.default_rng(seed), {}
    for f in sorted(files): by.setdefault(f.parent.name, []).append(f)
    return [f for k in sorted(by) for f in [by[k][i] for i in sorted(rng.permutation(len(by[k]))[:per_class])]]

def train_dls(train_dir, size, bs, per_class=None, seed=0):
    train_dir = Path(train_dir)
    files = get_image_files(train_dir, folders=['train', 'valid'])
    if not files: raise FileNotFoundError(f"no images under {train_dir}/train and {train_dir}/valid")
    if per_class: files = [f for f in files if f.parent.parent.name == 'valid'] + _subset([f for f in files if f.parent.parent.name == 'train'], per_class, seed)
    dblock = DataBlock((ImageBlock, CategoryBlock), get_y=parent_label, splitter=GrandparentSplitter(),
                       item_tfms=Resize(size), batch_tfms=[*aug_transforms(size=size, min_scale=0.35), Normalize.from_stats(*imagenet_stats)])
    return dblock.dataloaders(files, path=train_dir, bs=bs, num_workers=0, seed=seed)

def get_model(name, train_dir, arch, size, epochs, lr, bs, per_class=None, seed=0):
    "A cached from-scratch learner: trains it (and saves weights + history) unless `CACHE/name.pth` exists."
    dls = train_dls(train_dir, size, bs, per_class, seed)
    set_seed(seed, reproducible=True)
    learn = vision_learner(dls, ARCHS[arch], pretrained=False, metrics=accuracy)
    pth, meta = CACHE/f'{name}.pth', CACHE/f'{name}.json'
    if pth.exists():
        learn.model.load_state_dict(torch.load(pth, map_location='cpu'))
        return learn, json.loads(meta.read_text())
    t0 = time.time()
    learn.fit_one_cycle(epochs, lr)
    info = dict(name=name, arch=arch, size=size, epochs=epochs, lr=lr, bs=bs, n_train=len(dls.train_ds), n_valid=len(dls.valid_ds),
                per_class=per_class, seed=seed, train_seconds=round(time.time() - t0), vocab=list(dls.vocab),
                val_accuracy=float(learn.validate()[1]), torch=torch.__version__, threads=torch.get_num_threads())
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = pth.with_suffix('.tmp'); torch.save(learn.model.state_dict(), tmp); tmp.replace(pth)
    tmp = meta.with_suffix('.tmp'); tmp.write_text(json.dumps(info, indent=1)); tmp.replace(meta)
    return learn, info

MODELS = {  # name: (arch, train size, epochs, lr, images per class or None for all)
    'full': ('resnet18', 128, 10, 4e-3, None),   # the recipe of ../shared/data/weights/resnet18_imagenette128.pth
    'small': ('resnet18', 128, 15, 4e-3, 100),
}


from PIL import Image
from fastai_attncrop.data import read_boxes_csv, write_text_atomic
from fastai_attncrop.saliency import saliency_maps, upsample_maps, DDT, dilate_last_stage
from fastai_attncrop.metrics import boxes_from_maps, evaluate_localization, box_accuracy, eps_curve

def box_set(boxes_dir):
    "Ground truth of a box set (images/, labels.csv, boxes.csv): (labels, gt with width/height columns)."
    d = Path(boxes_dir)
    for f in ('labels.csv', 'boxes.csv'):
        if not (d/f).exists(): raise FileNotFoundError(f"{d/f} is missing: `--boxes-dir` needs images/, labels.csv, boxes.csv")
    labels = pd.read_csv(d/'labels.csv')
    gt = read_boxes_csv(d/'boxes.csv', label_col='wnid')
    wh = labels.set_index('image')
    gt['width'], gt['height'] = gt.image.map(wh.w).astype(float), gt.image.map(wh.h).astype(float)
    return labels, gt

def input_batch(ims):
    "RGB PIL images of one size as an input batch, normalized like training (imagenet_stats)."
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in imagenet_stats)
    return (torch.tensor(np.stack([np.asarray(i) for i in ims])).permute(0, 3, 1, 2).float()/255 - mean)/std

def load_batches(boxes_dir, images, size, bs=50):
    "Squashed `size` x `size` input batches of `images`, normalized like training (imagenet_stats)."
    for i in range(0, len(images), bs):
        yield images[i:i+bs], input_batch([Image.open(Path(boxes_dir)/f).convert('RGB').resize((size, size), Image.BILINEAR) for f in images[i:i+bs]])

def model_maps(learn, boxes_dir, images, size, method, target=None, layers=None, bs=50, flip=False):
    "{image: map} and {image: (index of the explained class, its probability)} of `method` over `images` (mirrored: `flip`)."
    vocab = list(learn.dls.vocab); maps, info = {}, {}
    tgt_of = None if target is None else dict(zip(images, target))
    for names, xb in load_batches(boxes_dir, images, size, bs):
        t = None if tgt_of is None else [vocab.index(tgt_of[n]) for n in names]
        sm = saliency_maps(learn, xb.flip(-1) if flip else xb, method, target=t, layers=layers)   # target None: the predicted class
        for r in range(len(sm)):
            n = names[int(sm.img_idx[r])]
            maps[n], info[n] = (sm.maps[r].flip(-1) if flip else sm.maps[r]).cpu(), (int(sm.target[r]), float(sm.prob[r]))
    return maps, info

def pgc_maps(learn, boxes_dir, images, size, bs=50):
    "pytorch-grad-cam's Grad-CAM maps (predicted class, body output) for the same inputs."
    from pytorch_grad_cam import GradCAM
    maps = {}
    with GradCAM(model=learn.model.eval(), target_layers=[learn.model[0]]) as cam:
        for names, xb in load_batches(boxes_dir, images, size, bs):
            for n, m in zip(names, cam(input_tensor=xb, targets=None)): maps[n] = torch.as_tensor(m)
    return maps

def centre_maps(images, n=224):
    "The centre baseline as a map: its level sets are the centred boxes of every size (image aspect)."
    u = (torch.arange(n) + .5)/n
    m = 1 - 2*torch.maximum((u[None] - .5).abs(), (u[:, None] - .5).abs())
    return {i: m for i in images}


DDT_PER_CLASS = 150
def ddt_fit(learn, train_dir, size, per_class=True, layers=None, n=DDT_PER_CLASS, bs=50, seed=0):
    "`DDT` of `layers` (one direction per class, or one for all) fitted on `n` training images a class of `train_dir`/train, squashed to `size` like the box set."
    tr = Path(train_dir)/'train'
    files = [f.relative_to(tr).as_posix() for f in _subset(get_image_files(tr), n, seed)]
    vocab = list(learn.dls.vocab)
    y = torch.tensor([vocab.index(f.split('/')[0]) for f in files])
    batches = ((xb, y[i*bs:(i + 1)*bs]) for i, (_, xb) in enumerate(load_batches(tr, files, size, bs)))
    return DDT(layers, per_class).fit(learn, batches)

def unit_map(m, n=224):
    "A map upsampled to `n` x `n` and min-max normalized to [0, 1] (`normalize_maps` only divides by the maximum)."
    m = upsample_maps(m[None].float(), (n, n))[0]; m = m - m.min()
    return m/(m.max() + 1e-12)

def times_centre(maps):
    "Each map (`unit_map`) times the centre map: a prior that objects sit centred."
    c = centre_maps(['x'])['x']
    return {k: unit_map(v, len(c))*c for k, v in maps.items()}

EPS = 0.025
METHODS = {'Grad-CAM': 'gradcam', 'Grad-CAM++': 'gradcampp', 'DDT': 'ddt'}   # ddt: fitted per model (`ddt_fit`)
DDT_SIZE = 160   # the dilated DDT row's input size (tuned on the dev set, bench/localization_tries.py ddt)
ORACLE = 'ground-truth enclosing box (oracle)'
COLS = ['Recall', 'Precision', 'IoU', 'mAP', 'Image Area Reduction', 'BoxAcc', 'MaxBoxAccV2', 'Fallback', 'N']

def shared_learner(train_dir, weights):
    "The classifier in ../shared/data/weights (resnet18, fastai head, trained from scratch at 128 px), or None."
    w = Path(weights)
    if not w.exists(): return None, None
    info = json.loads(w.with_suffix('.json').read_text())
    dls = train_dls(train_dir, info['size'], 64, per_class=10)   # only for the vocab and the learner's plumbing
    if list(dls.vocab) != info['vocab']: raise ValueError(f"{w}: vocab {info['vocab']} differs from {train_dir}'s classes")
    learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
    learn.model.load_state_dict(torch.load(w, map_location='cpu'))
    return learn, dict(name='full', source=str(w), arch='resnet18', size=info['size'], epochs=info['epochs'], n_train=info['n_train'],
                       val_accuracy=float(info['history'][-1]['log'][3]), train_seconds=None)

def evaluate(models, a, labels, gt):
    "Boxes and maps of every row: {row name: maps}, a DataFrame of boxes, box-set accuracy per model."
    images, wnids = list(labels.image), list(labels.wnid)
    maps, preds, acc = {}, [], {}
    def add(name, m, info=None):
        maps[name] = m
        preds.append(boxes_from_maps(m, gt, EPS, scores={k: v[1] for k, v in info.items()} if info else None).assign(method=name))
    for mname, learn in models.items():
        vocab = list(learn.dls.vocab)
        for label, meth in METHODS.items():
            if meth == 'ddt': meth = ddt_fit(learn, a.train_dir, a.eval_size)
            for tname, target in [('pred', None), ('GT class', wnids)]:
                t0 = time.time()
                m, info = model_maps(learn, a.boxes_dir, images, a.eval_size, meth, target)
                add(f'{mname} · {label} · {tname}', m, info)
                print(f"  {mname} {label} {tname}: {time.time()-t0:.0f}s", flush=True)
                if tname == 'pred' and label == 'Grad-CAM': acc[mname] = {i: vocab[info[i][0]] for i in images}  # the predicted class
    full = models['full']
    for name, kw in [('layer3', dict(layers='0.6')), ('layer3+layer4 fused', dict(layers=['0.6', '0.7']))]:
        m, info = model_maps(full, a.boxes_dir, images, a.eval_size, 'gradcam', None, **kw)
        add(f'full · Grad-CAM · pred · {name}', m, info)
    m, info = model_maps(full, a.boxes_dir, images, full_size(models), 'gradcam')
    add(f'full · Grad-CAM · pred · {full_size(models)} px input', m, info)
    dil = copy.deepcopy(full); dilate_last_stage(dil.model)   # layer4 at stride 1, dilated 2x (same weights)
    m, info = model_maps(dil, a.boxes_dir, images, DDT_SIZE, ddt_fit(dil, a.train_dir, DDT_SIZE))
    add(f'full · DDT · pred · {DDT_SIZE} px, dilated layer4', m, info)
    add(f'full · DDT × centre map · pred · {DDT_SIZE} px, dilated', times_centre(m), info)
    try: add('full · pytorch-grad-cam Grad-CAM · pred', pgc_maps(full, a.boxes_dir, images, a.eval_size))
    except ImportError: print("pytorch-grad-cam is not installed: its row is left out")
    enc = gt.groupby('image', sort=False).agg(xmin=('xmin', 'min'), ymin=('ymin', 'min'), xmax=('xmax', 'max'), ymax=('ymax', 'max'))
    preds.append(enc.reset_index().assign(fallback=False, method=ORACLE))   # the best a single box can do
    return maps, pd.concat(preds, ignore_index=True), acc

def full_size(models): return MODELS['full'][1]   # the full model's training size

def per_class_table(per_image, row, labels, pred_of):
    "Box-set accuracy against localization, per class, for one row of the table."
    d = per_image[per_image.method == row].merge(labels[['image', 'wnid', 'class_name']], on='image')
    d['correct_class'] = [pred_of[i] == w for i, w in zip(d.image, d.wnid)]
    t = d.groupby('class_name').agg(accuracy=('correct_class', 'mean'), recall=('recall', 'mean'), iou=('iou', 'mean'),
                                    boxacc50=('correct', 'mean'), area_reduction=('area_reduction', 'mean'), n=('image', 'size'))
    by = d.groupby('correct_class').agg(recall=('recall', 'mean'), iou=('iou', 'mean'), boxacc50=('correct', 'mean'), n=('image', 'size'))
    by.index = ['misclassified' if not c else 'classified right' for c in by.index]
    return t.sort_values('iou'), by

def figure(a, maps, preds, gt, labels, curves, fname, n=12):
    "Photographs with ground truth (green) and the full model's Grad-CAM box (red) over its map; recall vs area curves."
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    import torch.nn.functional as F
    row = 'full · Grad-CAM · pred'
    rng = np.random.default_rng(0)
    images = [labels.image.iloc[i] for i in sorted(rng.choice(len(labels), n, replace=False))]
    fig = plt.figure(figsize=(16, 10.5))
    p = preds[preds.method == row].set_index('image')
    for k, im in enumerate(images):
        ax = fig.add_subplot(3, 6, k + 1 + 2*(k//4))   # 4 photographs a row, the curve on the right
        img = np.asarray(Image.open(Path(a.boxes_dir)/im).convert('RGB'))
        H, W = img.shape[:2]
        m = F.interpolate(maps[row][im][None, None].float(), size=(H, W), mode='bilinear', align_corners=False)[0, 0]
        m = (m - m.min())/(m.max() - m.min() + 1e-12)
        ax.imshow(img); ax.imshow(m.numpy(), cmap='jet', alpha=0.35)
        for r in gt[gt.image == im].itertuples():
            ax.add_patch(plt.Rectangle((r.xmin-.5, r.ymin-.5), r.xmax-r.xmin, r.ymax-r.ymin, fill=False, ec='lime', lw=2))
        b = p.loc[im]
        ax.add_patch(plt.Rectangle((b.xmin-.5, b.ymin-.5), b.xmax-b.xmin, b.ymax-b.ymin, fill=False, ec='red', lw=2))
        ax.set_title(labels.set_index('image').class_name[im], fontsize=9); ax.axis('off')
    ax = fig.add_axes([0.70, 0.08, 0.28, 0.84])
    for name, c in curves.items():
        ax.plot(c.area_reduction, c.recall, 'o-', ms=3, label=name)
    for r in curves['full · Grad-CAM · pred'].itertuples():
        ax.annotate(f'{r.eps:g}', (r.area_reduction, r.recall), fontsize=7, xytext=(3, 3), textcoords='offset points')
    ax.axhline(0.9, color='grey', lw=.5, ls='--'); ax.axvline(0.5, color='grey', lw=.5, ls='--')
    ax.set_xlabel('image area reduction'); ax.set_ylabel('recall (share of the object inside the box)')
    ax.set_title('mass cut over eps (labels: eps of the full model, Grad-CAM)'); ax.legend(fontsize=8)
    fig.suptitle('ImageNet-val photographs: ground truth (green), Grad-CAM mass-cut box at eps = 2.5% (red), full model', y=0.99)
    fig.savefig(fname, dpi=80, bbox_inches='tight'); plt.close(fig)

def md_table(df, fmt='.3f'):
    try: return df.to_markdown(floatfmt=fmt)
    except ImportError: return '```\n' + df.to_string(float_format=lambda v: format(v, fmt)) + '\n```'

def parse():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--train-dir', default=str(DATA/'imagenette224'), help='imagenette-style folder: train/<class>/, valid/<class>/')
    p.add_argument('--boxes-dir', default=str(DATA/'imagenet10_valbox_dev'), help='images/, labels.csv, boxes.csv, classes.csv')
    p.add_argument('--weights', default=str(DATA/'weights'/'resnet18_imagenette128.pth'),
                   help="the full model's weights when present (resnet18, fastai head; else it is trained here)")
    p.add_argument('--train-full', action='store_true', help='train the full model here even when `--weights` exist')
    p.add_argument('--eval-size', type=int, default=224, help='input size of the box pass (images are squashed to it)')
    p.add_argument('--train-only', action='store_true', help='train (or load) the models and stop')
    p.add_argument('--out', default=str(REPO/'bench'/'results'))
    p.add_argument('--bs', type=int, default=64)
    return p.parse_args()

def main(a):
    for d in (a.train_dir, a.boxes_dir):
        if not Path(d).exists(): raise SystemExit(f"{d} is not there: this benchmark needs the photographs of ../shared/data (see its README)")
    t0 = time.time()
    models, infos = {}, {}
    if not a.train_full: models['full'], infos['full'] = shared_learner(a.train_dir, a.weights)
    for name, (arch, size, epochs, lr, per_class) in MODELS.items():
        if models.get(name) is None: models[name], infos[name] = get_model(name, a.train_dir, arch, size, epochs, lr, a.bs, per_class)
        print(name, {k: infos[name][k] for k in ('arch', 'size', 'epochs', 'n_train', 'val_accuracy', 'train_seconds')}, flush=True)
    if a.train_only: return
    labels, gt = box_set(a.boxes_dir)
    maps, preds, pred_of = evaluate(models, a, labels, gt)
    per_image, summary = evaluate_localization(preds, gt, maps=maps)
    centre = box_accuracy(centre_maps(list(labels.image)), gt)['MaxBoxAccV2']
    summary.loc['centre map (baseline)', 'MaxBoxAccV2'] = centre
    summary = summary[[c for c in COLS if c in summary.columns]]
    curves = {r: eps_curve(maps[r], gt) for r in ['full · Grad-CAM · pred', 'full · Grad-CAM++ · pred', 'small · Grad-CAM · pred',
                                                  f'full · DDT · pred · {DDT_SIZE} px, dilated layer4', f'full · DDT × centre map · pred · {DDT_SIZE} px, dilated']}
    sweep = pd.concat({r: c.set_index('eps') for r, c in curves.items()}, names=['row', 'eps'])
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    figure(a, maps, preds, gt, labels, curves, out/'localization_examples.png')
    acc_rows = pd.DataFrame({n: dict(arch=i['arch'], train_size=i['size'], epochs=i['epochs'], n_train=i['n_train'],
                                     val_accuracy=i['val_accuracy'], boxset_accuracy=float(np.mean([pred_of[n][im] == w for im, w in zip(labels.image, labels.wnid)])),
                                     train_minutes=None if i.get('train_seconds') is None else round(i['train_seconds']/60, 1))
                             for n, i in infos.items()}).T
    cls, split = per_class_table(per_image, 'full · Grad-CAM · pred', labels, pred_of['full'])
    r = summary.loc['full · Grad-CAM · pred']
    res = dict(recall=r.Recall, precision=r.Precision, iou=r.IoU, area_reduction=r['Image Area Reduction'], boxacc50=r.BoxAcc,
               maxboxacc_v2=r.MaxBoxAccV2, center_maxboxacc_v2=centre, val_accuracy=infos['full']['val_accuracy'])
    res = {k: round(float(v), 4) for k, v in res.items()}
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    md = f"""# Localization on real photographs (ImageNet-val boxes, 10 Imagenette classes)

{stamp}; {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; `python bench/localization.py`
({time.time() - t0:.0f} s with cached models). Box set: `{a.boxes_dir}` ({len(labels)} photographs, {len(gt)} boxes), squashed
to {a.eval_size} px for the box pass. Boxes: `mass_box` at eps = {EPS} (the seed paper's 2.5% mass cut) on the map of the
predicted class (`pred`) or of the ground-truth class (`GT class`); scores are against every ground-truth box of the
image (recall: share of the objects' area inside the box; area reduction: share of the image cut away). MaxBoxAccV2
sweeps the map's thresholds (WSOL-evaluation, all components, mean over IoU 0.3/0.5/0.7). Baselines by the same code:
whole image; the centred box with the best mean IoU (its size tuned on this set); the centre map (every centred box
size; MaxBoxAccV2 only); and, as a ceiling, the oracle: the smallest box around the image's ground-truth boxes (recall 1
with the most image cut away that a single box allows). Rows `layer3`, `fused`, `px input` and `pytorch-grad-cam` vary one thing of the full model.
DDT (deep descriptor transforming, `fastai_attncrop.saliency.DDT`) is fitted on {DDT_PER_CLASS} training images a class at the
input size of its row; the `dilated` rows run the full model's layer4 at stride 1 with dilation 2 (`dilate_last_stage`; same weights, finer
maps) at {DDT_SIZE} px; `× centre map` multiplies the map by the centre map (a prior, not the classifier).

## Classifiers (from scratch, `pretrained=False`, fastai `fit_one_cycle`, `aug_transforms`, CPU)

{md_table(acc_rows)}

{'`full` is `' + infos['full']['source'] + '`: resnet18 trained from scratch here (fastai, 128 px, 10 epochs, 9,103 Imagenette training images, 38 min on 2 cores), loaded as the cached full model; without it (or with `--train-full`) the script trains the same recipe on `--train-dir`.' if infos['full'].get('source') else '`full` is trained by this script (cache: bench/cache/localization/).'}
`small` is trained by this script on 100 images per class (cache: bench/cache/localization/).

## Table (seed paper's columns first)

{md_table(summary)}

## eps sweep (recall against area reduction)

{md_table(sweep)}

## Where the classifier limits localization: full model, Grad-CAM, per class (sorted by IoU)

{md_table(cls)}

{md_table(split)}

Seed paper (ResNet34, ImageNet-pretrained, Pascal VOC): Grad-CAM recall 0.861, precision 0.655, IoU 0.551, mAP 0.668,
area reduction 0.562.

![examples](localization_examples.png)

```json
{json.dumps(res)}
```
"""
    write_text_atomic(md, out/'localization.md')
    with pd.option_context('display.width', 200, 'display.max_columns', 20, 'display.max_colwidth', 60):
        print(acc_rows.to_string()); print(summary.round(3).to_string()); print(sweep.round(3).to_string())
        print(cls.round(3).to_string()); print(split.round(3).to_string())
    print(json.dumps(res))

if __name__ == '__main__':
    main(parse())
