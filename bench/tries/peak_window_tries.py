"""Issue 29: the map's peak as the anchor of the box (tried on dev data, left out of `box_pass`; bench/tries/ is neither
packaged nor rendered).

On `photos_small` of bench/small_objects.py (the 250 dev photographs made small in 448 px scenes, true class), from the
default rule's maps (Grad-CAM at the scene's own 448 px, `cut_maps(floor=0.8, upsample=2)`), scored by the bench's own
`score_rule` / `table_row` over `MARGINS` (plus the best IoU over the margins):
* `peak box f`: no mass cut: a square of side `f` x the scene's side centred on the map's maximum (inside the scene),
  the same box at every margin: how much the peak alone says;
* `peak window f[, soft a]`: the mass cut of the map outside that square set to 0 (or multiplied by `a`);
* `second look, window f, input n`: the square cut from the file (`ZoomItem`) and explained again at an `n` px input
  (`n` = 448: the window upscaled), its map cut as the default cuts, its boxes mapped back to the scene.
The peak windows also on bench/tries/peak_prior_tries.py's demo-like dev set (8x8 maps of 256 px images, predicted class);
`concentrated maps only`: the window applied only to the maps whose floor the default removes (`FLOOR_MAX_AREA`), and so
also scored on the full-size dev photographs (MaxBoxAccV2 of the windowed map).

    PYTHONPATH=. python bench/tries/peak_window_tries.py    # writes bench/tries/results/peak_window_tries.md
"""
import datetime, os, platform, sys, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch
from fastai.vision.all import Resize
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from small_objects import load_set, score_rule, table_row, MARGINS
from fastai_attncrop.metrics import box_accuracy
from tries_maps import photo_maps
from fastai_attncrop.saliency import saliency_maps
from fastai_attncrop.boxes import cut_maps, mass_box, FLOOR_MAX_AREA
from fastai_attncrop.crop import margin_eps, margin_cols
from fastai_attncrop.boxpass import ZoomItem, load_batches, frame_tfms

S = 448   # the scenes' side
COND = 'peak window 0.7, soft 0.1, concentrated maps only'   # the window where the floor is removed (`FLOOR_MAX_AREA`)
OUT = Path(__file__).parent/'results'/'peak_window_tries.md'

def scored(s, boxes_by_margin):
    "`table_row` and the best IoU of boxes {margin: (n, 4) scene pixels}."
    bx = s.items[['item']].assign(fallback=None)
    for m, b in boxes_by_margin.items():
        for c, name in enumerate(margin_cols(m)): bx[name] = b[:, c]
    curve = score_rule(bx, s, margins=list(boxes_by_margin))
    return {**table_row(curve), 'best_iou': curve.iou.max()}

def cut_boxes(maps, side=S, offset=None):
    "{margin: boxes} of the mass cut of `maps` in a `side` px square, shifted by `offset` (n, 2)."
    off = np.zeros((len(maps), 2)) if offset is None else offset
    return {m: mass_box(maps, margin_eps(m), size=(side, side)).numpy() + np.concatenate([off, off], 1) for m in MARGINS}

def peak_squares(maps, f, S=S):
    "Top-left corners (n, 2) in scene pixels of the squares of side `f*S` centred on each map's maximum, inside the `S` px scene."
    h, w = maps.shape[-2:]
    i = maps.flatten(1).argmax(1)
    c = np.stack([((i % w).double() + 0.5).numpy()*S/w, ((i // w).double() + 0.5).numpy()*S/h], 1)
    return np.clip(np.round(c - f*S/2), 0, S - round(f*S))

def windowed(maps, corners, f, soft=0., S=S):
    "`maps` (of `S` px scenes) with the cells outside each square (`corners`, side `f*S`) multiplied by `soft`."
    h, w = maps.shape[-2:]
    xs, ys = (torch.arange(w).double() + 0.5)*S/w, (torch.arange(h).double() + 0.5)*S/h
    x0, y0 = (torch.as_tensor(corners[:, k]).double()[:, None] for k in (0, 1))
    inx, iny = (xs[None] >= x0) & (xs[None] <= x0 + f*S), (ys[None] >= y0) & (ys[None] <= y0 + f*S)
    inside = iny[:, :, None] & inx[:, None, :]
    return torch.where(inside, maps, maps*soft)

def only_concentrated(maps, new):
    "`new` where a map is concentrated (less than `FLOOR_MAX_AREA` of it above half its maximum: the floor's condition), else `maps`."
    small = (maps > 0.5*maps.flatten(1).amax(1)[:, None, None]).flatten(1).double().mean(1) < FLOOR_MAX_AREA
    return torch.where(small[:, None, None], new, maps)

def second_look(s, corners, f, inp, bs=32):
    "The default cut's boxes of a second Grad-CAM look through each square at an `inp` px input, in scene pixels."
    side, vocab = int(round(f*S)), list(s.learn.dls.vocab)
    items = [ZoomItem(p, (int(x), int(y), int(x) + side, int(y) + side)) for p, (x, y) in zip(s.items.item, corners)]
    labels = [vocab.index(l) for l in s.items.label]
    maps = [None]*len(items)
    for pos, xb in load_batches(s.learn, items, bs=bs, item_tfms=frame_tfms(s.learn, Resize(inp))):
        sm = saliency_maps(s.learn, xb, 'gradcam', target=[labels[p] for p in pos])
        for r in range(len(sm)): maps[pos[int(sm.img_idx[r])]] = sm.maps[r].detach().cpu()
    return cut_boxes(cut_maps(torch.stack(maps).double(), 0.8, 2), side, corners)

def demo_dev_part(size=256):
    "The default maps of the demo-like dev set (bench/tries/peak_prior_tries.py's, predicted class) with the peak windows."
    from peak_prior_tries import demo_dev_learner, demo_row
    learn, keys, gt = demo_dev_learner(size)
    tfms = [t for t in learn.dls.valid.after_item.fs if not isinstance(t, Resize)] + [Resize(size)]
    raw = torch.cat([saliency_maps(learn, xb, 'gradcam').maps.detach().cpu() for xb, _ in learn.dls.valid.new(after_item=tfms, bs=16)]).double()
    base = cut_maps(raw, 0.8, 2)
    rows = {'default': demo_row(base, keys, gt, size)}
    for f, soft in ((0.5, 0.), (0.7, 0.), (0.5, 0.1), (0.7, 0.1)):
        rows[f"peak window {f}{', soft ' + str(soft) if soft else ''}"] = demo_row(windowed(base, peak_squares(base, f, size), f, soft, size), keys, gt, size)
    rows[COND] = demo_row(only_concentrated(base, windowed(base, peak_squares(base, 0.7, size), 0.7, 0.1, size)), keys, gt, size)
    return pd.DataFrame(rows).T

def full_part():
    "The full-size dev photographs (224 px, predicted class): the default against the conditioned peak window, with MaxBoxAccV2."
    s = load_set('full')
    paths, root = s.items.item.tolist(), s.root.resolve()
    keys = [Path(p).resolve().relative_to(root).as_posix() for p in paths]
    maps = [None]*len(paths)
    for pos, xb in load_batches(s.learn, paths, bs=32):
        sm = saliency_maps(s.learn, xb, 'gradcam')
        for r in range(len(sm)): maps[pos[int(sm.img_idx[r])]] = sm.maps[r].detach().cpu()
    base = cut_maps(torch.stack(maps).double(), 0.8, 2)
    rows = {}
    for name, m in (('default', base), (COND, only_concentrated(base, windowed(base, peak_squares(base, 0.7, 224), 0.7, 0.1, 224)))):
        bx = s.items[['item']].assign(fallback=None)
        for mg, b in cut_boxes(m, 224).items():
            for c, col in enumerate(margin_cols(mg)): bx[col] = b[:, c]
        curve = score_rule(bx, s)
        rows[name] = {**table_row(curve), 'best_iou': curve.iou.max(), 'MaxBoxAccV2': box_accuracy(dict(zip(keys, m)), s.gt)['MaxBoxAccV2'],
                      'share windowed': float((m != base).flatten(1).any(1).double().mean())}
    return pd.DataFrame(rows).T

def main():
    t0 = time.time()
    s = load_set('photos_small')
    base = cut_maps(photo_maps(s), 0.8, 2)
    rows = {'default': scored(s, cut_boxes(base))}
    for f in (0.4, 0.5, 0.6):
        c = peak_squares(base, f)
        rows[f'peak box {f}'] = scored(s, {m: np.concatenate([c, c + round(f*S)], 1) for m in MARGINS})
    for f, soft in ((0.5, 0.), (0.7, 0.), (0.5, 0.1), (0.7, 0.1)):
        rows[f"peak window {f}{', soft ' + str(soft) if soft else ''}"] = scored(s, cut_boxes(windowed(base, peak_squares(base, f), f, soft)))
    rows[COND] = scored(s, cut_boxes(only_concentrated(base, windowed(base, peak_squares(base, 0.7), 0.7, 0.1))))
    for f, inp in ((0.5, 224), (0.5, 448), (0.7, 448)):
        rows[f'second look, window {f}, input {inp}'] = scored(s, second_look(s, peak_squares(base, f), f, inp))
        print(f, inp, rows[f'second look, window {f}, input {inp}'], flush=True)
    t = pd.DataFrame(rows).T
    txt = t.round(3).to_string()
    print(txt)
    demo = demo_dev_part().round(3).to_string()
    print(demo)
    full = full_part().round(3).to_string()
    print(full)
    stamp = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.node()}; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; command: `PYTHONPATH=. python bench/tries/peak_window_tries.py`")
    OUT.write_text('\n'.join(["# Issue 29: the map's peak as the box's anchor (tries, left out)", '', stamp, '',
                              'See the docstring for the rules. Margin columns at 0.95; `area_at_recall90`: the largest area reduction '
                              'with recall >= 0.9 over the margins.', '', '```', txt, '```', '',
                              "The demo-like dev set (peak_prior_tries.py's, maps at the images' 256 px, predicted class):", '', '```', demo, '```', '',
                              "The full-size dev photographs (224 px, predicted class; `share windowed`: the maps the condition lets the window change):",
                              '', '```', full, '```', '', f"{time.time() - t0:.0f} s"]) + '\n')
    print(f"wrote {OUT}")

if __name__ == '__main__':
    torch.set_num_threads(1); main()
