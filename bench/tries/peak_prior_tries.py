"""Three more levers of issue 29 tried on dev data and left out of `box_pass` (bench/tries/ is neither packaged nor rendered).

1. `photos_small` of bench/small_objects.py (the 250 dev photographs made small in 448 px scenes, true class): the
   default rule's maps (Grad-CAM at the scene's own 448 px, `cut_maps(floor=0.8, upsample=2)`) re-weighted around their
   peak before the mass cut, scored by the bench's own `score_rule` / `table_row` over `MARGINS`:
   * `gauss, rel r`: the map times a Gaussian centred on its maximum, of standard deviation `r` times the side of the
     map's area above half its maximum (a prior sized by the blob);
   * `gauss, sigma s`: the same with a fixed standard deviation, `s` times the map's side;
   * `peak component, t`: only the 8-connected component of `map > t * max` that holds the maximum;
   * `soft component, a`: the other components multiplied by `a`.
2. The same set, the cost side: `box_pass(max_side=...)` (the scene boxed at a smaller native size) timed beside the
   classic pass (`floor=0, native=False, upsample=1`) and the default (native at 448 px), one call each, cache off.
3. `--demo-dev`: a second demo set (`make_shapes` as `make demo` builds it, seed 1: not the demo's images; 100 training
   and 25 validation images a class, objects 4-12% of a 256 px image), EfficientNet-Lite0 fine-tuned at 192 px
   (`fine_tune(2, 3e-3)`, weights cached under bench/cache/): is a larger input than the image's own size (the image
   upscaled, finer maps) a lever? Maps at 256 (the default: native), 384 and 512 px, predicted class, scored with
   `score_boxes` over `DEMO_MARGINS`.

    PYTHONPATH=. python bench/tries/peak_prior_tries.py [--demo-dev]   # writes bench/tries/results/peak_prior_tries.md
"""
import argparse, datetime, os, platform, sys, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch
from scipy import ndimage
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from small_objects import load_set, score_rule, table_row, MARGINS, MARGIN, MIN_RECALL
from tries_maps import photo_maps
from fastai_attncrop.saliency import saliency_maps
from fastai_attncrop.boxes import cut_maps, mass_box
from fastai_attncrop.crop import margin_eps, margin_cols
from fastai_attncrop.boxpass import native_batches, box_pass

CLASSIC = dict(floor=0., native=False, upsample=1)
DEMO_MARGINS = [0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999]
OUT = Path(__file__).parent/'results'/'peak_prior_tries.md'

def gauss_prior(maps, rel=None, sigma=None):
    "Each map times a Gaussian on its maximum: sd `rel` x the side of its area above half its maximum, or `sigma` x its side."
    out, (h, w) = maps.clone(), maps.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=maps.dtype), torch.arange(w, dtype=maps.dtype), indexing='ij')
    for i, m in enumerate(maps):
        j = int(m.argmax()); cy, cx = j // w, j % w
        sd = sigma*w if rel is None else rel*float((m > 0.5*m.max()).sum())**0.5
        out[i] = m*torch.exp(-((yy - cy)**2 + (xx - cx)**2)/(2*sd**2))
    return out

def peak_component(maps, t=0.05, a=0.):
    "Each map with the components of `map > t*max` other than the maximum's multiplied by `a`."
    out = maps.clone()
    for i, m in enumerate(maps.numpy()):
        if m.max() <= 0: continue
        lbl, _ = ndimage.label(m > t*m.max(), structure=np.ones((3, 3)))
        out[i][torch.from_numpy(lbl != lbl.flat[m.argmax()])] *= a
    return out

def table_of_maps(maps, s, W=448, H=448):
    "`table_row` of the mass-cut boxes of `maps` over `MARGINS` (boxes in the scene's pixels), plus the best IoU."
    bx = s.items[['item']].assign(fallback=None)
    for m in MARGINS:
        b = mass_box(maps, margin_eps(m), size=(W, H)).numpy()
        for c, name in enumerate(margin_cols(m)): bx[name] = b[:, c]
    curve = score_rule(bx, s)
    return {**table_row(curve), 'best_iou': curve.iou.max()}

def photos_part(log):
    s = load_set('photos_small')
    raw = photo_maps(s)
    base = cut_maps(raw, 0.8, 2)
    rows = {'default': table_of_maps(base, s)}
    for r in (1., 1.5, 2., 3.): rows[f'gauss, rel {r}'] = table_of_maps(gauss_prior(base, rel=r), s)
    for sg in (0.15, 0.25): rows[f'gauss, sigma {sg}'] = table_of_maps(gauss_prior(base, sigma=sg), s)
    rows['peak component, t 0.05'] = table_of_maps(peak_component(base, 0.05), s)
    for a in (0.1, 0.3): rows[f'soft component, a {a}'] = table_of_maps(peak_component(base, 0.05, a), s)
    quality = pd.DataFrame(rows).T
    log(quality.round(3).to_string())
    box_pass(s.learn, items=s.items.head(16), cache=False, progress=False)   # warm-up
    cost = {}
    for name, kw in {'classic': CLASSIC, 'default (native 448)': {}, **{f'max_side={m}': dict(max_side=m) for m in (320, 352, 384)}}.items():
        t0 = time.perf_counter()
        bx = box_pass(s.learn, items=s.items, margins=MARGINS, target='label', cache=False, progress=False, **kw)
        dt = time.perf_counter() - t0
        cost[name] = {**table_row(score_rule(bx, s)), 's_per_image': dt/len(s.items)}
    cost = pd.DataFrame(cost).T
    cost['cost_vs_classic'] = cost.s_per_image/cost.loc['classic', 's_per_image']
    log(cost.round(3).to_string())
    return quality, cost

def demo_row(maps, keys, gt, size):
    "The scores of the mass-cut boxes of `maps` (images `keys`, `size` px squares) against `gt` over `DEMO_MARGINS`: at `MARGIN`, the largest area cut at recall >= `MIN_RECALL`, the best IoU."
    from fastai_attncrop.metrics import score_boxes
    res = {}
    for m in DEMO_MARGINS:
        b = mass_box(maps, margin_eps(m), size=(size, size)).numpy()
        p = pd.DataFrame(dict(image=keys, xmin=b[:, 0], ymin=b[:, 1], xmax=b[:, 2], ymax=b[:, 3]))
        res[m] = score_boxes(p, gt)[['recall', 'iou', 'area_reduction']].mean()
    ok = [m for m in DEMO_MARGINS if res[m].recall >= MIN_RECALL]
    best = max(ok, key=lambda m: res[m].area_reduction) if ok else None
    return dict(recall=res[MARGIN].recall, iou=res[MARGIN].iou, area_reduction=res[MARGIN].area_reduction,
                area_at_recall90=res[best].area_reduction if best else np.nan, margin_at_recall90=best,
                best_iou=max(v.iou for v in res.values()))

def demo_dev_learner(size=256):
    "(learner, validation image keys, their true boxes) of the demo-like dev set: built and fine-tuned once, cached under bench/cache/demo_dev."
    from fastai.vision.all import ImageDataLoaders, Resize, accuracy, set_seed
    from fastai_attncrop.data import make_shapes, read_boxes_csv
    from fastai_attncrop.models import pretrained_learner
    cache = Path(__file__).resolve().parents[1]/'cache'/'demo_dev'
    root = make_shapes(cache/'data', n_train=100, n_valid=25, classes=4, size=size, obj_frac=(0.04, 0.12), seed=1)
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(192), bs=32, num_workers=0, seed=1)
    learn, w = pretrained_learner(dls, metrics=accuracy), cache/'learner.pth'
    if w.exists(): learn.model.load_state_dict(torch.load(w))
    else:
        set_seed(1)
        with learn.no_bar(), learn.no_logging(): learn.fine_tune(2, 3e-3)
        torch.save(learn.model.state_dict(), w)
    gt = read_boxes_csv(root/'boxes.csv'); gt = gt[gt.split == 'valid']
    return learn, [Path(p).relative_to(root).as_posix() for p in learn.dls.valid.items], gt

def demo_dev_part(log, size=256):
    from fastai.vision.all import Resize
    learn, keys, gt = demo_dev_learner(size)
    err = 1 - float(learn.validate()[1])
    rows = {}
    for inp in (size, 384, 512):
        tfms = [t for t in learn.dls.valid.after_item.fs if not isinstance(t, Resize)] + [Resize(inp)]
        raw = torch.cat([saliency_maps(learn, xb, 'gradcam').maps.detach().cpu() for xb, _ in learn.dls.valid.new(after_item=tfms, bs=16)]).double()
        for name, maps in {'default': cut_maps(raw, 0.8, 2), 'floor on every map': cut_maps(raw, 0.8, 2, max_area=1.),
                           'gauss, rel 1.5': gauss_prior(cut_maps(raw, 0.8, 2), rel=1.5)}.items():
            rows[(inp, name)] = demo_row(maps, keys, gt, size)
    t = pd.DataFrame(rows).T.rename_axis(['input px', 'rule'])
    log(f"demo-dev learner: validation error {err:.3f}"); log(t.round(3).to_string())
    return err, t

def main(a):
    t0, lines = time.time(), []
    def log(x): print(x, flush=True); lines.append(str(x))
    head = (f"# Issue 29: peak priors, a smaller native size, upscaled inputs (tries, left out)\n\n"
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.node()}, nproc {torch.get_num_threads()} "
            f"torch threads, load average {os.getloadavg()[0]:.1f} at the start; command: `PYTHONPATH=. python bench/tries/peak_prior_tries.py{' --demo-dev' if a.demo_dev else ''}`\n"
            f"See the docstring for the rules. Margin columns at {MARGIN}; `area_at_recall90`: the largest area reduction with "
            f"recall >= {MIN_RECALL} over the margins of the call.\n")
    quality, cost = photos_part(log)
    md = [head, "## Photographs made small (dev, true class): peak priors\n", "```", quality.round(3).to_string(), "```\n",
          "## Photographs made small: the native size's cost (one `box_pass` call each, cache off)\n", "```", cost.round(3).to_string(), "```\n"]
    if a.demo_dev:
        err, t = demo_dev_part(log)
        md += [f"## Demo-like dev set (seed 1), Lite0 fine-tuned at 192 px (validation error {err:.3f}): larger inputs\n", "```", t.round(3).to_string(), "```\n"]
    md.append(f"{time.time() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} at the end (durations under load are not quiet-machine numbers).")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix('.tmp'); tmp.write_text('\n'.join(md)); tmp.replace(OUT)
    print(f"wrote {OUT}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--demo-dev', action='store_true', help='also the demo-like dev set (trains a Lite0 the first time: ~6 min)')
    main(p.parse_args())
