"""Benchmark (not a timed test): does re-fitting on attention crops beat the same budget without them?

Default run (`--backbone tf_efficientnet_lite0`): the product's claim from a real ImageNet-pretrained backbone, run
the way a fastai user runs it, in two data settings (`--settings shapes photos`), over `--seeds` seeds:
* shapes: synthetic small objects (`--obj-frac`, 5-10% of the area) in `--image-size` (256) px images squashed to
  the `--size` (128) px network input, where the squash loses the object's detail (the logo-in-a-corner regime);
* photos: Imagenette photographs (`../shared/data/imagenette224`, `--photo-root`) shrunk to `--photo-frac` (5-15%) of
  a `--image-size` px scene and pasted at random on a background (`--photo-bg`: `mosaic`, tiles of photographs of the
  other classes shuffled into a texture; `photo`, a whole photograph of another class); the label is the pasted
  photograph's class; the validation composites are built from `imagenette224/valid` only.
Per seed, one `pretrained_learner(dls)` (EfficientNet-Lite0, ImageNet weights, offline) runs `fine_tune(--epochs1,
--lr)`; from those same weights (and optimizer state):
* attncrop: `box_pass` with `attention_crop`'s defaults, then `learn.attention_crop(boxes=..., epochs=R)`: R epochs of
  the mixed set, which is 1/(1 - crop_share) times the plain set;
* baseline: `fit_one_cycle(R/(1 - crop_share))` on the plain (uncropped) images: the same images seen, the same schedule.
Both are scored on the same uncropped validation images; each also on the validation images cropped with its own
boxes (the labelling-time view: the first model's boxes for attncrop, a box pass of the baseline model for the
baseline), and the baseline on attncrop's crops. Reported per seed (as soon as it is done; cached in bench/cache/, so
a cut run resumes) and as means with the paired gain (baseline - attncrop) and its standard error; the tables go to
bench/results/refit.md (`--results`), the last printed line is one JSON object.

    python bench/refit.py                       # the default run (both settings, 5 seeds)
    python bench/refit.py --quick               # a 1-seed smoke run at a tiny scale (results: bench/out/refit_quick.md)
    python bench/refit.py --settings photos --seeds 8 --threads 1

`--backbone small_cnn` runs the earlier benchmark (below), with its own defaults:
On a synthetic set whose objects cover `--obj-frac` (default 5-10%) of the image, over `--seeds` seeds:
* baseline: `fit_one_cycle(E)` from scratch (or, with `--pretrain N`, both arms from a body pretrained on other shapes);
* attncrop: the same budget of training images seen: `fit_one_cycle(E1)`, then `learn.attention_crop` for the rest,
  whose mixed training set is 1/(1 - crop_share) times larger, so it gets (E - E1)*(1 - crop_share) epochs.
With `--design continue` the two arms share their start instead (the user's workflow: `attention_crop` right after
`fine_tune`): one model is fit for `--epochs1` epochs (default E // 2), then
* baseline: goes on with `fit_one_cycle(E - E1, lr2)` on the plain training set;
* attncrop: `attention_crop` from the same weights, (E - E1)*(1 - crop_share) epochs of the mixed set,
so both see the same number of training images after the shared start, with the same schedule; only the crops differ.
Both are scored on the same uncropped validation images; with `--crop-valid` the re-fitted model is also scored on
the validation images cropped with the first model's boxes (at `--valid-margin`), as a labelling tool would show them,
and so is the baseline model (can a model trained on whole images read the crops?).
`--boxes gt` replaces every box by the ground-truth box: the upper bound that perfect localization would give.
The table also gives the quality of the validation boxes (share of the object inside, share of the image kept).
Prints a table, then as the last line one JSON object {"baseline_error": a, "attncrop_error": b} (mean validation
error over the seeds).

    python bench/refit.py --backbone small_cnn              # full scale
    python bench/refit.py --backbone small_cnn --n-train 60 --epochs 6 --seeds 3 # reduced scale
    python bench/refit.py --backbone small_cnn --method ddt                      # boxes from a DDT fitted on the first model's training set
    python bench/refit.py --backbone small_cnn --design continue --epochs 30 --epochs1 20
    python bench/refit.py --backbone small_cnn --design continue --epochs 30 --epochs1 20 --image-size 128 --crop-valid \
        --method gradcampp --margins 0.8 0.6 --valid-margin 0.6 --aspect 1
    python bench/refit.py --backbone small_cnn --design continue --epochs 30 --epochs1 20 --image-size 128 --pretrain 15 # from a pretrained body
    python bench/refit.py --backbone small_cnn --epochs 30 --epochs1 10 --lr2 3e-3 --image-size 128 --pretrain 15 --crop-valid \
        --method gradcampp --margins 0.8 0.6 --valid-margin 0.6 --aspect 1 --seeds 12  # README's pretrained split run"""
import argparse, copy, datetime, hashlib, json, os, platform, sys, tempfile, time, warnings
from functools import partial
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np, pandas as pd, torch
from fastai.vision.all import ImageDataLoaders, Resize, vision_learner, accuracy, set_seed
from fastai_attncrop.data import make_shapes, SHAPES
from fastai_attncrop.models import small_cnn
from fastai_attncrop.crop import margin_cols, gt_recall, attention_dls
from fastai_attncrop.boxpass import box_pass, learner_items
from fastai_attncrop.learner import box_margins
from fastai_attncrop.saliency import DDT
import fastai_attncrop.learner  # noqa: F401  (patches Learner.attention_crop)

def learner(root, size, bs, seed, body=None):
    "A fresh `small_cnn` learner; with `body` (a state_dict), its body starts from those weights (our stand-in for pretrained ones)."
    set_seed(seed, reproducible=True)
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(size), bs=bs, num_workers=0, seed=seed)
    learn = vision_learner(dls, small_cnn, pretrained=False, metrics=accuracy)
    if body is not None: learn.model[0].load_state_dict(body)
    return learn

def pretrained_body(a, img_size):
    """Body weights of `small_cnn` trained for `a.pretrain` epochs on the shapes that are *not* the benchmark's classes,
    with larger objects (10-40% of the area): a stand-in for the ImageNet weights a user would fine-tune (none exist
    here). Cached in bench/cache/ (git-ignored)."""
    cache = Path(__file__).parent/'cache'/f'refit_pretrain_{a.classes}_{img_size}_{a.size}_{a.pretrain}.pth'
    if cache.exists(): return torch.load(cache)
    others = list(SHAPES[a.classes:])
    root = make_shapes(Path(tempfile.gettempdir())/f'attncrop_refit_pretrain_{a.classes}_{img_size}', n_train=a.n_train,
                       n_valid=a.n_valid, classes=others, size=img_size, obj_frac=(0.1, 0.4), seed=1)
    t0 = time.time()
    learn = learner(root, a.size, a.bs, 0)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.pretrain, a.lr)
    print(f"pretrained on {len(others)} other shapes (10-40% of the area) for {a.pretrain} epochs: "
          f"validation error {error(learn):.3f}, {time.time() - t0:.0f}s", flush=True)
    body = learn.model[0].state_dict()
    cache.parent.mkdir(exist_ok=True); torch.save(body, cache)
    return body

def gt_boxes(boxes, root, margins):
    "`boxes` with the ground-truth box of each item in the columns of every margin: perfect localization."
    gt = pd.read_csv(Path(root)/'boxes.csv')
    by = gt.set_index(gt['image'].map(lambda r: str((Path(root)/r).resolve())))[['xmin', 'ymin', 'xmax', 'ymax']]
    out = boxes.copy(); xy = by.loc[[str(Path(p).resolve()) for p in out['item']]].to_numpy(float)
    for m in margins: out[margin_cols(m)] = xy
    return out

def error(learn, dl=None):
    "Validation error of `learn` on `dl` (default: its own validation set)."
    with learn.no_bar(): return 1 - float(learn.validate(dl=dl)[1])

def main_small_cnn(a):
    "The earlier benchmark (`--backbone small_cnn`): from scratch, or from the `--pretrain` stand-in body."
    for k, v in SMALL_CNN_DEFAULTS.items():
        if getattr(a, k) is None: setattr(a, k, v)
    img_size = a.image_size or a.size
    root = make_shapes(Path(tempfile.gettempdir())/f'attncrop_refit_{a.n_train}_{img_size}', n_train=a.n_train, n_valid=a.n_valid,
                       classes=a.classes, size=img_size, obj_frac=tuple(a.obj_frac), seed=0)
    margins = 'adaptive' if a.margins == ['adaptive'] else [float(m) for m in a.margins]
    e1 = a.epochs1 if a.epochs1 is not None else a.epochs // 2
    e2 = max(1, round((a.epochs - e1) * (1 - a.crop_share)))
    body = pretrained_body(a, img_size) if a.pretrain else None
    rows = []
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        t0 = time.time()
        ac = learner(root, a.size, a.bs, seed, body)   # each learner() sets the seed first: the order of the arms does not matter
        with ac.no_bar(), ac.no_logging(): ac.fit_one_cycle(e1, a.lr)
        base = learner(root, a.size, a.bs, seed, body)
        if a.design == 'split': epochs, lr = a.epochs, a.lr
        else:   # 'continue': from the attncrop arm's start, plain instead of cropped, the same images seen
            base.model.load_state_dict(ac.model.state_dict())
            set_seed(seed)
            epochs, lr = a.epochs - e1, a.lr2
        with base.no_bar(), base.no_logging(): base.fit_one_cycle(epochs, lr)
        eb = error(base)
        grid = box_margins(margins, a.valid_margin)
        method = DDT().fit(ac) if a.method == 'ddt' else a.method   # ddt: fitted on the first model's training set
        boxes = box_pass(ac, method=method, margins=grid, target=None if a.target == 'pred' else 'label', cache=False, progress=False)
        if a.boxes == 'gt': boxes = gt_boxes(boxes, root, grid)
        vm = a.valid_margin or (min(grid) if margins == 'adaptive' else max(margins))   # the validation crops' margin
        q = box_stats(boxes, root, vm, 'valid')
        res = ac.attention_crop(boxes=boxes, epochs=e2, lr=a.lr2, margins=margins, crop_share=a.crop_share, crop_valid=a.crop_valid,
                                valid_margin=a.valid_margin, aspect=a.aspect,
                                target=None if a.target == 'pred' else 'label', cache=False, progress=False, seed=seed)
        ea = 1 - res.metrics_after['accuracy']
        ec = 1 - res.metrics_after_cropped['accuracy'] if res.metrics_after_cropped else float('nan')
        ebc = error(base, res.dls.valid) if a.crop_valid else float('nan')
        rows.append((seed, eb, 1 - res.metrics_before['accuracy'], ea, ec, ebc, *q, time.time() - t0))
    base_desc = (f"baseline {a.epochs} epochs" if a.design == 'split' else
                 f"shared start {e1} epochs, then baseline {a.epochs - e1} more epochs on the plain set (lr {a.lr2})")
    print(("" if not a.pretrain else f"body pretrained {a.pretrain} epochs on the {len(SHAPES) - a.classes} other shapes; ") +
          f"objects {a.obj_frac} of the area, {a.classes} classes x {a.n_train} training images of {img_size}px, network input {a.size}px; "
          f"design {a.design}: {base_desc}; attncrop {e1} epochs + attention_crop {e2} epochs on the mixed set "
          f"(margins {margins}, crop_share {a.crop_share}, crop_valid {a.crop_valid}, valid_margin {a.valid_margin}, "
          f"aspect {a.aspect}, method {a.method}, "
          + ("ground-truth boxes: perfect localization)" if a.boxes == 'gt' else f"saliency boxes for the {a.target})"))
    # the errors are on the uncropped validation images; 'cropped valid' is the re-fitted model on validation images
    # cropped with its own boxes (only with --crop-valid), as they would be shown at labelling time; 'base cropped'
    # is the baseline model on those same crops (does the re-fit matter, or only the crops?)
    # box recall / kept: on the validation images, at the margin of the validation crops (adaptive: the tightest),
    # the share of the object inside the box and the share of the image the box keeps
    cols = [('baseline err', 13), ('before refit', 13), ('attncrop err', 13), ('cropped valid', 14), ('base cropped', 13),
            ('box recall', 11), ('box kept', 9)]   # every row: seed, these columns, time
    print(f"{'seed':>4} " + ' '.join(f"{n:>{w}}" for n, w in cols) + f" {'time (s)':>9}")
    for r in rows: print(f"{r[0]:>4} " + ' '.join(f"{v:>{w}.3f}" for v, (_, w) in zip(r[1:-1], cols)) + f" {r[-1]:>9.0f}")
    means = np.mean([r[1:-1] for r in rows], axis=0)
    print(f"{'mean':>4} " + ' '.join(f"{m:>{w}.3f}" for m, (_, w) in zip(means, cols)))
    b, c = float(means[0]), float(means[2])
    print(json.dumps({'baseline_error': round(b, 4), 'attncrop_error': round(c, 4)}))

# ------------------------------------------------------------------ the default run: a real ImageNet-pretrained backbone
PHOTO_ROOT = Path(__file__).resolve().parents[2]/'shared'/'data'/'imagenette224'
CACHE = Path(__file__).parent/'cache'
SMALL_CNN_DEFAULTS = dict(n_train=300, n_valid=50, classes=4, size=64, image_size=None, obj_frac=[0.05, 0.1], epochs1=None,
                          lr=3e-3, margins=['0.95', '0.8', '0.6'], bs=32, seeds=3, method='gradcam', crop_share=0.5)
PRETRAINED_DEFAULTS = dict(n_train=40, n_valid=20, classes=4, size=128, image_size=256, obj_frac=[0.05, 0.1], epochs1=2,
                           lr=3e-3, margins=['0.95', '0.8', '0.6'], bs=8, seeds=5, method='gradcam', crop_share=0.5,
                           photo_classes=5)
QUICK = dict(n_train=8, n_valid=4, classes=2, photo_classes=2, seeds=1, bs=4)

def _mosaic(photos, size, tile, rng):
    "A `size` px texture of `tile` px tiles taken at random places of the (size x size) arrays `photos`, shuffled."
    out, n = np.zeros((size, size, 3), np.uint8), size // tile
    for r in range(n):
        for c in range(n):
            src = photos[int(rng.integers(len(photos)))]
            y, x = (int(v) for v in rng.integers(0, n, 2)*tile)
            out[r*tile:(r+1)*tile, c*tile:(c+1)*tile] = src[y:y+tile, x:x+tile]
    return out

def photo_composites(dest, src=PHOTO_ROOT, classes=5, n_train=32, n_valid=16, size=256, obj_frac=(0.05, 0.15),
                     background='mosaic', tile=32, n_bg=4, seed=0) -> Path:
    """Scenes of `size` px, each with one Imagenette photograph of one of the first `classes` classes shrunk to
    `obj_frac` of the area and pasted at a random place; the background is a `mosaic` of `tile` px tiles of `n_bg`
    photographs of the other (Imagenette) classes, or one whole `photo` of another class. Training scenes come from
    `src/train`, validation scenes from `src/valid`. Written as `split/wnid/*.jpg` with `boxes.csv` (the pasted box)."""
    from PIL import Image
    dest, src = Path(dest), Path(src)
    meta = dict(classes=classes, n_train=n_train, n_valid=n_valid, size=size, obj_frac=list(obj_frac), background=background,
                tile=tile, n_bg=n_bg, seed=seed, version=1)
    if (dest/'meta.json').exists() and json.loads((dest/'meta.json').read_text()) == meta and (dest/'boxes.csv').exists(): return dest
    if not (src/'train').is_dir(): raise FileNotFoundError(f"the photographs are missing: {src} (see ../shared/data/README.md)")
    wnids = sorted(d.name for d in (src/'train').iterdir() if d.is_dir())
    rows = []
    for split, n in (('train', n_train), ('valid', n_valid)):
        pool = {w: sorted((src/split/w).glob('*.JPEG')) for w in wnids}
        for ci, w in enumerate(wnids[:classes]):
            rng = np.random.default_rng([seed, split == 'valid', ci])
            others = [p for v in wnids if v != w for p in pool[v]]
            for i, p in enumerate(rng.choice(pool[w], n, replace=False)):
                bgs = [np.asarray(Image.open(others[int(k)]).convert('RGB').resize((size, size), Image.BILINEAR))
                       for k in rng.choice(len(others), n_bg if background == 'mosaic' else 1, replace=False)]
                scene = Image.fromarray(_mosaic(bgs, size, tile, rng) if background == 'mosaic' else bgs[0])
                side = int(round(size*np.sqrt(rng.uniform(*obj_frac))))
                x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
                scene.paste(Image.open(p).convert('RGB').resize((side, side), Image.LANCZOS), (x0, y0))
                rel = f"{split}/{w}/{w}_{i:04d}.jpg"
                (dest/rel).parent.mkdir(parents=True, exist_ok=True)
                scene.save(dest/rel, quality=92)
                rows.append((rel, w, x0, y0, x0 + side, y0 + side, size, size, split, 1))
    pd.DataFrame(rows, columns=['image', 'label', 'xmin', 'ymin', 'xmax', 'ymax', 'width', 'height', 'split', 'instance']
                 ).to_csv(dest/'boxes.csv', index=False)
    (dest/'meta.json').write_text(json.dumps(meta))
    return dest

def setting_data(a, setting) -> tuple:
    "(root of the dataset, its description) of `setting`, generated once under the temporary folder."
    tmp = Path(tempfile.gettempdir())
    if setting == 'shapes':
        root = make_shapes(tmp/f'attncrop_refit_pt_{a.classes}_{a.n_train}_{a.n_valid}_{a.image_size}', n_train=a.n_train,
                           n_valid=a.n_valid, classes=a.classes, size=a.image_size, obj_frac=tuple(a.obj_frac), seed=0)
        return root, (f"synthetic shapes (`make_shapes`): {a.classes} classes x {a.n_train} training + {a.n_valid} validation "
                      f"images of {a.image_size} px, one object of {a.obj_frac[0]:g}-{a.obj_frac[1]:g} of the area")
    root = photo_composites(tmp/f'attncrop_refit_photos_{a.photo_classes}_{a.n_train}_{a.n_valid}_{a.image_size}_{a.photo_bg}',
                            a.photo_root, a.photo_classes, a.n_train, a.n_valid, a.image_size, tuple(a.photo_frac), a.photo_bg)
    return root, (f"Imagenette photographs ({a.photo_classes} classes x {a.n_train} training + {a.n_valid} validation "
                  f"scenes of {a.image_size} px), each one photograph shrunk to {a.photo_frac[0]:g}-{a.photo_frac[1]:g} "
                  f"of the area and pasted at random on a {a.photo_bg} background of the other classes' photographs; "
                  "validation scenes from imagenette224/valid")

def box_stats(boxes, root, margin, split) -> tuple:
    "Mean share of the object inside the boxes of `split` at `margin`, and mean share of the image they keep."
    va = boxes[boxes['split']==split]
    rec = gt_recall(va, pd.read_csv(Path(root)/'boxes.csv'), root, margin)
    c = va[margin_cols(margin)].to_numpy(float)
    keep = (c[:, 2]-c[:, 0])*(c[:, 3]-c[:, 1])/(va['width']*va['height']).to_numpy(float)
    return float(np.nanmean(rec)), float(np.nanmean(keep))

def _quiet(fit, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return fit(*args, **kwargs)

def pretrained_seed(root, a, seed) -> dict:
    """One seed of the default run: fine_tune, then from the same weights and optimizer state attncrop (box pass +
    attention_crop) and baseline (plain epochs, as many images seen); errors, box quality and times."""
    from fastai_attncrop.models import pretrained_learner
    margins = 'adaptive' if a.margins == ['adaptive'] else [float(m) for m in a.margins]
    grid = box_margins(margins)
    vm = min(grid) if margins == 'adaptive' else max(margins)   # attention_crop's validation crops (valid_margin=None)
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(a.size), bs=a.bs, num_workers=0, seed=seed)
    set_seed(seed, reproducible=True)
    learn = pretrained_learner(dls, metrics=accuracy)
    r, t = dict(seed=seed), time.time()
    with learn.no_bar(), learn.no_logging(): _quiet(learn.fine_tune, a.epochs1, a.lr)
    r['t_fine_tune'], t = time.time() - t, time.time()
    start, opt_state = copy.deepcopy(learn.model.state_dict()), copy.deepcopy(learn.opt.state_dict())
    # attncrop: what `learn.attention_crop(epochs=R, crop_valid=True)` does, with its box pass timed apart
    boxes = box_pass(learn, method=a.method, margins=grid, cache=False, progress=False)
    r['t_box_pass'], t = time.time() - t, time.time()
    r['recall_train'], r['kept_train'] = box_stats(boxes, root, vm, 'train')
    r['recall_valid'], r['kept_valid'] = box_stats(boxes, root, vm, 'valid')
    res = _quiet(learn.attention_crop, boxes=boxes, epochs=a.refit_epochs, margins=margins, crop_share=a.crop_share,
                 crop_valid=True, method=a.method, cache=False, progress=False, seed=seed)
    r['t_refit'], t = time.time() - t, time.time()
    r['first_error'] = 1 - res.metrics_before['accuracy']
    r['attncrop_error'] = 1 - res.metrics_after['accuracy']
    r['attncrop_cropped_error'] = 1 - res.metrics_after_cropped['accuracy']
    # baseline: the same weights and optimizer state, plain images, as many images seen as the mixed set gives
    learn.dls = dls
    learn.model.load_state_dict(start); learn.opt.load_state_dict(opt_state)
    set_seed(seed)
    with learn.no_bar(), learn.no_logging(): _quiet(learn.fit_one_cycle, round(a.refit_epochs/(1 - a.crop_share)))
    r['t_baseline'] = time.time() - t
    r['baseline_error'] = error(learn)
    r['baseline_on_attncrop_crops_error'] = error(learn, res.dls.valid)
    # the baseline's own boxes of the validation images (a box pass of the baseline model), and its error on those crops
    items = learner_items(learn)
    bb = box_pass(learn, items=items[items['split']=='valid'], method=a.method, margins=grid, cache=False, progress=False)
    r['base_recall_valid'], r['base_kept_valid'] = box_stats(bb, root, vm, 'valid')
    own = attention_dls(dls, pd.concat([boxes[boxes['split']=='train'], bb], ignore_index=True), margins,
                        crop_share=a.crop_share, crop_valid=True, seed=seed)
    r['baseline_cropped_error'] = error(learn, own.valid)
    r['n_mixed'], r['n_plain'] = len(res.dls.train_ds), len(dls.train_ds)
    r['threads'], r['load'] = torch.get_num_threads(), os.getloadavg()[0]
    return r

COLS = [('first model', 'first_error'), ('baseline', 'baseline_error'), ('attncrop', 'attncrop_error'), ('gain', 'gain'),
        ('attncrop on own crops', 'attncrop_cropped_error'), ('baseline on own crops', 'baseline_cropped_error'),
        ('baseline on attncrop crops', 'baseline_on_attncrop_crops_error'), ('box recall', 'recall_valid'),
        ('box kept', 'kept_valid'), ('train recall', 'recall_train'), ('train kept', 'kept_train'),
        ('baseline box recall', 'base_recall_valid'), ('baseline box kept', 'base_kept_valid')]
TIMES = [('fine_tune', 't_fine_tune'), ('box pass', 't_box_pass'), ('re-fit', 't_refit'), ('baseline', 't_baseline')]

def summarize(rows) -> dict:
    "Means of every column, the paired gain (baseline - attncrop), its standard error and the seeds attncrop wins."
    g = np.array([r['baseline_error'] - r['attncrop_error'] for r in rows])
    out = {k: float(np.mean([r[k] for r in rows])) for _, k in COLS + TIMES if k != 'gain'}
    out.update(seeds=len(rows), gain=float(g.mean()), gain_se=float(g.std(ddof=1)/np.sqrt(len(g))) if len(g) > 1 else float('nan'),
               wins=int((g > 0).sum()), ties=int((g == 0).sum()))
    return out

def table(rows, s) -> list:
    "Markdown lines: one row per seed, the mean, the paired gain with its standard error."
    head = ['seed'] + [n for n, _ in COLS] + [f"{n} (s)" for n, _ in TIMES]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|'*len(head)]
    val = lambda r, k: r['baseline_error'] - r['attncrop_error'] if k == 'gain' else r[k]
    for r in rows: lines.append(f"| {r['seed']} | " + ' | '.join(f"{val(r, k):.3f}" for _, k in COLS) + ' | '
                                + ' | '.join(f"{r[k]:.0f}" for _, k in TIMES) + ' |')
    lines.append("| **mean** | " + ' | '.join(f"**{s['gain']:+.3f} ± {s['gain_se']:.3f}**" if k == 'gain' else f"{s[k]:.3f}"
                                                for _, k in COLS) + ' | ' + ' | '.join(f"{s[k]:.0f}" for _, k in TIMES) + ' |')
    verdict = ('holds' if s['gain'] >= 2*s['gain_se'] else 'does not hold') if s['seeds'] > 1 else 'untested (1 seed)'
    lines += ['', f"Paired gain (baseline - attncrop) {s['gain']:+.3f} ± {s['gain_se']:.3f} (standard error over {s['seeds']} "
              f"seeds); attncrop better on {s['wins']} of {s['seeds']} seeds ({s['ties']} ties). The claim (gain >= 2 SE) "
              f"{verdict} in this setting."]
    return lines

def config(a, setting) -> dict:
    "Everything a seed's result depends on (the cache key)."
    keys = ['classes', 'n_train', 'n_valid', 'obj_frac'] if setting == 'shapes' else ['photo_classes', 'n_train', 'n_valid', 'photo_frac', 'photo_bg']
    return dict(setting=setting, version=1, **{k: getattr(a, k) for k in keys + ['image_size', 'size', 'epochs1', 'refit_epochs',
                'lr', 'margins', 'crop_share', 'method', 'bs']})

def main_pretrained(a):
    "The default run: both settings, per-seed results cached and printed as they come, refit.md and the JSON line."
    for k, v in {**PRETRAINED_DEFAULTS, **(QUICK if a.quick else {})}.items():
        if getattr(a, k) is None: setattr(a, k, v)
    results = Path(a.results or (Path(__file__).parent/('out/refit_quick.md' if a.quick else 'results/refit.md')))
    t_start, load0 = time.time(), os.getloadavg()[0]
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    summary, sections, descs = {}, {}, {}
    for setting in ['shapes', 'photos']:
        if setting not in a.settings: continue
        try: root, descs[setting] = setting_data(a, setting)
        except FileNotFoundError as e:
            print(f"{setting}: skipped: {e}", flush=True); descs[setting] = f"skipped: {e}"; continue
        cfg = config(a, setting)
        key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
        rows = []
        for seed in seeds:
            f = CACHE/'refit_pretrained'/f"{setting}_{key}_seed{seed}.json"
            if f.exists() and not a.no_cache: r = json.loads(f.read_text())['result']
            else:
                if a.report_only: continue
                r = pretrained_seed(root, a, seed)
                f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(dict(config=cfg, result=r)))
            rows.append(r)
            print(f"{setting} seed {seed}: " + ', '.join(f"{n} {r[k]:.3f}" for n, k in COLS if k != 'gain')
                  + f"; gain {r['baseline_error'] - r['attncrop_error']:+.3f}; "
                  + ', '.join(f"{n} {r[k]:.0f}s" for n, k in TIMES), flush=True)
        if rows:
            summary[setting] = summarize(rows)
            sections[setting] = table(rows, summary[setting])
            write_report(results, a, descs, sections, summary, seeds, t_start, load0)   # after every setting: a cut run leaves numbers
    write_report(results, a, descs, sections, summary, seeds, t_start, load0)
    for setting, lines in sections.items(): print(f"\n{setting}:\n" + '\n'.join(lines))
    out = dict(pretrained=True, backbone='tf_efficientnet_lite0', seeds=len(seeds))
    for setting, prefix in (('shapes', ''), ('photos', 'photo_')):
        s = summary.get(setting)
        out.update({f"{prefix}{k}": None if s is None or not np.isfinite(s[v]) else round(s[v], 4) for k, v in (
            ('baseline_error', 'baseline_error'), ('attncrop_error', 'attncrop_error'), ('paired_gain', 'gain'),
            ('paired_gain_se', 'gain_se'), ('attncrop_cropped_error', 'attncrop_cropped_error'),
            ('baseline_cropped_error', 'baseline_cropped_error'), ('first_error', 'first_error'), ('box_recall', 'recall_valid'),
            ('box_kept', 'kept_valid'))})
        out[f"{prefix}seeds_done"] = 0 if s is None else s['seeds']
    out['seconds'] = round(time.time() - t_start)
    print(json.dumps(out))

NOTES = Path(__file__).parent/'refit_notes.md'

def designs_table(a) -> list:
    "Markdown lines: every design found in the per-seed cache (2 seeds or more), what it changes from this run, its means."
    groups = {}
    for f in sorted((CACHE/'refit_pretrained').glob('*.json')):
        d = json.loads(f.read_text())
        groups.setdefault(json.dumps(d['config'], sort_keys=True), []).append(d['result'])
    lines = ["## Every design tried (from bench/cache/refit_pretrained/, 2 seeds or more)", "",
             "| setting | differs from this run | seeds | first model | baseline | attncrop | gain ± SE | attncrop better | "
             "attncrop on own crops | baseline on own crops | box recall / kept | claim (gain >= 2 SE) |", "|" + "---|"*12]
    for cfg, rows in groups.items():
        cfg = json.loads(cfg)
        if len(rows) < 2: continue
        mine = config(a, cfg['setting'])
        diff = ', '.join(f"{k} {v}" for k, v in cfg.items() if mine.get(k) != v) or '(this run)'
        s = summarize(sorted(rows, key=lambda r: r['seed']))
        lines.append(f"| {cfg['setting']} | {diff} | {s['seeds']} | {s['first_error']:.3f} | {s['baseline_error']:.3f} | "
                     f"{s['attncrop_error']:.3f} | {s['gain']:+.3f} ± {s['gain_se']:.3f} | {s['wins']} of {s['seeds']} | "
                     f"{s['attncrop_cropped_error']:.3f} | {s['baseline_cropped_error']:.3f} | {s['recall_valid']:.2f} / "
                     f"{s['kept_valid']:.2f} | {'holds' if s['gain'] >= 2*s['gain_se'] else 'does not hold'} |")
    return lines

def write_report(path, a, descs, sections, summary, seeds, t_start, load0):
    "bench/results/refit.md: settings, date, machine, one table per setting (and the notes in bench/refit_notes.md)."
    margins = 'adaptive' if a.margins == ['adaptive'] else [float(m) for m in a.margins]
    kept, argv = [], iter(sys.argv[1:])   # the command without the flags of how it ran (not what)
    for o in argv:
        if o in ('--results', '--threads'): next(argv, None)
        elif o != '--report-only': kept.append(o)
    cmd = ' '.join(['PYTHONPATH=. python bench/refit.py'] + kept)
    lines = ["# Re-fit on attention crops from an ImageNet-pretrained backbone", "",
             f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
             f"shared with other jobs (load average {load0:.1f} at the start of this invocation, {os.getloadavg()[0]:.1f} at its end; "
             f"the seeds read from the cache ran under their own load, see below), torch "
             f"{torch.__version__}; this invocation {time.time() - t_start:.0f} s (seeds loaded from bench/cache/ cost nothing; "
             f"each seed's own times are in its row). Command: `{cmd}`.", "",
             f"Backbone: `pretrained_learner(dls)` (EfficientNet-Lite0, ImageNet weights), `ImageDataLoaders.from_folder(..., "
             f"item_tfms=Resize({a.size}), bs={a.bs})`: {a.image_size} px images squashed to {a.size} px. Both arms: "
             f"`learn.fine_tune({a.epochs1}, {a.lr:g})`, then from those weights and optimizer state "
             f"**attncrop**: `learn.attention_crop(epochs={a.refit_epochs}, crop_valid=True)` with the defaults (method "
             f"{a.method}, margins {margins}, crop_share {a.crop_share:g}, target: the prediction, lr: fit_one_cycle's "
             f"default) — {a.refit_epochs} epoch(s) of the mixed set, {1/(1 - a.crop_share):g}x the plain set — and "
             f"**baseline**: `learn.fit_one_cycle({round(a.refit_epochs/(1 - a.crop_share))})` on the plain images: the "
             "same images seen, the same schedule. Seeds: " + ', '.join(map(str, seeds)) + ".", "",
             "Columns: validation errors on the same uncropped images (first model = after fine_tune, when the boxes are "
             f"taken); *on own crops*: the validation images cropped at margin {max(margins) if margins != 'adaptive' else 0.6} "
             "with the arm's own boxes (attncrop: the first model's boxes, as `crop_valid=True` shows them; baseline: a box "
             "pass of the baseline model); *baseline on attncrop crops*: the baseline model on attncrop's crops; box recall / "
             "kept: the first model's validation boxes at that margin, the share of the object inside and of the image kept "
             "(train: the same for the training boxes the crops come from); times in seconds under the shared load.", ""]
    for setting, title in (('shapes', 'Setting 1: small synthetic objects'), ('photos', 'Setting 2: real photographs made small')):
        if setting not in descs: continue
        lines += [f"## {title}", "", descs[setting] + '.', ""] + sections.get(setting, ['(no seed finished)']) + [""]
    if not a.quick: lines += designs_table(a) + [""] + ([NOTES.read_text().rstrip(), ""] if NOTES.exists() else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines))

def main(a):
    if a.threads: torch.set_num_threads(a.threads)
    (main_small_cnn if a.backbone == 'small_cnn' else main_pretrained)(a)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--backbone', default='tf_efficientnet_lite0', choices=['tf_efficientnet_lite0', 'small_cnn'],
                   help='tf_efficientnet_lite0: the default run (ImageNet-pretrained, two settings); small_cnn: the earlier benchmark')
    # defaults of None: PRETRAINED_DEFAULTS for the default run, SMALL_CNN_DEFAULTS with --backbone small_cnn
    p.add_argument('--n-train', type=int, default=None, help='training images per class (40; small_cnn: 300)')
    p.add_argument('--n-valid', type=int, default=None, help='validation images per class (20; small_cnn: 50)')
    p.add_argument('--classes', type=int, default=None, help='classes of the synthetic shapes (4)')
    p.add_argument('--size', type=int, default=None, help='network input size (images are squashed to it; 128, small_cnn: 64)')
    p.add_argument('--image-size', type=int, default=None, help='size of the images (256; small_cnn: --size); crops '
                   'of larger images keep more of the object\'s pixels than the squashed whole image')
    p.add_argument('--obj-frac', type=float, nargs=2, default=None, help='share of the area of the synthetic objects (0.05 0.1)')
    p.add_argument('--epochs', type=int, default=10, help='small_cnn: budget E, in epochs over the plain training set')
    p.add_argument('--epochs1', type=int, default=None, help='fine_tune epochs before the boxes (2, as the demo; small_cnn: epochs before the re-fit, E // 2)')
    p.add_argument('--refit-epochs', type=int, default=1, help='attention_crop epochs of the mixed set (the baseline: as many images seen)')
    p.add_argument('--lr', type=float, default=None, help='fine_tune base lr (3e-3, as the demo; small_cnn: fit_one_cycle lr)')
    p.add_argument('--lr2', type=float, default=1e-3, help='small_cnn: learning rate of the re-fit')
    p.add_argument('--margins', nargs='+', default=None, help="margins, or 'adaptive' (attention_crop's default 0.95 0.8 0.6)")
    p.add_argument('--crop-share', type=float, default=None, help="attention_crop's crop_share (0.5)")
    p.add_argument('--crop-valid', action='store_true', help='small_cnn: also score the cropped validation images (always on in the default run)')
    p.add_argument('--valid-margin', type=float, default=None, help='small_cnn: margin of the validation crops (default: the largest margin)')
    p.add_argument('--aspect', type=float, default=None, help='small_cnn: grow the boxes to this width / height before cropping (1: square, as Resize(size) crops)')
    p.add_argument('--method', default=None, help="saliency method of the boxes (gradcam; small_cnn: 'ddt', a DDT fitted on the first model's training set)")
    p.add_argument('--target', default='pred', choices=['pred', 'label'],
                   help="small_cnn: class the boxes explain: the model's prediction, or each item's known label")
    p.add_argument('--boxes', default='saliency', choices=['saliency', 'gt'],
                   help="small_cnn: saliency: the model's boxes; gt: every margin's box is the ground-truth box (perfect localization, an upper bound)")
    p.add_argument('--design', default='split', choices=['split', 'continue'],
                   help="small_cnn: split: baseline trains E epochs from scratch; continue: both arms go on from one shared E1-epoch model")
    p.add_argument('--pretrain', type=int, default=0, help='small_cnn: epochs of pretraining the body on the other shapes, with larger '
                   'objects (0: from scratch); both arms start from it, as a user fine-tunes pretrained weights')
    p.add_argument('--settings', nargs='+', default=['shapes', 'photos'], choices=['shapes', 'photos'], help='data settings of the default run')
    p.add_argument('--photo-root', default=str(PHOTO_ROOT), help='imagenette224 folder (train/ and valid/ of <wnid>/*.JPEG)')
    p.add_argument('--photo-classes', type=int, default=None, help='Imagenette classes of the photo setting (5, the first by wnid)')
    p.add_argument('--photo-frac', type=float, nargs=2, default=[0.05, 0.15], help='share of the scene the pasted photograph covers')
    p.add_argument('--photo-bg', default='mosaic', choices=['mosaic', 'photo'], help="the scene's background: a mosaic of tiles of "
                   "the other classes' photographs, or one whole photograph of another class")
    p.add_argument('--quick', action='store_true', help='a 1-seed smoke run at a tiny scale (results in bench/out/refit_quick.md)')
    p.add_argument('--results', default=None, help='markdown results file (default bench/results/refit.md)')
    p.add_argument('--no-cache', action='store_true', help='recompute seeds found in bench/cache/refit_pretrained/')
    p.add_argument('--report-only', action='store_true', help='only the seeds already cached: tables and JSON, no training')
    p.add_argument('--bs', type=int, default=None, help='batch size (8; small_cnn: 32)')
    p.add_argument('--seeds', type=int, default=None, help='seeds (5; small_cnn: 3)')
    p.add_argument('--first-seed', type=int, default=0, help='seeds run are first_seed, first_seed + 1, ...')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    main(p.parse_args())
