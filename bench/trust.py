"""Benchmark (not a timed test): do the label-free trust numbers of the box pass rank boxes by their true IoU, and
does choosing the margin per image by them beat a fixed margin? On a synthetic set with exact boxes.

    python bench/trust.py                 # 3 classes, plain backgrounds, 60 validation images per class, 128 px,
                                          # the ImageNet EfficientNet-Lite0 (`pretrained_learner`) fine_tune(2)
    python bench/trust.py --n-valid 20    # quicker
    python bench/trust.py --arch small_cnn --size 48 --epochs 8   # the first run's setting: a small CNN from scratch

Each validation image's box at every margin is scored against its true box (IoU, `box_scores`); the Spearman
correlation of each label-free number with that IoU is reported (at margin 0.95, and pooled over all margins for
the per-margin numbers), then the mean IoU of each fixed margin against the margin chosen per image by
`trust_margin` (the tightest crop that keeps the class) and by `adaptive_margin` (the activated-area ratio).
Writes results/trust.json and .md with the harness's stamp (`--quick`: a from-scratch small CNN on a few images, bench/out/);
the last line printed is one JSON object."""
import argparse, json, sys, tempfile, time, warnings
from functools import partial
from pathlib import Path
import numpy as np, pandas as pd
from scipy.stats import spearmanr
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402

MARGINS = (0.95, 0.9, 0.8, 0.7, 0.6)

def main(args):
    from fastai.vision.all import accuracy
    from fastai_attncrop.data import read_boxes_csv
    from fastai_attncrop.boxpass import box_pass, learner_items
    from fastai_attncrop.crop import margin_cols, crop_prob_col, trust_score, trust_margin, adaptive_margin, trust_summary
    from fastai_attncrop.metrics import box_scores
    from fastai_attncrop.models import PRETRAINED
    t_start = time.time()
    H.setup(args)
    if args.arch != 'small_cnn' and args.arch not in PRETRAINED: raise SystemExit(f"--arch: 'small_cnn' or one of {list(PRETRAINED)}, got {args.arch!r}")
    small = args.arch == 'small_cnn'     # from scratch, fit_one_cycle(epochs); else the pretrained arch, fine_tune(epochs)
    learn = H.shapes_learner(Path(tempfile.gettempdir())/f'attncrop_trust_{args.background}_{args.size}_{args.n_train}_{args.n_valid}',
                             None if small else args.arch, widths=(16, 32, 64, 64) if small else None, bs=32, epochs=args.epochs, lr=3e-3,
                             metrics=accuracy, n_train=args.n_train, n_valid=args.n_valid, classes=3, size=args.size, obj_frac=(0.1, 0.5),
                             background=args.background)
    root = learn.dls.path
    items = learner_items(learn).query("split == 'valid'")
    t0 = time.perf_counter()
    bx = box_pass(learn, items, margins=MARGINS, trust=True, auc_steps=args.auc_steps, cache=False, progress=False)
    t_pass = time.perf_counter() - t0
    gt = read_boxes_csv(root/'boxes.csv')
    true = {str(root/k): g[['xmin', 'ymin', 'xmax', 'ymax']].to_numpy(float) for k, g in gt.groupby('image')}
    iou = np.array([[box_scores(r[margin_cols(m)].to_numpy(float), true[r['item']], (r['width'], r['height']))['iou'] for m in MARGINS]
                    for _, r in bx.iterrows()])                                                    # (N, margins)
    rho = lambda a, b: float(spearmanr(a, b).statistic)
    m0 = MARGINS.index(0.95)
    scores = {'prob': bx.prob, 'prob_crop_95': bx[crop_prob_col(0.95)], 'trust_score_95': trust_score(bx, 0.95),
              'area_ratio': bx.area_ratio, '-drop_95': bx[crop_prob_col(0.95)] - bx.prob, 'insertion_auc': bx.insertion_auc,
              '-deletion_auc': -bx.deletion_auc, 'insertion-deletion': bx.insertion_auc - bx.deletion_auc}
    at95 = {k: round(rho(np.asarray(v, float), iou[:, m0]), 3) for k, v in scores.items()}
    pooled = {}
    for name, f in {'prob_crop': lambda m: bx[crop_prob_col(m)], 'trust_score': lambda m: trust_score(bx, m),
                    '-drop': lambda m: bx[crop_prob_col(m)] - bx.prob}.items():
        pooled[name] = round(rho(np.concatenate([np.asarray(f(m), float) for m in MARGINS]), iou.T.reshape(-1)), 3)
    fixed = {f"{m:g}": round(float(iou[:, j].mean()), 4) for j, m in enumerate(MARGINS)}
    pick = lambda ms: iou[np.arange(len(bx)), [MARGINS.index(m) for m in ms]]
    chosen = {f"trust_margin(max_drop={d:g})": round(float(pick(trust_margin(bx, d)).mean()), 4) for d in (0.05, 0.1, 0.2, 0.3)}
    chosen['adaptive_margin(area_ratio)'] = round(float(pick(adaptive_margin(bx.area_ratio, MARGINS)).mean()), 4)
    chosen['oracle (best margin per image)'] = round(float(iou.max(1).mean()), 4)
    best_fixed = max(fixed, key=fixed.get)
    summ = trust_summary(bx)
    lines = [f"{len(bx)} validation boxes, accuracy {float((bx.correct).mean()):.3f}, box pass with trust and {args.auc_steps}-step AUCs: {t_pass:.1f} s",
             "", "Spearman correlation with the true IoU at margin 0.95:", ""]
    lines += [f"  {k:<22}{v:>8.3f}" for k, v in at95.items()]
    lines += ["", "pooled over the margins (one point per box and margin):", ""] + [f"  {k:<22}{v:>8.3f}" for k, v in pooled.items()]
    lines += ["", "mean IoU, fixed margin:    " + '  '.join(f"{k}: {v:.3f}" for k, v in fixed.items()),
              "mean IoU, margin per image: " + '  '.join(f"{k}: {v:.3f}" for k, v in chosen.items()),
              "", "trust_summary (Average Drop and Increase in Confidence in %):", "", summ.round(3).to_string(index=False)]
    print('\n'.join(lines))
    out = dict(n_boxes=len(bx), accuracy=round(float(bx.correct.mean()), 4), spearman_iou_at_95=at95, spearman_iou_pooled=pooled,
               mean_iou_fixed=fixed, mean_iou_chosen=chosen, best_fixed_margin=best_fixed,
               trust_margin_beats_best_fixed=bool(max(v for k, v in chosen.items() if k.startswith('trust')) > fixed[best_fixed]),
               average_drop=dict(zip(summ.margin.map('{:g}'.format), summ.average_drop.round(2))),
               increase_in_confidence=dict(zip(summ.margin.map('{:g}'.format), summ.increase_in_confidence.round(2))),
               settings=dict(arch=args.arch, pretrained=args.arch != 'small_cnn', background=args.background, size=args.size, n_train=args.n_train, n_valid=args.n_valid, epochs=args.epochs, auc_steps=args.auc_steps))
    md = "# Label-free trust scores against the true IoU\n\n```\n" + '\n'.join(lines) + "\n```"
    H.finish('trust', out, md, args, settings=out['settings'], t0=t_start)

if __name__ == '__main__':
    p = H.parser(__doc__, 'a from-scratch small_cnn, 32 px, 10 + 4 images a class, one epoch; results in bench/out/')
    p.add_argument('--n-train', type=int, default=100, help='training images per class')
    p.add_argument('--n-valid', type=int, default=60, help='validation images per class (the boxes scored)')
    p.add_argument('--arch', default='tf_efficientnet_lite0', help="a name of `fastai_attncrop.models.PRETRAINED` (fine_tune) or 'small_cnn' (from scratch)")
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--epochs', type=int, default=2, help='fine_tune epochs (small_cnn: fit_one_cycle epochs)')
    p.add_argument('--auc-steps', type=int, default=8)
    p.add_argument('--background', default='plain', help="make_shapes' background ('plain', 'mixed', ...)")
    a = p.parse_args()
    if a.quick: a.arch, a.size, a.n_train, a.n_valid, a.epochs, a.auc_steps = 'small_cnn', 32, 10, 4, 1, 2
    main(a)
