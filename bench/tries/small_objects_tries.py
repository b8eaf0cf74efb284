"""Levers of issue 29 tried on the dev sets and left out of `box_pass` (bench/tries/ is neither packaged nor rendered).

On `photos_small` (true class) and `full` (predicted class) of bench/small_objects.py, from one Grad-CAM pass per
batch that returns two layers' maps (the body's output, stride 32, the package's layer; and the stride-16 stage,
`0.model.blocks.4` of the EfficientNet-Lite0 body), every rule below is cut the way `box_pass` cuts (`cut_maps`,
`mass_box` at `margin_eps(m)`) over `MARGINS`, and scored by the bench's own `score_rule` / `table_row`:

* `default`: the body's map, `cut_maps(floor=0.8, upsample=2)` (the chosen default); `upsample=1`: without the finer cut;
* `stride-16 alone`, `fused (mean)`: the stride-16 map alone, and averaged with the body's (each min-max normalized and
  upsampled to the finer grid: `saliency_maps(layers=[...])`'s fusion), then the default cut;
* `fused (product)`: the body's map upsampled to the stride-16 grid times the stride-16 map (the fine map gated by the coarse);
* `per-item eps, g`: each map's mass cut at `eps_i = margin_eps(m) * (a_i / 0.05) ** g`, where `a_i` is the share of the
  (floored) map above half its maximum (the map's concentration): g < 0 cuts concentrated maps tighter, diffuse ones wider.

    PYTHONPATH=. python bench/tries/small_objects_tries.py [--limit N]   # writes bench/tries/results/small_objects_tries.md
"""
import argparse, datetime, platform, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from small_objects import load_set, score_rule, table_row, MARGINS, MARGIN
from fastai_attncrop.saliency import saliency_maps, normalize_maps, upsample_maps
from fastai_attncrop.boxes import cut_maps, mass_box
from fastai_attncrop.crop import margin_eps, margin_cols
from fastai_attncrop.boxpass import native_batches, load_batches
from fastai_attncrop.data import image_size

STAGE16 = '0.model.blocks.4'

def two_layer_maps(s, target_label=True, bs=16):
    "Per item (in `s.items` order): the body's map and the stride-16 stage's map, at the box pass's input for the set."
    paths, labels, vocab = s.items.item.tolist(), s.items.label.tolist(), list(s.learn.dls.vocab)
    sizes = [image_size(p) for p in paths]
    native = max(max(wh) for wh in sizes) > 224
    batches = native_batches(s.learn, paths, bs=bs, sizes=sizes, max_side=448, stride=32) if native else load_batches(s.learn, paths, bs=bs)
    body, fine, n = [None]*len(paths), [None]*len(paths), 0
    for pos, xb in batches:
        t = [vocab.index(labels[p]) for p in pos] if target_label else None
        sm = saliency_maps(s.learn, xb, 'gradcam', target=t, layers=['0', STAGE16])
        for r in range(len(sm)):
            i = pos[int(sm.img_idx[r])]
            body[i], fine[i] = sm.layer_maps['0'][r].cpu(), sm.layer_maps[STAGE16][r].cpu()
        n += len(pos); print(f"  maps {n}/{len(paths)}", end='\r', flush=True)
    return body, fine, sizes

def table_of(boxes_fn, s, sizes):
    "Score boxes `boxes_fn(i, eps)` -> (4,) in the image's pixels over MARGINS."
    bx = s.items[['item']].assign(fallback=None)
    for m in MARGINS:
        xy = np.stack([boxes_fn(i, margin_eps(m)) for i in range(len(bx))])
        for c, name in enumerate(margin_cols(m)): bx[name] = xy[:, c]
    return table_row(score_rule(bx, s))

def rules(body, fine, sizes):
    def cut(mp, i, eps, up=2): return mass_box(cut_maps(mp, 0.8, up), eps, size=tuple(sizes[i])).double().numpy()
    def fused(i):
        b, f = normalize_maps(body[i][None]), normalize_maps(fine[i][None])
        return (upsample_maps(b, f.shape[-2:]) + f)[0] / 2
    def prod(i):
        b, f = normalize_maps(body[i][None]), normalize_maps(fine[i][None])
        return (upsample_maps(b, f.shape[-2:]) * f)[0]
    def conc(i):
        c = cut_maps(body[i], 0.8, 2)
        return float((c > 0.5*c.max()).float().mean()) if c.max() > 0 else 1.
    a = [conc(i) for i in range(len(body))]
    out = {'default': lambda i, e: cut(body[i], i, e), 'upsample=1': lambda i, e: cut(body[i], i, e, 1),
           'stride-16 alone': lambda i, e: cut(fine[i], i, e), 'fused (mean)': lambda i, e: cut(fused(i), i, e),
           'fused (product)': lambda i, e: cut(prod(i), i, e)}
    for g in (-1., -0.5, 0.5):
        out[f'per-item eps, g={g:+.1f}'] = lambda i, e, g=g: cut(body[i], i, float(np.clip(e*(a[i]/0.05)**g, 1e-4, 0.45)))
    return out

def main(a):
    t0, lines = time.time(), []
    stamp = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.node()}; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; command: `PYTHONPATH=. python bench/tries/small_objects_tries.py"
             + (f" --limit {a.limit}`" if a.limit else '`'))
    lines += ["# Levers of issue 29 tried and left out of `box_pass`", '', stamp, '', __doc__.split('\n\n')[1], '']
    for name, label in (('photos_small', True), ('full', False)):
        s = load_set(name, limit=a.limit)
        body, fine, sizes = two_layer_maps(s, label)
        tab = pd.DataFrame({r: table_of(f, s, sizes) for r, f in rules(body, fine, sizes).items()}).T
        txt = tab[['recall', 'precision', 'iou', 'area_reduction', 'area_at_recall90', 'margin_at_recall90', 'n']].to_string(float_format='%.3f')
        lines += [f"## {name} ({'true' if label else 'predicted'} class), margin {MARGIN} and the largest area cut at recall >= 0.90", '', '```', txt, '```', '']
        print(f"\n{name}\n{txt}", flush=True)
    lines.append(f"{time.time() - t0:.0f} s")
    out = Path(__file__).parent/'results'/('small_objects_tries.md' if not a.limit else f'small_objects_tries_limit{a.limit}.md')
    out.write_text('\n'.join(lines) + '\n'); print(f"wrote {out}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(); p.add_argument('--limit', type=int, default=None); p.add_argument('--threads', type=int, default=1)
    a = p.parse_args(); torch.set_num_threads(a.threads); main(a)
