"""One more lever of issue 29 tried on dev data: which score Grad-CAM differentiates (bench/tries/ is neither packaged nor rendered).

Grad-CAM weighs the target layer's channels by the gradient of the class's *logit*. Features every class uses (edges,
texture, "an object is here") get weight from every class, and they fire on the background too: part of the map's
floor. Differentiating a *contrast* instead removes what the classes share:
* `logit`: the class's logit (Grad-CAM as published, the package's method; reproduces the default row);
* `logit - mean`: the logit less the mean logit of all classes (weights `w_c - mean(w)` for a linear head);
* `log-softmax`: the class's log-probability (weights `w_c - sum_k p_k w_k`: the classes the image is confused with);
* `logit - runner-up`: the logit less the largest other logit.
Each map is cut as `box_pass`'s default cuts (`cut_maps(floor=0.8, upsample=2)`, `mass_box` over `MARGINS`), scored on:
1. `photos_small` of bench/small_objects.py (true class, each scene at its own 448 px, as the default frames it);
2. `full` (the dev photographs at 224 px, predicted class; and MaxBoxAccV2 of the cut map);
3. `--demo-dev`: bench/tries/peak_prior_tries.py's second demo set (seed 1, not the demo's images; Lite0 at 192 px,
   maps at the images' 256 px), predicted class.

    PYTHONPATH=. python bench/tries/contrast_tries.py [--demo-dev]   # writes bench/tries/results/contrast_tries.md
"""
import argparse, datetime, os, platform, sys, time, warnings
from pathlib import Path
import pandas as pd, torch, torch.nn as nn, torch.nn.functional as F
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_objects import load_set
from peak_prior_tries import table_of_maps, demo_row, demo_dev_learner
from fastai_attncrop.saliency import saliency_maps, find_target_layer
from fastai_attncrop.boxes import cut_maps
from fastai_attncrop.boxpass import native_batches, load_batches
from fastai_attncrop.metrics import box_accuracy

OUT = Path(__file__).parent/'results'/'contrast_tries.md'

class Contrast(nn.Module):
    "The model with its scores turned into a contrast `how` (see the docstring); the argmax is unchanged."
    def __init__(self, model, how): super().__init__(); self.model, self.how = model, how
    def forward(self, x):
        z = self.model(x)
        if self.how == 'logit - mean': return z - z.mean(1, keepdim=True)
        if self.how == 'log-softmax': return F.log_softmax(z.float(), 1)
        if self.how == 'logit - runner-up':
            top2 = z.topk(2, 1).values
            other = torch.where(z == top2[:, :1], top2[:, 1:], top2[:, :1])   # the largest logit of another class
            return z - other
        return z

HOWS = ('logit', 'logit - mean', 'log-softmax', 'logit - runner-up')

def maps_of(learn, batches, n, how, targets=None):
    "Grad-CAM maps (n, h, w) of `how`'s contrast over `batches` ((positions, xb) pairs), of `targets[pos]` or the predicted class."
    out, model = [None]*n, Contrast(learn.model, how)
    for pos, xb in batches:
        lay = find_target_layer(learn.model, xb)
        t = None if targets is None else [targets[p] for p in pos]
        sm = saliency_maps(model, xb, 'gradcam', target=t, layers=[lay])
        for r in range(len(sm)): out[pos[int(sm.img_idx[r])]] = sm.maps[r].detach().cpu()
    return torch.stack(out).double()

def photos_small_part(log):
    s = load_set('photos_small')
    paths, vocab = s.items.item.tolist(), list(s.learn.dls.vocab)
    tg = [vocab.index(l) for l in s.items.label]
    rows = {}
    for how in HOWS:
        raw = maps_of(s.learn, native_batches(s.learn, paths, bs=32, max_side=448), len(paths), how, tg)
        rows[how] = table_of_maps(cut_maps(raw, 0.8, 2), s)
        log(f"  photos_small {how}: {rows[how]}")
    t = pd.DataFrame(rows).T
    log(t.round(3).to_string()); return t

def full_part(log):
    s = load_set('full')
    paths = s.items.item.tolist()
    root = s.root.resolve()
    keys = [Path(p).resolve().relative_to(root).as_posix() for p in paths]
    rows = {}
    for how in HOWS:
        cm = cut_maps(maps_of(s.learn, load_batches(s.learn, paths, bs=32), len(paths), how), 0.8, 2)
        rows[how] = {**table_of_maps(cm, s, 224, 224), 'MaxBoxAccV2': box_accuracy(dict(zip(keys, cm)), s.gt)['MaxBoxAccV2']}
        log(f"  full {how}: {rows[how]}")
    t = pd.DataFrame(rows).T
    log(t.round(3).to_string()); return t

def demo_dev_part(log, size=256):
    from fastai.vision.all import Resize
    learn, keys, gt = demo_dev_learner(size)
    tfms = [t for t in learn.dls.valid.after_item.fs if not isinstance(t, Resize)] + [Resize(size)]
    rows = {}
    for how in HOWS:
        batches, i = [], 0
        for xb, _ in learn.dls.valid.new(after_item=tfms, bs=16):
            batches.append((list(range(i, i + len(xb))), xb)); i += len(xb)
        maps = cut_maps(maps_of(learn, batches, i, how), 0.8, 2)
        rows[how] = demo_row(maps, keys, gt, size)
        log(f"  demo-dev {how}: {rows[how]}")
    t = pd.DataFrame(rows).T
    log(t.round(3).to_string()); return t

def main(a):
    t0, lines = time.time(), []
    def log(x): print(x, flush=True); lines.append(str(x))
    stamp = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.node()}; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the start; command: "
             f"`PYTHONPATH=. python bench/tries/contrast_tries.py{' --demo-dev' if a.demo_dev else ''}{' --parts ' + ' '.join(a.parts) if a.parts else ''}`")
    body = []
    for part, fn in (('photos_small', photos_small_part), ('full', full_part), ('demo_dev', demo_dev_part)):
        if (a.parts and part not in a.parts) or (part == 'demo_dev' and not a.demo_dev): continue
        log(f"## {part}")
        t = fn(log)
        body += [f"## {part}", '', '```', t.round(3).to_string(), '```', '']
    text = '\n'.join(["# Which score Grad-CAM differentiates (issue 29)", '', stamp, '', __doc__.split('\n\n')[1], '', *body,
                      f"{time.time() - t0:.0f} s"]) + '\n'
    out = OUT if not a.parts else OUT.with_name(f"contrast_tries_{'_'.join(a.parts)}.md")
    out.write_text(text); print(f"wrote {out}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(); p.add_argument('--demo-dev', action='store_true'); p.add_argument('--threads', type=int, default=1)
    p.add_argument('--parts', nargs='*', default=None, choices=['photos_small', 'full', 'demo_dev'])
    a = p.parse_args(); torch.set_num_threads(a.threads); main(a)
