"""Benchmark (not a timed test): the whole box pass of `learn.attention_crop` against `learn.get_preds` on the same
DataLoader in the same run, and the peak memory of the box pass at two numbers of items (each in its own process).

    python bench/crop_pass.py                      # 1k items for the ratio, peak RSS at 1k and 10k items
    python bench/crop_pass.py --n-small 200 --n-large 2000 --n-time 500   # reduced scale
    python bench/crop_pass.py --trust --n-time 500 --n-small 0             # the cost of the trust columns (no RSS runs)
    python bench/crop_pass.py --quick                                      # a smoke run (bench/out/crop_pass.*)

Writes results/crop_pass.json and .md (`--trust`: crop_pass_trust.*) with the harness's stamp.

The items repeat the images of a small synthetic set (the pass reads and boxes every item, repeated or not).
Prints a table, then as the last line one JSON object:
{"crop_pass_vs_get_preds": r, "peak_rss_mb_1k": a, "peak_rss_mb_10k": b}
r = time of get_preds / time of the box pass (1 = as fast as inference; target >= 0.9).
With --trust the box pass with `trust=True` (the crop probabilities at the three default margins) is timed too, and
the JSON adds "crop_pass_vs_get_preds_trust" and "trust_cost" (time with / time without - 1).
The classic rule (`floor=0, native=False, upsample=1`, the default before issue 29) is timed beside the default:
"crop_pass_vs_get_preds_classic" and "cost_vs_classic" (default time / classic time)."""
import argparse, json, resource, subprocess, sys, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402

def setup(size, n_img, threads):
    import torch
    if threads: torch.set_num_threads(threads)
    learn = H.shapes_learner(Path(tempfile.gettempdir())/f'attncrop_bench_{size}_{n_img}', bs=64, n_train=n_img, n_valid=2, classes=4, size=size)
    return learn, [str(p) for p in learn.dls.train_ds.items]

# The rule before issue 29 (no floor removed, batched maps, no finer cut): the 'today' of its cost goal.
CLASSIC = dict(floor=0., native=False, upsample=1)

def items_of(paths, n): return (paths * (n // len(paths) + 1))[:n]

def child(args):
    "One box pass over `args.child` items; prints the peak RSS in MB."
    from fastai_attncrop.boxpass import box_pass
    learn, paths = setup(args.size, args.n_img, args.threads)
    box_pass(learn, items_of(paths, args.child), bs=args.bs, cache=False, progress=False)
    print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))

def main(args):
    from fastai_attncrop.boxpass import box_pass
    learn, paths = setup(args.size, args.n_img, args.threads)
    items = items_of(paths, args.n_time)
    dl = learn.dls.test_dl(items, bs=args.bs)
    learn.get_preds(dl=learn.dls.test_dl(items[:args.bs], bs=args.bs))   # warm up
    box_pass(learn, items[:args.bs], bs=args.bs, cache=False, progress=False)
    t_pred, t_box, t_trust, t_classic = [], [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with learn.no_bar(): learn.get_preds(dl=dl)
        t_pred.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        box_pass(learn, items, bs=args.bs, cache=False, progress=False, chunk_batches=8)
        t_box.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        box_pass(learn, items, bs=args.bs, cache=False, progress=False, chunk_batches=8, **CLASSIC)
        t_classic.append(time.perf_counter() - t0)
        if args.trust:
            t0 = time.perf_counter()
            box_pass(learn, items, bs=args.bs, cache=False, progress=False, chunk_batches=8, trust=True)
            t_trust.append(time.perf_counter() - t0)
    tp, tb = min(t_pred), min(t_box)
    rss = {}
    for n in (args.n_small, args.n_large) if args.n_small else ():
        out = subprocess.run([sys.executable, __file__, '--child', str(n), '--size', str(args.size), '--bs', str(args.bs),
                              '--n-img', str(args.n_img), '--threads', str(args.threads)], capture_output=True, text=True, check=True)
        rss[n] = json.loads(out.stdout.strip().splitlines()[-1])['peak_rss_mb']
    lines = [f"{'what':<34}{'value':>12}",
             f"{'items timed / image size / bs':<34}{f'{len(items)} / {args.size} / {args.bs}':>12}",
             f"{'get_preds (s, best of ' + str(args.repeats) + ')':<34}{tp:>12.3f}",
             f"{'box pass (s, best of ' + str(args.repeats) + ')':<34}{tb:>12.3f}",
             f"{'box pass, classic rule (s)':<34}{min(t_classic):>12.3f}",
             f"{'items/s get_preds | box pass':<34}{f'{len(items)/tp:.0f} | {len(items)/tb:.0f}':>12}"]
    out = {'crop_pass_vs_get_preds': round(tp/tb, 3), 'crop_pass_vs_get_preds_classic': round(tp/min(t_classic), 3),
           'cost_vs_classic': round(tb/min(t_classic), 3)}
    if args.trust:
        tt = min(t_trust)
        lines.append(f"{'box pass, trust=True (s)':<34}{tt:>12.3f}")
        out.update(crop_pass_vs_get_preds_trust=round(tp/tt, 3), trust_cost=round(tt/tb - 1, 3))
    for n, v in rss.items(): lines.append(f"{f'peak RSS of a box pass, {n} items (MB)':<34}{v:>12.0f}")
    if rss: out.update(peak_rss_mb_1k=round(rss[args.n_small], 1), peak_rss_mb_10k=round(rss[args.n_large], 1))
    print('\n'.join(lines))
    timings = dict(items=len(items), get_preds_s=round(tp, 3), box_pass_s=round(tb, 3), box_pass_classic_s=round(min(t_classic), 3),
                   **({'box_pass_trust_s': round(min(t_trust), 3)} if args.trust else {}), peak_rss_mb={str(n): round(v, 1) for n, v in rss.items()})
    md = (f"# The box pass against get_preds{' (trust columns)' if args.trust else ''}\n\n`small_cnn`, {args.size} px synthetic shapes "
          f"({args.n_img} distinct images a class, repeated), bs {args.bs}, best of {args.repeats}; peak RSS of a box pass at "
          f"{args.n_small} and {args.n_large} items, each in its own process. The classic rule: `{CLASSIC}`.\n\n```\n" + '\n'.join(lines) + "\n```")
    H.finish('crop_pass_trust' if args.trust else 'crop_pass', out, md, args, settings={k: v for k, v in vars(args).items() if k not in ('child', 't0')},
             t0=args.t0, tables=dict(timings=timings))

if __name__ == '__main__':
    p = H.parser(__doc__, 'a few dozen items at 32 px, one repeat, small RSS runs; results in bench/out/')
    p.add_argument('--n-time', type=int, default=1000, help='items of the timed comparison')
    p.add_argument('--n-small', type=int, default=1000, help='items of the first peak-RSS run (the "1k" key)')
    p.add_argument('--n-large', type=int, default=10000, help='items of the second peak-RSS run (the "10k" key)')
    p.add_argument('--n-img', type=int, default=50, help='distinct images per class of the synthetic set')
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--trust', action='store_true', help='also time the box pass with trust=True (crop probabilities)')
    p.add_argument('--child', type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(); a.t0 = time.time()
    if a.quick: a.n_time, a.n_small, a.n_large, a.n_img, a.size, a.repeats = 64, 64, 128, 4, 32, 1
    child(a) if a.child else main(a)
