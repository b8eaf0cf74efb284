"""Issue 29, tried and left out: which maps should lose their floor? `remove_floor`'s condition today is relative (less
than `FLOOR_MAX_AREA` = 10% of the upsampled map above half its maximum); here an absolute one: at most K cells of the
raw map above half its maximum. On the dev photographs made small (14x14 maps, true class: area at recall >= 0.90) and
on the full-size dev photographs (7x7 maps, predicted class: MaxBoxAccV2 of the cut maps), from bench/small_objects.py's
sets. Both sets' blobs cover about 10 cells (median), so a count cannot tell a small object from a large one: the share
of the map does. Prints its tables; writes bench/tries/results/floor_condition_tries.md.

    PYTHONPATH=. python bench/tries/floor_condition_tries.py
"""
import sys, warnings, os, datetime; warnings.filterwarnings('ignore')
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np, pandas as pd, torch
from pathlib import Path
import torch.nn.functional as F
from small_objects import load_set, score_rule, table_row, MARGINS
from tries_maps import photo_maps
from fastai_attncrop.boxes import cut_maps, mass_box, remove_floor
from fastai_attncrop.crop import margin_eps, margin_cols
from fastai_attncrop.metrics import box_accuracy, score_boxes
from fastai_attncrop.boxpass import load_batches
from fastai_attncrop.saliency import saliency_maps
torch.set_num_threads(2)
LINES = []
def log(*a, flush=True): print(*a, flush=True); LINES.append(' '.join(map(str, a)))
def up(raw): return F.interpolate(raw[:, None], scale_factor=2, mode='bilinear', align_corners=False)[:, 0]
def cells(raw): return (raw > 0.5*raw.flatten(1).amax(1)[:, None, None]).flatten(1).sum(1)
def cut(raw, K):
    u = up(raw)
    if K is None: return cut_maps(raw, 0.8, 2)
    f = remove_floor(u, 0.8, max_area=1.0)
    small = cells(raw) <= K
    return torch.where(small[:, None, None], f, u)
RULES = {'current': None, **{f'cells<={k}': k for k in (3, 4, 6, 9, 12)}}
# photos small
s = load_set('photos_small'); raw = photo_maps(s)
log('photos_small raw', raw.shape, 'cells quantiles', np.quantile(cells(raw).numpy(), [.1,.5,.9]))
for name, K in RULES.items():
    m = cut(raw, K); bx = s.items[['item']].assign(fallback=None)
    for mg in MARGINS:
        b = mass_box(m, margin_eps(mg), size=(448, 448)).numpy()
        for c, n in enumerate(margin_cols(mg)): bx[n] = b[:, c]
    r = table_row(score_rule(bx, s)); log(f"  {name:10s} r95 {r['recall']:.3f} ar95 {r['area_reduction']:.3f} iou {r['iou']:.3f} area@r90 {r['area_at_recall90']:.3f}", flush=True)
# full photos: maps of the predicted class at 224
f = load_set('full'); root = f.root.resolve()
keys = [Path(p).resolve().relative_to(root).as_posix() for p in f.items.item]
rawf = [None]*len(keys)
for pos, xb in load_batches(f.learn, f.items.item.tolist(), bs=32):
    sm = saliency_maps(f.learn, xb, 'gradcam')
    for r in range(len(sm)): rawf[pos[int(sm.img_idx[r])]] = sm.maps[r].detach().cpu()
rawf = torch.stack(rawf).double()
log('full raw', rawf.shape, 'cells quantiles', np.quantile(cells(rawf).numpy(), [.1,.5,.9]))
for name, K in RULES.items():
    m = cut(rawf, K)
    v2 = box_accuracy({k: m[i] for i, k in enumerate(keys)}, f.gt)['MaxBoxAccV2']
    log(f"  {name:10s} MaxBoxAccV2 {v2:.3f} floored {(cells(rawf) <= (K or -1)).float().mean():.2f}", flush=True)
out = Path(__file__).parent/'results'/'floor_condition_tries.md'
out.write_text(f"# Issue 29: the floor's condition, relative or absolute (tried, left out)\n\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
               f"command: `PYTHONPATH=. python bench/tries/floor_condition_tries.py`\n\n```\n" + "\n".join(LINES) + "\n```\n")
print('wrote', out)
