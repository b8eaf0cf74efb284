"""What was tried on the dev box set to make the full model's maps localize better, beyond bench/localization_grid.py
(target layer, method, input size, post-processing). Prints MaxBoxAccV2 (and box-set accuracy) per try; the numbers
are in bench/results/localization_tries.txt.

* tta: Grad-CAM maps averaged over a horizontal flip, then also over input sizes 160/224/288;
* dilated: the full model's last stage run at stride 16 (stride 1, dilation 2; same weights, no training);
* prior: the Grad-CAM / Grad-CAM++ map (min-max normalized) times or plus the centre map, against the centre map alone;
* agnostic: class-agnostic maps of the full model's last stage and of layer3, at 224 and 128 px: the channels' sum
  (how strongly the features fire) and the first principal direction of the centred activations (as Eigen-CAM,
  Muhammad & Yeasin 2020, sign chosen so the map is mostly positive), against Grad-CAM; both registered here
  with `register_method`, as a user would add a method;
* finetune: the full model with a dilated last stage and a CAM head (average pool + linear) fine-tuned on
  `--train-dir` at 128 px (1 epoch head only, then 4 epochs all layers; 31 min on 2 cores), cached in
  bench/cache/localization/full_dilated_cam.pth; MaxBoxAccV2 after every epoch when it trains.

* ddt: `DDT` maps (fitted by `localization.ddt_fit` on 150 training images a class) at 224/160/128 px, with and without the
  dilated last stage, one direction per class (the explained class: predicted) or one for all, alone and times the
  centre map;
* ddt_fusion: the per-class DDT map of the dilated model at 160 px (min-max normalized) plus 0.5 or 1 x its Grad-CAM
  or Grad-CAM++ map, and plus the DDT map of layer3 or layer2 (the body's modules 6 and 5), alone and times the centre map;
* finetune_ddt: the full model (fastai head kept) with its last stage dilated, fine-tuned on `--train-dir` at 128 px
  for 3 epochs (all layers, one cycle, lr 3e-4..3e-3), once plain and once with CutMix (Yun et al. 2019, which
  reports better CAM localization); then DDT (160 px) alone and times the centre map, and Grad-CAM; each arm
  cached in bench/cache/localization/full_dilated_ft_{plain,cutmix}.pth;
* ddt_n: the dilated model's DDT at 160 px fitted on 25, 50, 150 or all 500 training images a class;
* ddt_tta: the same DDT maps (dilated model, fitted at each size) averaged over a horizontal flip, then also over the
  input sizes 128/160/192, alone and times the centre map.

    python bench/localization_tries.py [tta dilated prior agnostic finetune ddt ddt_fusion ddt_tta finetune_ddt ddt_n]
"""
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
tries = [t for t in sys.argv[1:] if not t.startswith('-')] or ['tta', 'dilated', 'prior', 'agnostic', 'finetune', 'ddt', 'ddt_fusion', 'ddt_tta', 'finetune_ddt', 'ddt_n']
sys.argv = sys.argv[:1]
import localization as LB, torch, numpy as np, torch.nn as nn
from fastai.vision.all import Learner, Callback, accuracy, model_meta, resnet18, set_seed
from fastai_attncrop.metrics import box_accuracy
from fastai_attncrop.saliency import register_method

a = LB.parse()
labels, gt = LB.box_set(a.boxes_dir)
images, wnids = list(labels.image), list(labels.wnid)
learn, _ = LB.shared_learner(a.train_dir, a.weights)
if learn is None: raise SystemExit(f"{a.weights} is not there: these tries start from the shared full model")

def run(learn, size, method='gradcam', flip=False, layers=None):
    "{image: map} and the box-set accuracy of `learn` at input `size`."
    maps, info = LB.model_maps(learn, a.boxes_dir, images, size, method, layers=layers, flip=flip)
    vocab = list(learn.dls.vocab)
    return maps, round(float(np.mean([vocab[info[i][0]] == w for i, w in zip(images, wnids)])), 3)

unit = LB.unit_map
def v2(maps): return round(box_accuracy(maps, gt)['MaxBoxAccV2'], 4)
dilate_last_stage = LB.dilate_last_stage

centre = LB.centre_maps(['x'])['x']
print('centre map', v2({i: centre for i in images}), flush=True)
if 'tta' in tries:
    m, acc = run(learn, 224); mf, accf = run(learn, 224, flip=True)
    print('Grad-CAM 224', acc, v2(m), '| flipped', accf, v2(mf), flush=True)
    avg = {k: unit(m[k]) + unit(mf[k]) for k in m}
    print('flip TTA', v2(avg), flush=True)
    for s in (160, 288):
        ms, acc = run(learn, s); print('Grad-CAM', s, acc, v2(ms), flush=True)
        avg = {k: avg[k] + unit(ms[k]) for k in avg}
    print('flip + sizes 160/224/288 TTA', v2(avg), flush=True)
if 'prior' in tries:
    for meth in ('gradcam', 'gradcampp'):
        m = {k: unit(v) for k, v in run(learn, 224, meth)[0].items()}
        print(meth, 'alone', v2(m), ' '.join(f'| x centre^{g}: {v2({k: v*centre**g for k, v in m.items()})}' for g in (0.5, 1, 2)),
              ' '.join(f'| + {al} x centre: {v2({k: v + al*centre for k, v in m.items()})}' for al in (0.5, 1, 2)), flush=True)
if 'dilated' in tries:
    d, _ = LB.shared_learner(a.train_dir, a.weights); dilate_last_stage(d.model[0])
    for s in (128, 224):
        m, acc = run(d, s); print('dilated, no training', s, 'px: acc', acc, 'v2', v2(m), flush=True)
if 'agnostic' in tries:
    @register_method('actsum')
    def actsum_weights(acts, grads):
        "Every channel weighted 1: where the features fire, whatever the class."
        return torch.ones_like(acts[:, :, :1, :1])
    @register_method('eigen')
    def eigen_weights(acts, grads):
        "The first principal direction of each image's centred activations (C x hw), signed so that the map sums >= 0."
        X = acts.flatten(2)                                                    # (N, C, hw)
        U = torch.linalg.svd(X - X.mean(2, keepdim=True), full_matrices=False)[0][..., 0]   # (N, C)
        U = U * torch.where(torch.einsum('nc,nch->n', U, X) < 0, -1., 1.)[:, None]
        return U[..., None, None]
    for name, layer in (('layer4', None), ('layer3', learn.model[0][6])):
        for s in (224, 128):
            print(name, s, 'px', ' '.join(f'| {m} {v2(run(learn, s, m, layers=layer)[0])}' for m in ('actsum', 'eigen', 'gradcam')), flush=True)
if 'finetune' in tries:
    dls = LB.train_dls(a.train_dir, 128, 64)
    ft = Learner(dls, LB.shared_learner(a.train_dir, a.weights)[0].model, metrics=accuracy, splitter=model_meta[resnet18]['split'])
    dilate_last_stage(ft.model[0])
    ft.model[1] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, dls.c))
    def report(tag):
        parts = []
        for s in (128, 224):
            m, acc = run(ft, s); parts.append(f'| {s} px: acc {acc} v2 {v2(m)}')
        print(tag, *parts, flush=True)
    pth = LB.CACHE/'full_dilated_cam.pth'
    if pth.exists(): ft.model.load_state_dict(torch.load(pth, map_location='cpu')); report('fine-tuned (cached)')
    else:
        class Report(Callback):
            order = 100
            def after_epoch(self): report(f'epoch {self.epoch}')
        t0 = time.time()
        ft.freeze(); ft.fit_one_cycle(1, 1e-2, cbs=Report())
        ft.unfreeze(); ft.fit_one_cycle(4, slice(3e-4, 3e-3), cbs=Report())
        print(f'fine-tuned in {time.time() - t0:.0f} s', flush=True)
        LB.CACHE.mkdir(parents=True, exist_ok=True)
        tmp = pth.with_suffix('.tmp'); torch.save(ft.model.state_dict(), tmp); tmp.replace(pth)
if 'ddt' in tries:
    for size, dilated in ((224, False), (160, False), (128, False), (224, True), (160, True), (128, True)):
        d, _ = LB.shared_learner(a.train_dir, a.weights)
        if dilated: dilate_last_stage(d.model[0])
        parts = []
        for per_class in (True, False):
            m, acc = run(d, size, LB.ddt_fit(d, a.train_dir, size, per_class=per_class))
            parts.append(f"| {'per class' if per_class else 'one direction'} {v2(m)} x centre {v2(LB.times_centre(m))}")
        print(f"DDT {size} px{' dilated' if dilated else ''}: acc {acc}", *parts, flush=True)
if 'ddt_fusion' in tries:
    d, _ = LB.shared_learner(a.train_dir, a.weights); dilate_last_stage(d.model[0])
    m4 = run(d, 160, LB.ddt_fit(d, a.train_dir, 160))[0]
    def fused(others, w): return {k: unit(m4[k]) + w*unit(others[k]) for k in m4}
    for meth in ('gradcam', 'gradcampp'):
        o = run(d, 160, meth)[0]
        print(f'DDT 160 px dilated {v2(m4)} | {meth} {v2(o)}', *[f'| DDT + {w} x {meth} {v2(fused(o, w))} x centre {v2(LB.times_centre(fused(o, w)))}'
                                                                  for w in (0.5, 1)], flush=True)
    for layer in ('0.6', '0.5'):
        o = run(d, 160, LB.ddt_fit(d, a.train_dir, 160, layers=layer))[0]
        print(f'DDT of {layer} {v2(o)} | + DDT of layer4 {v2(fused(o, 1))} x centre {v2(LB.times_centre(fused(o, 1)))}', flush=True)
if 'ddt_tta' in tries:
    d, _ = LB.shared_learner(a.train_dir, a.weights); dilate_last_stage(d.model[0])
    avg = None
    for size in (160, 128, 192):
        f = LB.ddt_fit(d, a.train_dir, size)
        m, mf = run(d, size, f)[0], run(d, size, f, flip=True)[0]
        both = {k: unit(m[k]) + unit(mf[k]) for k in m}
        avg = both if avg is None else {k: avg[k] + both[k] for k in avg}
        print(f'DDT {size} px dilated {v2(m)} | flipped {v2(mf)} | flip TTA {v2(both)} x centre {v2(LB.times_centre(both))}'
              f' | sizes so far {v2(avg)} x centre {v2(LB.times_centre(avg))}', flush=True)
if 'finetune_ddt' in tries:
    from fastai.callback.mixup import CutMix
    for arm in ('plain', 'cutmix'):
        dls = LB.train_dls(a.train_dir, 128, 64)
        ft = Learner(dls, LB.shared_learner(a.train_dir, a.weights)[0].model, metrics=accuracy, splitter=model_meta[resnet18]['split'])
        dilate_last_stage(ft.model[0])
        pth = LB.CACHE/f'full_dilated_ft_{arm}.pth'
        if pth.exists(): ft.model.load_state_dict(torch.load(pth, map_location='cpu'))
        else:
            t0 = time.time(); set_seed(0, reproducible=True)
            ft.unfreeze(); ft.fit_one_cycle(3, slice(3e-4, 3e-3), cbs=[CutMix(1.)] if arm == 'cutmix' else [])
            print(f'{arm}: fine-tuned in {time.time() - t0:.0f} s', flush=True)
            LB.CACHE.mkdir(parents=True, exist_ok=True)
            tmp = pth.with_suffix('.tmp'); torch.save(ft.model.state_dict(), tmp); tmp.replace(pth)
        m, acc = run(ft, 160, LB.ddt_fit(ft, a.train_dir, 160))
        g = run(ft, 160)[0]
        print(f'{arm}: box-set accuracy at 160 px {acc} | DDT {v2(m)} x centre {v2(LB.times_centre(m))} | Grad-CAM {v2(g)}', flush=True)
if 'ddt_n' in tries:
    d, _ = LB.shared_learner(a.train_dir, a.weights); dilate_last_stage(d.model[0])
    for n in (25, 50, 150, 500):
        m = run(d, 160, LB.ddt_fit(d, a.train_dir, 160, n=n))[0]
        print(f'DDT 160 px dilated, fitted on {n} images a class: {v2(m)} x centre {v2(LB.times_centre(m))}', flush=True)
