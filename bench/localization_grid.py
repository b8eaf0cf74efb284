"""The dev-set search behind bench/localization.py's choices: target layer, method, input size and a map post-processing
(raw, floor at the median or mean, squared) against eps, for the full model. Writes bench/results/localization_grid.csv.

    python bench/localization_grid.py
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent)); sys.argv = sys.argv[:1]
import localization as LB, time, torch, numpy as np, pandas as pd
from fastai_attncrop.metrics import boxes_from_maps, score_boxes, box_accuracy
a = LB.parse()
learn, info = LB.shared_learner(a.train_dir, a.weights)
labels, gt = LB.box_set(a.boxes_dir)
images = list(labels.image)
rows = []
def post(m, kind):
    if kind == 'raw': return m
    if kind == 'floor_median': return (m - m.median()).clamp(min=0)
    if kind == 'floor_mean': return (m - m.mean()).clamp(min=0)
    if kind == 'pow2': return m**2
configs = [('gradcam', None, 224), ('gradcam', None, 128), ('gradcam', None, 160), ('gradcampp', None, 224),
           ('gradcam', '0.6', 224), ('gradcampp', '0.6', 224), ('layercam', '0.6', 224), ('xgradcam', '0.6', 224),
           ('hirescam', '0.6', 224), ('gradcam', '0.5', 224), ('layercam', '0.5', 224), ('gradcam', ['0.6','0.7'], 224),
           ('gradcam', '0.6', 160), ('gradcampp', '0.6', 160)]
for meth, layers, size in configs:
    t0 = time.time()
    maps, _ = LB.model_maps(learn, a.boxes_dir, images, size, meth, None, layers=layers)
    v2 = box_accuracy(maps, gt)['MaxBoxAccV2']
    for kind in ['raw', 'floor_median', 'floor_mean', 'pow2']:
        pm = {k: post(v, kind) for k, v in maps.items()}
        for eps in [0.025, 0.05, 0.1]:
            d = score_boxes(boxes_from_maps(pm, gt, eps), gt)
            rows.append(dict(method=meth, layers=str(layers), size=size, post=kind, eps=eps, v2=v2, recall=d.recall.mean(),
                             iou=d.iou.mean(), area_red=d.area_reduction.mean(), boxacc=d.correct.mean()))
    print(meth, layers, size, f'{time.time()-t0:.0f}s', f'v2={v2:.3f}', flush=True)
df = pd.DataFrame(rows); df.to_csv(Path(__file__).parent/'results'/'localization_grid.csv', index=False)
pd.set_option('display.width', 200); pd.set_option('display.max_rows', 500)
print(df.round(3).to_string())
