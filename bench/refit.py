"""Benchmark (issue 32, items 2-3): does the classifier gain from the zoom, in training (`attention_crop`) and at prediction
time (`learn.zoom_predict`, look then zoom)?

Two settings, each one folder of `train/`, `dev/` and `valid/` scenes of `IMAGE` (384) px with exact object boxes, built once
(seeded) under the git-ignored `bench/cache/refit/`:
* `shapes`: synthetic shapes (`fastai_attncrop.data.make_shapes`) of 2-8% of the image; `train/` and `valid/` from one
  `make_shapes` set (seed 0), `dev/` the validation images of another (seed 1);
* `photos`: Imagenette photographs (`../shared/data/imagenette224/`, `--photo-root`) of the first `classes` classes, each
  shrunk to 3-10% of the scene and pasted at a random place on a blurred photograph of one of the other classes;
  `train/` and `dev/` scenes from disjoint photographs of `imagenette224/train`, `valid/` scenes from `imagenette224/valid`.
The network sees every scene squashed to `SIZE` (192) px (`Resize`); the package's default box rule boxes the 384 px files
at their own size.

Per seed: `pretrained_learner(dls)` (EfficientNet-Lite0, ImageNet weights, offline), `fine_tune(epochs1, lr)`: the first
model. Its box pass (`box_pass` defaults) over the training and validation items. From the same weights and optimizer state,
two arms with the same images seen and the same schedule:
* attncrop: `learn.attention_crop(boxes=..., epochs=R)` (every other argument its default): R epochs of the mixed set,
  1/(1 - crop_share) times the plain set;
* baseline: `learn.fit_one_cycle(R/(1 - crop_share))` on the plain images.
Each arm (and the first model) is scored on the same uncropped validation images with plain prediction and with
look-then-zoom prediction (`learn.zoom_predict(..., with_views=True)`, its defaults unless `--zoom-*`), after a box pass of
that model over the validation images (its boxes' recall and kept area against the ground truth are reported).
Gains are paired per seed: paired_gain = baseline - attncrop (plain prediction); zoom_gain = baseline plain - baseline zoom;
combined_gain = baseline plain - attncrop zoom; each with the standard error of its per-seed differences.

`--split dev` runs the same protocol with `dev/` as the validation set, and scores a grid of zoom_predict's margin, pad_rel
and weight: every setting of this script was chosen there (see bench/refit_notes.md), never on `valid/`.
Per-seed results are cached (bench/cache/refit/), so a cut run resumes and `--report-only` writes the tables of the
cached seeds. Writes results/refit.md and .json with the harness's stamp (`--split dev`: refit_dev.*; `--quick`:
bench/out/refit_quick.*); the last printed line is one JSON object.

    PYTHONPATH=. python bench/refit.py --threads 1                 # the full run (both settings, 5 seeds)
    PYTHONPATH=. python bench/refit.py --quick                     # one seed at a tiny scale (bench/out/refit_quick.*)
    PYTHONPATH=. python bench/refit.py --split dev --seeds 2       # the dev runs the settings were chosen on
    PYTHONPATH=. python bench/refit.py --settings photos --first-seed 3 --seeds 2   # some seeds of one setting
    PYTHONPATH=. python bench/refit.py --report-only               # the tables of the cached seeds
"""
import argparse, copy, datetime, hashlib, json, os, platform, shutil, sys, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402
import numpy as np, pandas as pd, torch
from PIL import Image, ImageFilter
from fastai.vision.all import ImageDataLoaders, Resize, error_rate, set_seed
from fastai_attncrop.data import make_shapes, write_text_atomic
from fastai_attncrop.models import pretrained_learner
from fastai_attncrop.crop import margin_cols, gt_recall
from fastai_attncrop.boxpass import box_pass
from fastai_attncrop.learner import box_margins
import fastai_attncrop.learner  # noqa: F401  (patches Learner.attention_crop, Learner.zoom_predict)

REPO = Path(__file__).resolve().parents[1]
PHOTO_ROOT = REPO.parent/'shared'/'data'/'imagenette224'
CACHE = REPO/'bench'/'cache'/'refit'
IMAGE, SIZE = 384, 192       # scene side; the network's input (Resize)
# per setting: classes, scenes a class in train/, valid/, dev/, the object's share of the scene; background blur (photos)
SETTINGS = dict(shapes=dict(classes=4, n_train=75, n_valid=100, n_dev=50, obj_frac=(0.02, 0.08)),
                photos=dict(classes=4, n_train=75, n_valid=100, n_dev=50, obj_frac=(0.03, 0.10), blur=6))
QUICK_DATA = dict(classes=2, n_train=6, n_valid=5, n_dev=5)
# the training budget: fine_tune(epochs1, lr) (one frozen epoch first), attention_crop(epochs=refit_epochs) with its
# crop_share (the default 0.5: the mixed set is twice the plain one), the baseline fit_one_cycle(refit_epochs/(1 - crop_share))
TRAIN = dict(epochs1=2, lr=3e-3, refit_epochs=1, crop_share=0.5, bs=16)
ZOOM = dict(margin=0.95, pad_rel=0., weight=0.5)   # zoom_predict's defaults
# --split dev: the grid of zoom_predict settings scored (one box pass at every margin, one crop prediction per margin x pad)
GRID = dict(margin=(0.8, 0.95), pad_rel=(0., 0.25, 0.5), weight=(0.25, 0.5, 0.75, 1.))
VERSION = 1   # of the data and the protocol (part of every cache key)

def _key(*args) -> str: return hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:10]

# ------------------------------------------------------------------ data: one folder a setting (train/, dev/, valid/)
def _link(src:Path, dst:Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    try: os.link(src, dst)
    except OSError: shutil.copyfile(src, dst)

def shapes_root(d:dict) -> Path:
    "The shapes setting's folder: `train/`, `valid/` of a seed-0 `make_shapes` set, `dev/` the validation images of a seed-1 set."
    dest = CACHE/f"shapes_{_key(d, VERSION)}"
    if (dest/'boxes.csv').exists(): return dest
    parts = CACHE/f"shapes_{_key(d, VERSION)}.parts"
    kw = dict(classes=d['classes'], size=IMAGE, obj_frac=tuple(d['obj_frac']))
    a = make_shapes(parts/'a', n_train=d['n_train'], n_valid=d['n_valid'], seed=0, **kw)
    b = make_shapes(parts/'b', n_train=0, n_valid=d['n_dev'], seed=1, **kw)
    rows = []
    for src, split, new in ((a, 'train', 'train'), (a, 'valid', 'valid'), (b, 'valid', 'dev')):
        gt = pd.read_csv(src/'boxes.csv')
        gt = gt[gt['split']==split].copy()
        for rel in gt['image'].unique(): _link(src/rel, dest/(new + rel[len(split):]))
        gt['image'] = [new + r[len(split):] for r in gt['image']]
        gt['split'] = new
        rows.append(gt)
    pd.concat(rows).to_csv(dest/'boxes.csv.tmp', index=False); os.replace(dest/'boxes.csv.tmp', dest/'boxes.csv')
    shutil.rmtree(parts)
    return dest

def photos_root(d:dict, src=PHOTO_ROOT) -> Path:
    """The photos setting's folder: per object class (the first `classes` wnids), `n_train` + `n_dev` disjoint photographs of
    `src/train` (train/ and dev/ scenes) and `n_valid` of `src/valid` (valid/ scenes), each shrunk to `obj_frac` of an
    `IMAGE` px scene (a square, the photographs are 224 x 224) and pasted at a random place on a photograph of one of the
    other classes (of the same split of `src`), resized to the scene and blurred (Gaussian, radius `blur`)."""
    src = Path(src)
    if not (src/'train').is_dir() or not (src/'valid').is_dir():
        raise FileNotFoundError(f"the Imagenette photographs are missing: {src}/train, {src}/valid (see ../shared/data/README.md)")
    dest = CACHE/f"photos_{_key(d, VERSION)}"
    if (dest/'boxes.csv').exists(): return dest
    wnids = sorted(p.name for p in (src/'train').iterdir() if p.is_dir())
    objs, bgs = wnids[:d['classes']], wnids[d['classes']:]
    rows = []
    for ci, w in enumerate(objs):
        rng = np.random.default_rng([VERSION, ci])
        train = list(rng.permutation(sorted((src/'train'/w).glob('*.JPEG'))))
        valid = list(rng.permutation(sorted((src/'valid'/w).glob('*.JPEG'))))
        if len(train) < d['n_train'] + d['n_dev'] or len(valid) < d['n_valid']:
            raise ValueError(f"{src}/{w}: too few photographs for {d['n_train']} + {d['n_dev']} training and {d['n_valid']} validation scenes")
        for split, photos, pool in (('train', train[d['n_dev']:d['n_dev'] + d['n_train']], 'train'), ('dev', train[:d['n_dev']], 'train'),
                                    ('valid', valid[:d['n_valid']], 'valid')):
            bg_pool = [p for v in bgs for p in sorted((src/pool/v).glob('*.JPEG'))]
            for i, p in enumerate(photos):
                bg = Image.open(bg_pool[int(rng.integers(len(bg_pool)))]).convert('RGB').resize((IMAGE, IMAGE), Image.BILINEAR)
                scene = bg.filter(ImageFilter.GaussianBlur(d['blur']))
                side = int(round(IMAGE*np.sqrt(rng.uniform(*d['obj_frac']))))
                x0, y0 = (int(v) for v in rng.integers(0, IMAGE - side + 1, 2))
                scene.paste(Image.open(p).convert('RGB').resize((side, side), Image.LANCZOS), (x0, y0))
                rel = f"{split}/{w}/{w}_{i:04d}.jpg"
                (dest/rel).parent.mkdir(parents=True, exist_ok=True)
                scene.save(dest/rel, quality=92)
                rows.append(dict(image=rel, label=w, xmin=x0, ymin=y0, xmax=x0 + side, ymax=y0 + side, width=IMAGE, height=IMAGE,
                                 split=split, source=p.name))
    pd.DataFrame(rows).to_csv(dest/'boxes.csv.tmp', index=False); os.replace(dest/'boxes.csv.tmp', dest/'boxes.csv')
    return dest

def setting_root(setting, d, a) -> Path:
    return shapes_root(d) if setting == 'shapes' else photos_root(d, a.photo_root)

def describe(setting, d) -> str:
    n = f"{d['classes']} classes x ({d['n_train']} train + {d['n_dev']} dev + {d['n_valid']} validation) scenes of {IMAGE} px"
    if setting == 'shapes':
        return (f"synthetic shapes (`make_shapes`, one object of {d['obj_frac'][0]:g}-{d['obj_frac'][1]:g} of the area, patterned "
                f"fill, distractor strokes): {n}; train and validation from the seed-0 set, dev from a seed-1 set")
    return (f"Imagenette photographs of the first {d['classes']} classes (by wnid) shrunk to {d['obj_frac'][0]:g}-{d['obj_frac'][1]:g} "
            f"of the scene, pasted at random on a photograph of another class blurred with radius {d['blur']}: {n}; train and dev "
            "scenes from disjoint photographs of imagenette224/train, validation scenes from imagenette224/valid")

# ------------------------------------------------------------------ scoring
def _error(probs, targs) -> float: return float((probs.argmax(1) != targs).float().mean())

def _paths(dl) -> list: return [str(p) for p in dl.dataset.items]

def box_quality(bx, root, gt, margin) -> tuple:
    "Mean share of the object inside the boxes at `margin`, and mean share of the image they keep."
    rec = gt_recall(bx, gt, root, margin)
    c = bx[margin_cols(margin)].to_numpy(float)
    keep = (c[:, 2] - c[:, 0])*(c[:, 3] - c[:, 1])/(bx['width']*bx['height']).to_numpy(float)
    return float(np.nanmean(rec)), float(np.nanmean(keep))

def zoom_scores(learn, dl, root, gt, zoom:dict, grid:dict=None, boxes=None) -> dict:
    """Plain and look-then-zoom errors of `learn` on `dl` (one `zoom_predict(..., with_views=True)` call), after a box pass
    with `box_pass`'s defaults over `dl`'s files (or `boxes`); the boxes' recall and kept area; with `grid`, the errors of
    every (margin, pad_rel, weight) of it."""
    t = time.time()
    margins = sorted({zoom['margin'], *(grid['margin'] if grid else ())})
    if boxes is None: boxes = box_pass(learn, items=_paths(dl), margins=margins, cache=False, progress=False)
    r = dict(t_box=time.time() - t)
    r['recall'], r['kept'] = box_quality(boxes, root, gt, zoom['margin'])
    probs, targs, plain, crop = learn.zoom_predict(dl=dl, boxes=boxes, with_views=True, progress=False, **zoom)
    r.update(plain=_error(plain, targs), zoom=_error(probs, targs), crop=_error(crop, targs))
    if grid:
        r['grid'] = {}
        for m in grid['margin']:
            r['grid'][f"recall_{m:g}"], r['grid'][f"kept_{m:g}"] = box_quality(boxes, root, gt, m)
            for p in grid['pad_rel']:
                _, _, pl, cr = learn.zoom_predict(dl=dl, boxes=boxes, margin=m, pad_rel=p, with_views=True, progress=False)
                for w in grid['weight']: r['grid'][f"{m:g}_{p:g}_{w:g}"] = _error(torch.lerp(pl, cr, w), targs)
    r['t_zoom'] = time.time() - t
    return r

# ------------------------------------------------------------------ one seed
def _quiet(learn, fn, *args, **kwargs):
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return fn(*args, **kwargs)

def run_seed(root, split, seed, tr:dict, zoom:dict, grid:dict=None) -> dict:
    """One seed: fine_tune, the first model's box pass, then from the same weights and optimizer state the attncrop arm
    (`attention_crop`) and the baseline (plain epochs, as many images seen); each model scored on the `split` folder with
    plain and look-then-zoom prediction."""
    gt = pd.read_csv(Path(root)/'boxes.csv')
    dls = ImageDataLoaders.from_folder(root, train='train', valid=split, item_tfms=Resize(SIZE), bs=tr['bs'], num_workers=0, seed=seed)
    set_seed(seed, reproducible=True)
    learn = pretrained_learner(dls, metrics=error_rate)
    r, t = dict(seed=seed, n_train=len(dls.train_ds), n_valid=len(dls.valid_ds)), time.time()
    _quiet(learn, learn.fine_tune, tr['epochs1'], tr['lr'])
    r['t_fine_tune'], t = time.time() - t, time.time()
    print(f"  seed {seed}: fine_tune {r['t_fine_tune']:.0f}s", file=sys.stderr, flush=True)
    start, opt_state = copy.deepcopy(learn.model.state_dict()), copy.deepcopy(learn.opt.state_dict())
    # the first model's boxes of every item (what attention_crop would compute), timed apart and handed over
    boxes = box_pass(learn, margins=box_margins(), cache=False, progress=False)
    r['t_box_pass'] = time.time() - t
    va = boxes[boxes['split']=='valid']
    r['first'] = zoom_scores(learn, dls.valid, root, gt, zoom, boxes=va if zoom['margin'] in box_margins() else None)
    r['train_recall'], r['train_kept'] = box_quality(boxes[boxes['split']=='train'], root, gt, zoom['margin'])
    # attncrop: attention_crop with its defaults (zoom_valid off: its zoom numbers are computed below for every arm alike)
    t = time.time()
    res = _quiet(learn, learn.attention_crop, boxes=boxes, epochs=tr['refit_epochs'], crop_share=tr['crop_share'], cache=False,
                 progress=False, seed=seed, zoom_valid=False)
    r['t_refit'] = time.time() - t
    r['n_mixed'] = len(res.dls.train_ds)
    print(f"  seed {seed}: first model {r['first']['plain']:.3f}, re-fit {r['t_refit']:.0f}s", file=sys.stderr, flush=True)
    learn.dls = dls   # scored on the same uncropped validation DataLoader as the other models
    r['attncrop'] = zoom_scores(learn, dls.valid, root, gt, zoom, grid)
    # baseline: the same start, plain images, as many images seen with the same schedule
    learn.model.load_state_dict(start); learn.opt.load_state_dict(opt_state)
    set_seed(seed)
    t = time.time()
    _quiet(learn, learn.fit_one_cycle, round(tr['refit_epochs']/(1 - tr['crop_share'])))
    r['t_baseline'] = time.time() - t
    r['baseline'] = zoom_scores(learn, dls.valid, root, gt, zoom, grid)
    r['threads'], r['load'] = torch.get_num_threads(), os.getloadavg()[0]
    return r

# ------------------------------------------------------------------ summaries
def _mse(x) -> tuple:
    x = np.asarray(x, float)
    return float(x.mean()), (float(x.std(ddof=1)/np.sqrt(len(x))) if len(x) > 1 else float('nan'))

def summarize(rows) -> dict:
    "Means of the errors, the three paired gains with their standard errors, box quality and times."
    g = lambda f: [f(r) for r in rows]
    s = dict(seeds=len(rows), first_error=np.mean(g(lambda r: r['first']['plain'])), first_zoom_error=np.mean(g(lambda r: r['first']['zoom'])),
             baseline_error=np.mean(g(lambda r: r['baseline']['plain'])), attncrop_error=np.mean(g(lambda r: r['attncrop']['plain'])),
             zoom_baseline_error=np.mean(g(lambda r: r['baseline']['zoom'])), zoom_attncrop_error=np.mean(g(lambda r: r['attncrop']['zoom'])),
             crop_baseline_error=np.mean(g(lambda r: r['baseline']['crop'])), crop_attncrop_error=np.mean(g(lambda r: r['attncrop']['crop'])))
    s['paired_gain'], s['paired_gain_se'] = _mse(g(lambda r: r['baseline']['plain'] - r['attncrop']['plain']))
    s['zoom_gain'], s['zoom_gain_se'] = _mse(g(lambda r: r['baseline']['plain'] - r['baseline']['zoom']))
    s['combined_gain'], s['combined_gain_se'] = _mse(g(lambda r: r['baseline']['plain'] - r['attncrop']['zoom']))
    s['attncrop_zoom_gain'], s['attncrop_zoom_gain_se'] = _mse(g(lambda r: r['attncrop']['plain'] - r['attncrop']['zoom']))
    for m in ('first', 'baseline', 'attncrop'):
        s[f"{m}_recall"], s[f"{m}_kept"] = np.mean(g(lambda r: r[m]['recall'])), np.mean(g(lambda r: r[m]['kept']))
    for k in ('t_fine_tune', 't_box_pass', 't_refit', 't_baseline'): s[k] = np.mean(g(lambda r: r[k]))
    s['t_zoom'] = np.mean(g(lambda r: r['baseline']['t_zoom'] + r['attncrop']['t_zoom'] + r['first']['t_zoom']))
    s['n_valid'], s['n_train'], s['n_mixed'] = rows[0]['n_valid'], rows[0]['n_train'], rows[0]['n_mixed']
    return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in s.items()}

def goals(s:dict, chance:float) -> list:
    "Markdown bullets: issue 32's goals in this setting, met or not."
    rel = s['zoom_gain']/s['baseline_error'] if s['baseline_error'] else float('nan')
    two = lambda g, se: np.isfinite(se) and g >= 2*se
    z = (chance - s['first_error'])/np.sqrt(chance*(1 - chance)/s['n_valid'])   # binomial standard errors below chance
    return [f"* first model: error {s['first_error']:.3f} against chance {chance:.3f}, {z:.1f} binomial standard errors of "
            f"{s['n_valid']} images below it: " + ('clearly better than chance' if z >= 3 else 'NOT clearly better than chance'),
            f"* look-then-zoom cuts plain prediction's error by >= 25% with a gain >= 2 SE (plain-epochs model): relative cut "
            f"{rel:.0%}, gain {s['zoom_gain']:+.3f} ± {s['zoom_gain_se']:.3f}: " + ('**met**' if rel >= 0.25 and two(s['zoom_gain'], s['zoom_gain_se']) else '**not met**'),
            f"* attention_crop + look-then-zoom beats plain epochs + plain prediction by >= 2 SE: {s['combined_gain']:+.3f} ± "
            f"{s['combined_gain_se']:.3f}: " + ('**met**' if two(s['combined_gain'], s['combined_gain_se']) else '**not met**'),
            f"* (the re-fit alone, plain prediction: paired gain {s['paired_gain']:+.3f} ± {s['paired_gain_se']:.3f}: "
            + ('>= 2 SE' if two(s['paired_gain'], s['paired_gain_se']) else 'under 2 SE') + ")"]

COLS = [('first', 'first', 'plain'), ('first zoom', 'first', 'zoom'), ('baseline', 'baseline', 'plain'), ('baseline zoom', 'baseline', 'zoom'),
        ('attncrop', 'attncrop', 'plain'), ('attncrop zoom', 'attncrop', 'zoom'), ('baseline crop only', 'baseline', 'crop'),
        ('attncrop crop only', 'attncrop', 'crop')]
GAINS = [('paired gain', lambda r: r['baseline']['plain'] - r['attncrop']['plain']),
         ('zoom gain', lambda r: r['baseline']['plain'] - r['baseline']['zoom']),
         ('combined gain', lambda r: r['baseline']['plain'] - r['attncrop']['zoom'])]
TIMES = [('fine_tune', 't_fine_tune'), ('box pass', 't_box_pass'), ('re-fit', 't_refit'), ('baseline', 't_baseline')]

def table(rows, s) -> list:
    "Markdown lines: one row per seed (errors, gains, box quality, times), then the means and the gains ± SE."
    head = (['seed'] + [n for n, *_ in COLS] + [n for n, _ in GAINS] + ['first box recall / kept', 'baseline box', 'attncrop box']
            + [f"{n} (s)" for n, _ in TIMES] + ['zoom scoring (s)'])
    out = ['| ' + ' | '.join(head) + ' |', '|' + '---|'*len(head)]
    for r in rows:
        out.append(f"| {r['seed']} | " + ' | '.join(f"{r[m][k]:.3f}" for _, m, k in COLS) + ' | '
                   + ' | '.join(f"{f(r):+.3f}" for _, f in GAINS) + ' | '
                   + ' | '.join(f"{r[m]['recall']:.2f} / {r[m]['kept']:.2f}" for m in ('first', 'baseline', 'attncrop')) + ' | '
                   + ' | '.join(f"{r[k]:.0f}" for _, k in TIMES)
                   + f" | {r['first']['t_zoom'] + r['baseline']['t_zoom'] + r['attncrop']['t_zoom']:.0f} |")
    means = {('first', 'plain'): 'first_error', ('first', 'zoom'): 'first_zoom_error', ('baseline', 'plain'): 'baseline_error',
             ('baseline', 'zoom'): 'zoom_baseline_error', ('attncrop', 'plain'): 'attncrop_error', ('attncrop', 'zoom'): 'zoom_attncrop_error',
             ('baseline', 'crop'): 'crop_baseline_error', ('attncrop', 'crop'): 'crop_attncrop_error'}
    out.append("| **mean** | " + ' | '.join(f"{s[means[m, k]]:.3f}" for _, m, k in COLS) + ' | '
               + ' | '.join(f"**{s[k]:+.3f} ± {s[k + '_se']:.3f}**" for k in ('paired_gain', 'zoom_gain', 'combined_gain')) + ' | '
               + ' | '.join(f"{s[m + '_recall']:.2f} / {s[m + '_kept']:.2f}" for m in ('first', 'baseline', 'attncrop')) + ' | '
               + ' | '.join(f"{s[k]:.0f}" for _, k in TIMES) + f" | {s['t_zoom']:.0f} |")
    return out

def grid_table(rows, grid) -> list:
    "Markdown lines (dev runs): the error of look-then-zoom for each (margin, pad_rel, weight), both arms, mean over the seeds."
    out = []
    for arm in ('baseline', 'attncrop'):
        plain = np.mean([r[arm]['plain'] for r in rows])
        out += [f"**{arm}** (plain prediction {plain:.3f}; rows: margin, pad_rel; columns: weight of the crop view; box recall / "
                "kept at the margin; mean over the seeds)", "",
                '| margin | pad_rel | recall / kept | ' + ' | '.join(f"w {w:g}" for w in grid['weight']) + ' |',
                '|' + '---|'*(3 + len(grid['weight']))]
        for m in grid['margin']:
            for p in grid['pad_rel']:
                rk = f"{np.mean([r[arm]['grid'][f'recall_{m:g}'] for r in rows]):.2f} / {np.mean([r[arm]['grid'][f'kept_{m:g}'] for r in rows]):.2f}"
                out.append(f"| {m:g} | {p:g} | {rk} | " + ' | '.join(
                    f"{np.mean([r[arm]['grid'][f'{m:g}_{p:g}_{w:g}'] for r in rows]):.3f}" for w in grid['weight']) + ' |')
        out.append('')
    return out

# ------------------------------------------------------------------ the run
def config(setting, d, tr, zoom, split, grid) -> dict:
    "Everything a seed's result depends on (its cache key)."
    return dict(setting=setting, data=d, train=tr, zoom=zoom, split=split, grid=grid, image=IMAGE, size=SIZE, version=VERSION, zoom_predict=True)

def main(a):
    H.setup(a)
    tr = {**TRAIN, **{k: getattr(a, k) for k in TRAIN if getattr(a, k, None) is not None}}
    zoom = dict(margin=a.zoom_margin, pad_rel=a.zoom_pad_rel, weight=a.zoom_weight)
    grid = GRID if a.split == 'dev' else None
    if a.quick: tr['bs'] = 4
    stem = 'refit' + ('_dev' if a.split == 'dev' else '') + ('_quick' if a.quick else '')
    if a.out and a.out.endswith('.md'): out_md = Path(a.out)   # the old form: the results file itself
    else: out_md = H.results_dir(a)/f"{stem}.md"
    settings = dict(split=a.split, seeds=None, train=tr, zoom=zoom, grid=grid, image=IMAGE, size=SIZE, version=VERSION, quick=a.quick,
                    settings=a.settings, photo_root=a.photo_root)
    seeds = list(range(a.first_seed, a.first_seed + (1 if a.quick and a.seeds is None else a.seeds or 5)))
    t_start, load0 = time.time(), os.getloadavg()[0]
    res, descs = {}, {}
    for setting in a.settings:
        d = {**SETTINGS[setting], **(QUICK_DATA if a.quick else {})}
        try: root = setting_root(setting, d, a)
        except FileNotFoundError as e:
            print(f"{setting}: skipped: {e}", flush=True); descs[setting] = f"skipped: {e}"; continue
        descs[setting] = describe(setting, d)
        cfg = config(setting, d, tr, zoom, a.split, grid)
        rows = []
        for seed in seeds:
            f = CACHE/'seeds'/f"{setting}_{a.split}_{_key(cfg)}_seed{seed}.json"
            if f.exists() and not a.no_cache and not a.quick: r = json.loads(f.read_text())['result']   # a smoke run always runs
            elif a.report_only: continue
            else:
                r = run_seed(root, a.split, seed, tr, zoom, grid)
                f.parent.mkdir(parents=True, exist_ok=True); write_text_atomic(json.dumps(dict(config=cfg, result=r)), f)
            rows.append(r)
            print(f"{setting} seed {seed}: " + ', '.join(f"{n} {r[m][k]:.3f}" for n, m, k in COLS[:6]) + '; '
                  + ', '.join(f"{n} {f(r):+.3f}" for n, f in GAINS) + '; ' + ', '.join(f"{n} {r[k]:.0f}s" for n, k in TIMES)
                  + f", zoom scoring {r['first']['t_zoom'] + r['baseline']['t_zoom'] + r['attncrop']['t_zoom']:.0f}s", flush=True)
        if rows: res[setting] = (rows, summarize(rows), d)
        settings['seeds'] = seeds
        H.write_results(out_md.stem, dict(partial=True, settings_done=list(res)), write_report(a, tr, zoom, grid, descs, res, seeds, t_start, load0),
                        out_md.parent, settings=settings, seconds=time.time() - t_start)   # after each setting: a cut run keeps its tables
    out = dict(seeds=min((len(v[0]) for v in res.values()), default=0), split=a.split)
    keys = ['baseline_error', 'attncrop_error', 'paired_gain', 'paired_gain_se', 'zoom_baseline_error', 'zoom_attncrop_error', 'zoom_gain',
            'zoom_gain_se', 'combined_gain', 'combined_gain_se', 'first_error', 'first_zoom_error', 'attncrop_zoom_gain', 'attncrop_zoom_gain_se',
            'first_recall', 'first_kept', 'baseline_recall', 'baseline_kept', 'n_valid']
    for setting, prefix in (('shapes', ''), ('photos', 'photo_')):
        s = res.get(setting, (None, None))[1]
        out.update({prefix + k: (None if s is None or not np.isfinite(s[k]) else round(s[k], 4)) for k in keys})
        out[prefix + 'seeds_done'] = 0 if s is None else s['seeds']
    out['seconds'] = round(time.time() - t_start)
    for setting, (rows, s, d) in res.items(): print(f"\n{setting}:\n" + '\n'.join(table(rows, s) + [''] + goals(s, 1 - 1/d['classes'])))
    md = write_report(a, tr, zoom, grid, descs, res, seeds, t_start, load0)
    j, _ = H.write_results(out_md.stem, out, md, out_md.parent, settings=settings, seconds=time.time() - t_start,
                           tables={k: dict(summary=v[1], seeds=v[0]) for k, v in res.items()})
    print(f"results: {j}", file=sys.stderr)
    print(json.dumps(out))

NOTES = Path(__file__).parent/'refit_notes.md'

def write_report(a, tr, zoom, grid, descs, res, seeds, t_start, load0) -> str:
    "The results file's markdown (the harness adds the stamp): protocol, one section per setting (table, goals, the dev grid), then bench/refit_notes.md."
    R = tr['refit_epochs']; B = round(R/(1 - tr['crop_share']))
    lines = [f"# Does the classifier gain from the zoom? `attention_crop` and look-then-zoom prediction ({'dev split' if a.split == 'dev' else 'validation sets'})", "",
             f"Load average {load0:.1f} at the start of this invocation (each seed's load at its end is in its row of the JSON); "
             f"this invocation {time.time() - t_start:.0f} s (seeds read from bench/cache/refit/ cost nothing here). "
             f"Seeds: {', '.join(map(str, seeds))}.", "",
             f"Protocol, per seed: `pretrained_learner(dls, metrics=error_rate)` (EfficientNet-Lite0, ImageNet weights), "
             f"`ImageDataLoaders.from_folder(..., item_tfms=Resize({SIZE}), bs={tr['bs']})` ({IMAGE} px scenes squashed to {SIZE} px), "
             f"`fine_tune({tr['epochs1']}, {tr['lr']:g})` (the *first* model; one frozen epoch first); its `box_pass` (defaults) of every "
             f"item; then from those weights and optimizer state **attncrop**: `learn.attention_crop(boxes=..., epochs={R})` with "
             f"every other argument its default (crop_share {tr['crop_share']:g}: the mixed set is {1/(1 - tr['crop_share']):g}x the plain "
             f"set) and **baseline**: `learn.fit_one_cycle({B})` on the plain images: the same images seen, the same schedule. "
             f"Every model scored on the same uncropped {'dev' if a.split == 'dev' else 'validation'} images with plain prediction "
             f"and with look-then-zoom: `learn.zoom_predict(dl, margin={zoom['margin']:g}, pad_rel={zoom['pad_rel']:g}, "
             f"weight={zoom['weight']:g}, with_views=True)` after a `box_pass` of that model over those images with its defaults "
             "(handed over as `boxes=`, to report the boxes' recall and kept area and to time the pass apart).", "",
             "Columns: errors (share of images wrong); *zoom*: look-then-zoom; *crop only*: the crop view alone (weight 1); "
             "gains per seed: paired = baseline - attncrop (plain prediction), zoom = baseline plain - baseline zoom, combined = "
             f"baseline plain - attncrop zoom; the mean row gives each gain ± its standard error over the seeds. Box recall / kept: "
             f"the model's boxes of the scored images at margin {zoom['margin']:g}, the share of the object inside and of the image "
             "kept (ground truth: the pasted box). Times in seconds under the shared load: fine_tune; the first model's box pass "
             "(train + scored items); the re-fit; the baseline's epochs; the scoring of the three models (box pass of the scored "
             "images + plain and crop predictions).", ""]
    for setting, title in (('shapes', 'Setting 1: small synthetic objects'), ('photos', 'Setting 2: real photographs made small')):
        if setting not in descs: continue
        lines += [f"## {title}", "", descs[setting] + '.', ""]
        if setting not in res: lines += ['(no seed finished)', '']; continue
        rows, s, d = res[setting]
        lines += [f"{s['n_train']} training images ({s['n_mixed']} in the mixed set), {s['n_valid']} scored images, "
                  f"{s['seeds']} seeds; load average at each seed's end: " + ', '.join(f"{r['load']:.1f}" for r in rows)
                  + f" ({rows[0]['threads']} torch thread a process).", ""] + table(rows, s) + ["", "Goals (issue 32):", ""] + goals(s, 1 - 1/d['classes']) + [""]
        if grid and all('grid' in r['baseline'] for r in rows): lines += ["### zoom_predict settings on the dev images", ""] + grid_table(rows, grid)
    if not a.quick and a.split == 'valid' and NOTES.exists(): lines += [NOTES.read_text().rstrip(), ""]
    return '\n'.join(lines)


if __name__ == '__main__':
    p = H.parser(__doc__, 'one seed at a tiny scale (2 classes, a few scenes); results in bench/out/refit_quick.*')
    p.add_argument('--settings', nargs='+', default=['shapes', 'photos'], choices=['shapes', 'photos'])
    p.add_argument('--split', default='valid', choices=['valid', 'dev'], help="score on valid/ (the results) or dev/ (choosing settings, with the zoom grid)")
    p.add_argument('--seeds', type=int, default=None, help='seeds (5; --quick: 1)')
    p.add_argument('--first-seed', type=int, default=0)
    p.add_argument('--epochs1', type=int, default=None, help=f"fine_tune epochs ({TRAIN['epochs1']})")
    p.add_argument('--lr', type=float, default=None, help=f"fine_tune base lr ({TRAIN['lr']:g})")
    p.add_argument('--refit-epochs', dest='refit_epochs', type=int, default=None, help=f"attention_crop epochs ({TRAIN['refit_epochs']})")
    p.add_argument('--bs', type=int, default=None, help=f"batch size ({TRAIN['bs']})")
    p.add_argument('--zoom-margin', type=float, default=ZOOM['margin'], help="zoom_predict's margin (its default)")
    p.add_argument('--zoom-pad-rel', type=float, default=ZOOM['pad_rel'], help="zoom_predict's pad_rel (its default)")
    p.add_argument('--zoom-weight', type=float, default=ZOOM['weight'], help="zoom_predict's weight (its default)")
    p.add_argument('--photo-root', default=str(PHOTO_ROOT), help='imagenette224 folder (train/ and valid/ of <wnid>/*.JPEG)')
    p.add_argument('--no-cache', action='store_true', help='recompute seeds found in bench/cache/refit/seeds/ (--quick never reads them)')
    p.add_argument('--report-only', action='store_true', help='only the seeds already cached: tables and JSON, no training')
    main(p.parse_args())
