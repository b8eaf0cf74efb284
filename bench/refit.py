"""Benchmark (not a timed test): does re-fitting on attention crops help on small objects?

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

    python bench/refit.py                                   # full scale
    python bench/refit.py --n-train 60 --epochs 6 --seeds 3 # reduced scale
    python bench/refit.py --method ddt                      # boxes from a DDT fitted on the first model's training set
    python bench/refit.py --design continue --epochs 30 --epochs1 20
    python bench/refit.py --design continue --epochs 30 --epochs1 20 --image-size 128 --crop-valid \
        --method gradcampp --margins 0.8 0.6 --valid-margin 0.6 --aspect 1
    python bench/refit.py --design continue --epochs 30 --epochs1 20 --image-size 128 --pretrain 15 # from a pretrained body
    python bench/refit.py --epochs 30 --epochs1 10 --lr2 3e-3 --image-size 128 --pretrain 15 --crop-valid \
        --method gradcampp --margins 0.8 0.6 --valid-margin 0.6 --aspect 1 --seeds 12  # README's pretrained split run"""
import argparse, json, tempfile, time, warnings
from functools import partial
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np, pandas as pd, torch
from fastai.vision.all import ImageDataLoaders, Resize, vision_learner, accuracy, set_seed
from fastai_attncrop.data import make_shapes, SHAPES
from fastai_attncrop.models import small_cnn
from fastai_attncrop.crop import margin_cols, gt_recall
from fastai_attncrop.learner import box_pass, box_margins
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

def box_quality(boxes, root, margin):
    "Mean share of the object inside the validation boxes at `margin`, and mean share of the image they keep."
    va = boxes[boxes['split']=='valid']
    rec = gt_recall(va, pd.read_csv(Path(root)/'boxes.csv'), root, margin)
    c = va[margin_cols(margin)].to_numpy(float)
    keep = (c[:, 2]-c[:, 0])*(c[:, 3]-c[:, 1])/(va['width']*va['height']).to_numpy(float)
    return float(np.nanmean(rec)), float(np.nanmean(keep))

def error(learn, dl=None):
    "Validation error of `learn` on `dl` (default: its own validation set)."
    with learn.no_bar(): return 1 - float(learn.validate(dl=dl)[1])

def main(a):
    if a.threads: torch.set_num_threads(a.threads)
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
        q = box_quality(boxes, root, vm)
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

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-train', type=int, default=300, help='training images per class')
    p.add_argument('--n-valid', type=int, default=50, help='validation images per class')
    p.add_argument('--classes', type=int, default=4)
    p.add_argument('--size', type=int, default=64, help='network input size (images are squashed to it)')
    p.add_argument('--image-size', type=int, default=None, help='size of the generated images (default: --size); crops '
                   'of larger images keep more of the object\'s pixels than the squashed whole image')
    p.add_argument('--obj-frac', type=float, nargs=2, default=[0.05, 0.1])
    p.add_argument('--epochs', type=int, default=10, help='budget E, in epochs over the plain training set')
    p.add_argument('--epochs1', type=int, default=None, help='epochs before the re-fit (default E // 2)')
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--lr2', type=float, default=1e-3, help='learning rate of the re-fit')
    p.add_argument('--margins', nargs='+', default=['0.95', '0.8', '0.6'], help="margins, or 'adaptive'")
    p.add_argument('--crop-share', type=float, default=0.5)
    p.add_argument('--crop-valid', action='store_true')
    p.add_argument('--valid-margin', type=float, default=None, help='margin of the validation crops (default: the largest margin)')
    p.add_argument('--aspect', type=float, default=None, help='grow the boxes to this width / height before cropping (1: square, as Resize(size) crops)')
    p.add_argument('--method', default='gradcam', help="saliency method of the boxes ('ddt': a DDT fitted on the first model's training set)")
    p.add_argument('--target', default='pred', choices=['pred', 'label'],
                   help="class the boxes explain: the model's prediction, or each item's known label")
    p.add_argument('--boxes', default='saliency', choices=['saliency', 'gt'],
                   help="saliency: the model's boxes; gt: every margin's box is the ground-truth box (perfect localization, an upper bound)")
    p.add_argument('--design', default='split', choices=['split', 'continue'],
                   help="split: baseline trains E epochs from scratch; continue: both arms go on from one shared E1-epoch model")
    p.add_argument('--pretrain', type=int, default=0, help='epochs of pretraining the body on the other shapes, with larger '
                   'objects (0: from scratch); both arms start from it, as a user fine-tunes pretrained weights')
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--first-seed', type=int, default=0, help='seeds run are first_seed, first_seed + 1, ...')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    main(p.parse_args())
