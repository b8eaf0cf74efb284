"""What was tried on the dev box set to make the full model's maps localize better, beyond bench/localization_grid.py
(target layer, method, input size, post-processing). Prints MaxBoxAccV2 (and box-set accuracy) per try; the numbers
are in bench/tries/results/localization_tries.txt (an exploration kept out of the product path: bench/tries/ is
neither packaged nor rendered).

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
  input sizes 128/160/192, alone and times the centre map;
* zoom: the attention crop applied to localization itself: the box of the DDT x centre map (dilated, 160 px) at eps 1%
  or 2.5% (padded by 0 or 10% of its sides) is cropped, resized to 160 px, and its own DDT map pasted back (zero
  outside the crop); alone, times the centre map, times or plus the first map;
* affinity: the dilated DDT map (10 x 10 at 160 px) propagated 1, 2 or 4 steps along the image's own feature affinity
  (row softmax of the final features' cosine similarities over temperature 0.1 or 0.05, a random walk as in AffinityNet);
* spectral: the Fiedler vector of the image's feature affinity graph (the positive cosine similarities; normalized
  Laplacian, as Deep Spectral Methods), signed to agree with DDT, alone and times or plus the DDT map;
* regress: pseudo-supervised box regression (as PSOL, Zhang et al. 2020): eps-2.5% boxes of the DDT map (dilated,
  160 px; or of the DDT x centre map) of every training image's labelled class serve as pseudo boxes for a small
  regressor (1x1 conv to 64 channels, dropout, linear to the box's centre and size; L1 loss on the edges, flips, 30 epochs) on the frozen
  final features; its boxes on the box set (at 1, 1.15 and 1.3 times their sides) against the pseudo-box sources'
  own boxes and the baselines; box scores only (a regressed box has no map for MaxBoxAccV2);
* finetune224: the shared full model (not dilated) fine-tuned at 224 px on `--train-dir` for 3 epochs (all layers, one
  cycle, lr 1e-4..1e-3; cached in bench/cache/localization/full_ft224.pth), against the shared model: box-set accuracy,
  Grad-CAM and DDT at 224 px, and DDT of the dilated last stage at 160 and 224 px.
* pretrained: the ImageNet-pretrained EfficientNet-Lite0 with its ImageNet head cut to the 10 classes (no fine-tuning), at
  224 px: Grad-CAM, its last stage dilated, a flip average, Grad-CAM + the dilated map, Grad-CAM++, DDT (50 images a class) alone and
  plus Grad-CAM, Grad-CAM times the centre map, the body fused with blocks.4, and Grad-CAM at 192/256/288 px averaged with the flip;
  MaxBoxAccV2 and the mass-cut box at the largest eps keeping recall >= 0.90 (and >= 0.861, the seed's recall).

    python bench/localization_tries.py [tta dilated prior agnostic finetune ddt ddt_fusion ddt_tta finetune_ddt ddt_n zoom affinity spectral
                                       finetune224 regress pretrained]
"""
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1]))   # bench/localization.py, the benchmark these tries feed
tries = [t for t in sys.argv[1:] if not t.startswith('-')] or ['tta', 'dilated', 'prior', 'agnostic', 'finetune', 'ddt', 'ddt_fusion', 'ddt_tta', 'finetune_ddt', 'ddt_n',
                                                               'zoom', 'affinity', 'spectral', 'finetune224', 'regress']
sys.argv = sys.argv[:1]
import localization as LB, torch, numpy as np, torch.nn as nn
from fastai.vision.all import Learner, Callback, accuracy, model_meta, resnet18, set_seed
from fastai_attncrop.boxes import mass_box
from fastai_attncrop.metrics import box_accuracy, evaluate_localization
from fastai_attncrop.saliency import register_method, dilate_last_stage, dilated_last_stage, saliency_maps

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

def finetune_learner(size, dilated=True):
    "A Learner on `--train-dir` at `size` px around the shared full model, its last stage dilated unless `dilated=False`: for the fine-tuning tries."
    ft = Learner(LB.train_dls(a.train_dir, size, 64), LB.shared_learner(a.train_dir, a.weights)[0].model, metrics=accuracy,
                 splitter=model_meta[resnet18]['split'])
    if dilated: dilate_last_stage(ft.model[0])
    return ft

def save_weights(learn, pth):
    "The model's weights to `pth`, atomically (the fine-tuning tries' cache)."
    LB.CACHE.mkdir(parents=True, exist_ok=True)
    tmp = pth.with_suffix('.tmp'); torch.save(learn.model.state_dict(), tmp); tmp.replace(pth)

centre = LB.centre_map()
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
    ft = finetune_learner(128)
    ft.model[1] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, ft.dls.c))
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
        save_weights(ft, pth)
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
        ft = finetune_learner(128)
        pth = LB.CACHE/f'full_dilated_ft_{arm}.pth'
        if pth.exists(): ft.model.load_state_dict(torch.load(pth, map_location='cpu'))
        else:
            t0 = time.time(); set_seed(0, reproducible=True)
            ft.unfreeze(); ft.fit_one_cycle(3, slice(3e-4, 3e-3), cbs=[CutMix(1.)] if arm == 'cutmix' else [])
            print(f'{arm}: fine-tuned in {time.time() - t0:.0f} s', flush=True)
            save_weights(ft, pth)
        m, acc = run(ft, 160, LB.ddt_fit(ft, a.train_dir, 160))
        g = run(ft, 160)[0]
        print(f'{arm}: box-set accuracy at 160 px {acc} | DDT {v2(m)} x centre {v2(LB.times_centre(m))} | Grad-CAM {v2(g)}', flush=True)
if 'ddt_n' in tries:
    d, _ = LB.shared_learner(a.train_dir, a.weights); dilate_last_stage(d.model[0])
    for n in (25, 50, 150, 500):
        m = run(d, 160, LB.ddt_fit(d, a.train_dir, 160, n=n))[0]
        print(f'DDT 160 px dilated, fitted on {n} images a class: {v2(m)} x centre {v2(LB.times_centre(m))}', flush=True)
if {'zoom', 'affinity', 'spectral'} & set(tries):
    from PIL import Image
    d, _ = LB.shared_learner(a.train_dir, a.weights); dilate_last_stage(d.model[0])
    f = LB.ddt_fit(d, a.train_dir, LB.DDT_SIZE)
    raw = run(d, LB.DDT_SIZE, f)[0]                                # {image: (10, 10) DDT map}
    first = LB.times_centre(raw)                                   # the table's DDT x centre row, 224 x 224
    print(f'DDT {LB.DDT_SIZE} px dilated {v2(raw)} x centre {v2(first)}', flush=True)
if 'zoom' in tries:
    def crop_maps(boxes, size=LB.DDT_SIZE, bs=50):
        "DDT map of each image's crop `boxes[image]` (224 px coordinates), resized to `size`, pasted back on a 224 x 224 zero canvas."
        out = {}
        for i in range(0, len(images), bs):
            names = images[i:i+bs]
            crops = [Image.open(Path(a.boxes_dir)/n).convert('RGB').resize((224, 224), Image.BILINEAR).crop(boxes[n]).resize((size, size), Image.BILINEAR)
                     for n in names]
            sm = saliency_maps(d, LB.input_batch(crops), f)
            for r in range(len(sm)):
                n = names[int(sm.img_idx[r])]; x0, y0, x1, y1 = boxes[n]
                c = torch.zeros(224, 224); c[y0:y1, x0:x1] = LB.upsample_maps(sm.maps[r][None].float().cpu(), (y1 - y0, x1 - x0))[0]
                out[n] = c/(c.max() + 1e-12)
        return out
    for eps1 in (0.01, 0.025):
        for pad in (0., 0.1):
            boxes = {}
            for k, m in first.items():
                x0, y0, x1, y1 = mass_box(m, eps1).tolist(); px, py = pad*(x1 - x0), pad*(y1 - y0)
                b = [int(max(0, x0 - px)), int(max(0, y0 - py)), int(min(224, np.ceil(x1 + px))), int(min(224, np.ceil(y1 + py)))]
                boxes[k] = b if b[2] - b[0] >= 16 and b[3] - b[1] >= 16 else [0, 0, 224, 224]
            z = crop_maps(boxes)
            print(f'zoom: crop at eps {eps1}, pad {pad}: crop map {v2(z)} x centre {v2(LB.times_centre(z))} | x first map {v2({k: z[k]*first[k] for k in z})}'
                  f' | + first map {v2({k: z[k] + first[k] for k in z})}', flush=True)
def grid_feats(learn, size, bs=50):
    "{image: (unit-length feature vectors (hw, C) of the body's output, its grid (h, w))} at input `size`."
    out = {}
    with torch.no_grad():
        for names, xb in LB.load_batches(a.boxes_dir, images, size, bs):
            fm = learn.model.eval()[0](xb)
            for n, v in zip(names, torch.nn.functional.normalize(fm.flatten(2).transpose(1, 2), dim=-1)): out[n] = (v, fm.shape[-2:])
    return out
if 'affinity' in tries:
    feats = grid_feats(d, LB.DDT_SIZE)
    for T in (0.1, 0.05):
        for steps in (1, 2, 4):
            prop = {}
            for k, (v, hw) in feats.items():
                A = torch.softmax(v @ v.T/T, 1); m = raw[k].flatten().float()
                for _ in range(steps): m = A @ m
                prop[k] = m.view(*hw)
            print(f'affinity: T {T}, {steps} steps {v2(prop)} x centre {v2(LB.times_centre(prop))}', flush=True)
if 'spectral' in tries:
    feats = grid_feats(d, LB.DDT_SIZE)
    fied = {}
    for k, (v, hw) in feats.items():
        W = (v @ v.T).clamp(min=0); dg = W.sum(1).rsqrt()
        vec = torch.linalg.eigh(torch.eye(len(W)) - dg[:, None]*W*dg[None])[1][:, 1]*dg
        m = raw[k].flatten().float()
        fied[k] = (vec if (vec*(m - m.mean())).sum() >= 0 else -vec).view(*hw)   # the side where DDT is high
    print(f'spectral (Fiedler vector of the feature affinity): {v2(fied)} x centre {v2(LB.times_centre(fied))}'
          f' | x DDT {v2({k: unit(fied[k])*unit(raw[k]) for k in fied})} x centre {v2(LB.times_centre({k: unit(fied[k])*unit(raw[k]) for k in fied}))}'
          f' | + DDT {v2({k: unit(fied[k]) + unit(raw[k]) for k in fied})} x centre {v2(LB.times_centre({k: unit(fied[k]) + unit(raw[k]) for k in fied}))}', flush=True)
if 'finetune224' in tries:
    ft = finetune_learner(224, dilated=False)
    pth = LB.CACHE/'full_ft224.pth'
    if pth.exists(): ft.model.load_state_dict(torch.load(pth, map_location='cpu'))
    else:
        t0 = time.time(); set_seed(0, reproducible=True)
        ft.unfreeze(); ft.fit_one_cycle(3, slice(1e-4, 1e-3))
        print(f'fine-tuned at 224 px in {time.time() - t0:.0f} s', flush=True)
        save_weights(ft, pth)
    for name, l in (('shared model', LB.shared_learner(a.train_dir, a.weights)[0]), ('fine-tuned at 224 px', ft)):
        g, acc = run(l, 224); m = run(l, 224, LB.ddt_fit(l, a.train_dir, 224))[0]
        parts = [f'{name}: box-set accuracy at 224 px {acc} | Grad-CAM 224 px {v2(g)} | DDT 224 px {v2(m)} x centre {v2(LB.times_centre(m))}']
        dilate_last_stage(l.model[0])
        for size in (160, 224):
            m = run(l, size, LB.ddt_fit(l, a.train_dir, size))[0]
            parts.append(f'| dilated DDT {size} px {v2(m)} x centre {v2(LB.times_centre(m))}')
        print(*parts, flush=True)
if 'regress' in tries:
    import pandas as pd
    from fastai.vision.all import get_image_files
    d, _ = LB.shared_learner(a.train_dir, a.weights); dilate_last_stage(d.model[0])
    f = LB.ddt_fit(d, a.train_dir, LB.DDT_SIZE)
    vocab = list(d.dls.vocab)
    def feats_and_boxes(root, files, target):
        "Body features (N, 512, h, w) at DDT_SIZE and eps-2.5% boxes (N, 4; 0-1) of the DDT map and of the DDT x centre map of `target`."
        out, got, bs = [[], [], []], [], 50
        hook = d.model[0].register_forward_hook(lambda m, i, o: got.append(o.detach()))
        try:
            for i, (names, xb) in enumerate(LB.load_batches(root, files, LB.DDT_SIZE, bs)):
                got.clear()
                sm = saliency_maps(d, xb, f, target=None if target is None else target[i*bs:(i + 1)*bs])
                maps = {names[int(sm.img_idx[r])]: sm.maps[r] for r in range(len(sm))}
                out[0].append(got[-1])
                out[1].append(torch.stack([mass_box(LB.unit_map(maps[n]), LB.EPS) for n in names])/224)
                cm = LB.times_centre(maps)
                out[2].append(torch.stack([mass_box(cm[n], LB.EPS) for n in names])/224)
        finally: hook.remove()
        return [torch.cat(o) for o in out]
    tr = Path(a.train_dir)/'train'
    files = [p.relative_to(tr).as_posix() for p in LB._subset(get_image_files(tr), 500)]
    t0 = time.time()
    X, B_ddt, B_ctr = feats_and_boxes(tr, files, [vocab.index(p.split('/')[0]) for p in files])   # pseudo boxes of the labelled class
    Xd, D_ddt, D_ctr = feats_and_boxes(a.boxes_dir, images, None)                                 # the box set: predicted class
    print(f'features and pseudo boxes of {len(files)} training and {len(images)} box-set images in {time.time() - t0:.0f} s', flush=True)
    for src, B in (('DDT', B_ddt), ('DDT x centre', B_ctr)):
        print(f'{src} pseudo boxes: median edges {B.median(0).values.numpy().round(3)}, share with an edge on the border '
              f'{((B[:, :2] <= 1e-3) | (B[:, 2:] >= 1 - 1e-3)).any(1).float().mean():.3f}', flush=True)
    def edges(out):
        "Box edges (0-1) from the regressor's 4 outputs: sigmoid centre (x, y) and size (w, h)."
        c, wh = torch.sigmoid(out[:, :2]), torch.sigmoid(out[:, 2:])
        return torch.cat([c - wh/2, c + wh/2], 1)
    def fit_regressor(X, B, epochs=30, seed=0):
        "A box regressor on frozen features (1x1 conv to 64 channels, linear to a box's centre and size), L1 loss on its edges, flips as augmentation."
        torch.manual_seed(seed)
        head = nn.Sequential(nn.Conv2d(X.shape[1], 64, 1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64*X.shape[2]*X.shape[3], 4))
        opt = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=1e-2)
        for ep in range(epochs):
            for idx in torch.randperm(len(X)).split(128):
                x, b = X[idx], B[idx].clone()
                flip = torch.rand(len(idx)) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                b[flip] = torch.stack([1 - b[flip, 2], b[flip, 1], 1 - b[flip, 0], b[flip, 3]], 1)
                loss = (edges(head(x)) - b).abs().mean()
                opt.zero_grad(); loss.backward(); opt.step()
        return head.eval()
    def as_preds(B, name, scale=1.):
        "Box-set predictions (224 px) from 0-1 boxes, each side scaled by `scale` about the box's centre."
        B = B*224
        c, h = (B[:, :2] + B[:, 2:])/2, (B[:, 2:] - B[:, :2])/2*scale
        B = torch.cat([c - h, c + h], 1).clamp(0, 224)
        return pd.DataFrame(B.numpy(), columns=['xmin', 'ymin', 'xmax', 'ymax']).assign(image=images, method=name, fallback=False)
    rows = [as_preds(D_ddt, 'DDT map (pseudo-box source)'), as_preds(D_ctr, 'DDT x centre map (pseudo-box source)')]
    for src, B in (('DDT', B_ddt), ('DDT x centre', B_ctr)):
        head = fit_regressor(X, B)
        with torch.no_grad(): P = edges(head(Xd))
        rows += [as_preds(P, f'regressed on {src} pseudo boxes' + ('' if s == 1 else f', sides x {s}'), s) for s in (1, 1.15, 1.3)]
    summary = evaluate_localization(pd.concat(rows, ignore_index=True), gt)[1]
    with pd.option_context('display.width', 200, 'display.max_colwidth', 60):
        print(summary[['Recall', 'Precision', 'IoU', 'Image Area Reduction', 'BoxAcc']].round(3).to_string(), flush=True)
if 'pretrained' in tries:
    # the ImageNet-pretrained EfficientNet-Lite0, its ImageNet head cut to the 10 classes (no fine-tuning): which map localizes best
    from fastai_attncrop.metrics import eps_curve
    ih, info = LB.imagenet_head_model(a.train_dir, Path(a.boxes_dir)/'classes.csv', 64, validate=False)
    def op(maps, tag):
        "MaxBoxAccV2, and the mass-cut box at the largest eps that keeps recall >= 0.90 (and at recall >= 0.861, the seed's)."
        c = eps_curve(maps, gt, LB.EPS_GRID)
        parts = [f'{tag}: v2 {v2(maps)}']
        for r in (0.9, 0.861):
            o = LB.operating_point(c, r)
            if o is not None: parts.append(f'| recall>={r}: eps {o.eps:g} recall {o.recall:.3f} prec {o.precision:.3f} iou {o.iou:.3f} AR {o.area_reduction:.3f}')
        print(*parts, flush=True)
    def maps_of(learn, size, method='gradcam', flip=False, layers=None):
        return LB.model_maps(learn, a.boxes_dir, images, size, method, layers=layers, flip=flip)[0]
    g224 = maps_of(ih, 224); op(g224, 'Grad-CAM 224')
    with dilated_last_stage(ih.model[0]): gd = maps_of(ih, 224)
    op(gd, 'Grad-CAM dilated 224')
    gf = maps_of(ih, 224, flip=True); flip = {k: unit(g224[k]) + unit(gf[k]) for k in g224}; op(flip, 'Grad-CAM 224 flip TTA')
    op({k: unit(g224[k]) + unit(gd[k]) for k in g224}, 'Grad-CAM + Grad-CAM dilated 224')
    op(maps_of(ih, 224, 'gradcampp'), 'Grad-CAM++ 224')
    d = LB.ddt_fit(ih, a.train_dir, 224, n=50); dm = maps_of(ih, 224, d); op(dm, 'DDT 224')
    op({k: unit(dm[k]) + unit(g224[k]) for k in dm}, 'DDT + Grad-CAM 224')
    op(LB.times_centre(g224), 'Grad-CAM 224 x centre')
    op(maps_of(ih, 224, layers=['0', '0.model.blocks.4']), 'Grad-CAM body + blocks.4 fused')
    sizes = dict(flip)
    for s in (192, 256, 288):
        ms = maps_of(ih, s); op(ms, f'Grad-CAM {s}')
        sizes = {k: sizes[k] + unit(ms[k]) for k in sizes}
        op(sizes, f'Grad-CAM flip + sizes up to {s} TTA')
