"""Soak benchmark of issue #8: the box pass over 20,000 small synthetic image files with corrupt files planted among
them (zero bytes, truncated, header only, text, random bytes). Peak RSS at 2k and at 20k items, each pass in its own
process; every planted file must be reported (and nothing else), every other file boxed inside its image.

    python bench/soak.py                                    # 20,000 items of 32x32, 1 corrupt file in 400
    python bench/soak.py --n-large 4000 --n-small 1000      # reduced scale
    python bench/soak.py --quick                            # a smoke run: 400 files (bench/out/soak.*)

The images (a square or a circle on a noisy background, the two classes) are written once to bench/cache/ (git
ignored). A small_cnn is fitted for one epoch on 2,000 of the good files and its weights saved; each measured pass
loads them in a fresh process and runs `box_pass` with a chunk cache in a temporary folder (as `attention_crop`
does). The peak RSS is the pass's own: the process's high-water mark is reset just before the pass (Linux
/proc/self/clear_refs), so the imports' peak does not hide growth; the process peak is shown too. Prints a table,
then as the last line one JSON object:
{"items", "failed_reported", "planted_corrupt", "rss_mb_2k", "rss_mb_20k"} (for the largest run).
Writes results/soak.json and .md with the harness's stamp."""
import argparse, json, os, resource, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402
CACHE = H.CACHE
CLASSES = ('circle', 'square')
KINDS = ('zero_bytes', 'truncated', 'header_only', 'text', 'random_bytes')

def make_items(n, size, every, seed=0):
    "Write `n` image files (1 in `every` corrupt) under bench/cache; return the folder and {'items', 'labels', 'planted'}."
    from PIL import Image, ImageDraw
    root = CACHE/f'soak_{n}_{size}_{every}_{seed}'
    meta = root/'items.json'
    if meta.exists(): return root, json.loads(meta.read_text())
    rng = np.random.default_rng(seed)
    items, labels, planted = [], [], []
    for i in range(n):
        c = CLASSES[i % 2]
        p = root/c/f'{c}_{i:05d}.png'
        p.parent.mkdir(parents=True, exist_ok=True)
        bg = np.clip(rng.normal(rng.uniform(40, 215, 3), 25, (size, size, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(bg); d = ImageDraw.Draw(im)
        s = int(rng.integers(size//4, size//2)); x, y = (int(v) for v in rng.integers(0, size - s, 2))
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if c == 'circle' else d.rectangle)([x, y, x + s - 1, y + s - 1], fill=col)
        im.save(p)
        if every and i % every == every // 2:                  # plant a corrupt file of the next kind
            kind, data = KINDS[len(planted) % len(KINDS)], p.read_bytes()
            p.write_bytes({'zero_bytes': b'', 'truncated': data[:len(data)//2], 'header_only': data[:40],
                           'text': b'this is not an image\n', 'random_bytes': rng.bytes(300)}[kind])
            planted.append(str(p))
        items.append(str(p)); labels.append(c)
    info = {'items': items, 'labels': labels, 'planted': planted}
    meta.write_text(json.dumps(info))
    return root, info

def learner(root, info, size, weights=None):
    import torch
    from functools import partial
    from fastai.vision.all import ImageDataLoaders, Resize, vision_learner, set_seed
    from fastai_attncrop.models import small_cnn
    bad = set(info['planted'])
    good = [(p, l) for p, l in zip(info['items'], info['labels']) if p not in bad][:2000]
    set_seed(0)
    dls = ImageDataLoaders.from_lists(root, [p for p, _ in good], [l for _, l in good], valid_pct=0.2, seed=0,
                                      item_tfms=Resize(size), bs=64, num_workers=0)
    learn = vision_learner(dls, partial(small_cnn, widths=(16, 32, 64, 64)), pretrained=False)
    if weights is None:
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 3e-3)
    else: learn.model.load_state_dict(torch.load(weights))
    return learn

def _status_mb(key):
    "A memory figure of this process from /proc/self/status (VmRSS, VmHWM) in MB, or None off Linux."
    try: line = next(l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith(key + ':'))
    except (OSError, StopIteration): return None
    return round(int(line.split()[1]) / 1024, 1)

def _reset_peak() -> bool:
    "Reset the process's peak RSS (VmHWM) to its current RSS (Linux), so that the next peak is the pass's own."
    try: Path('/proc/self/clear_refs').write_text('5'); return True
    except OSError: return False

def child(args):
    "One box pass over the first `args.child` items in this process; prints its checks and peak RSS as JSON."
    import torch
    from fastai_attncrop.boxpass import box_pass
    from fastai_attncrop.crop import margin_cols
    torch.set_num_threads(args.threads)
    root, info = make_items(args.n_large, args.size, args.every)
    learn = learner(root, info, args.size, args.weights)
    items = info['items'][:args.child]
    planted = set(info['planted']) & set(items)
    rss_before, reset = _status_mb('VmRSS'), _reset_peak()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        df = box_pass(learn, items, margins=(0.95, 0.8, 0.6), bs=64, cache=cache, progress=False)
    secs = time.perf_counter() - t0
    failed = df[df['error'].notna()]
    ok = df[df['error'].isna()]
    inside = True
    for m in (0.95, 0.8, 0.6):
        x0, y0, x1, y1 = (ok[c].to_numpy(float) for c in margin_cols(m))
        inside &= bool(np.isfinite([x0, y0, x1, y1]).all() and ((0 <= x0) & (x0 <= x1) & (x1 <= ok.width) &
                                                                 (0 <= y0) & (y0 <= y1) & (y1 <= ok.height)).all())
    print(json.dumps({'items': len(df), 'failed_reported': len(failed), 'planted_corrupt': len(planted),
                      'reported_exactly_planted': set(failed['item']) == planted, 'good_boxed_inside': inside and len(ok) == len(items) - len(planted),
                      'reasons': sorted({r.split(':')[0] for r in failed['error']}), 'seconds': round(secs, 1),
                      'rss_before_pass_mb': rss_before, 'rss_after_pass_mb': _status_mb('VmRSS'),
                      'peak_rss_mb': _status_mb('VmHWM') if reset else None,     # the pass's own peak
                      'process_peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1)}))

def main(args):
    t0 = time.perf_counter()
    root, info = make_items(args.n_large, args.size, args.every)
    t_make = time.perf_counter() - t0
    weights = CACHE/f'soak_weights_{args.n_large}_{args.size}_{args.every}.pt'
    if not weights.exists():
        import torch
        torch.save(learner(root, info, args.size).model.state_dict(), weights)
    runs = {}
    for n in (args.n_small, args.n_large):
        out = subprocess.run([sys.executable, __file__, '--child', str(n), '--n-large', str(args.n_large), '--size', str(args.size),
                              '--every', str(args.every), '--threads', str(args.threads), '--weights', str(weights)],
                             capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': str(args.threads)})
        if out.returncode: sys.exit(f"child for {n} items failed:\n{out.stderr[-3000:]}")
        runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    lines = [f"{'what':<44}{f'{args.n_small} items':>16}{f'{args.n_large} items':>16}"]
    for k in ('items', 'planted_corrupt', 'failed_reported', 'reported_exactly_planted', 'good_boxed_inside', 'seconds',
              'rss_before_pass_mb', 'peak_rss_mb', 'rss_after_pass_mb', 'process_peak_rss_mb'):
        lines.append(f"{k:<44}{str(runs[args.n_small][k]):>16}{str(runs[args.n_large][k]):>16}")
    lines.append(f"{'items/s':<44}{runs[args.n_small]['items']/runs[args.n_small]['seconds']:>16.0f}{runs[args.n_large]['items']/runs[args.n_large]['seconds']:>16.0f}")
    notes = [f"reasons reported: {runs[args.n_large]['reasons']}",
             f"image size {args.size}x{args.size}, 1 corrupt file in {args.every}, {args.threads} torch thread(s); "
             f"files written in {t_make:.0f} s (0 when cached)",
             "peak_rss_mb: peak RSS during the pass (VmHWM reset just before it); process_peak_rss_mb: since the process "
             "started (imports and model set-up included)"]
    print('\n'.join(lines + notes))
    big, small = runs[args.n_large], runs[args.n_small]
    key = 'peak_rss_mb' if big['peak_rss_mb'] is not None else 'process_peak_rss_mb'
    small['peak_rss_mb'], big['peak_rss_mb'] = small[key], big[key]
    res = {'items': big['items'], 'failed_reported': big['failed_reported'], 'planted_corrupt': big['planted_corrupt'],
           'rss_mb_2k': small['peak_rss_mb'], 'rss_mb_20k': big['peak_rss_mb']}
    md = ("# Soak: the box pass over files with corrupt ones planted\n\n```\n" + '\n'.join(lines) + "\n```\n\n"
          + '\n'.join(f"* {n}" for n in notes))
    H.finish('soak', res, md, args, settings={k: v for k, v in vars(args).items() if k not in ('child', 'weights', 't0')},
             t0=args.t0, tables=dict(runs={str(n): r for n, r in runs.items()}))

if __name__ == '__main__':
    p = H.parser(__doc__, '400 files (100 in the small run), 1 corrupt in 50; results in bench/out/')
    p.add_argument('--n-large', type=int, default=20000, help='items of the large run (the "20k" key); also the number of files written')
    p.add_argument('--n-small', type=int, default=2000, help='items of the small run (the "2k" key): the first ones')
    p.add_argument('--size', type=int, default=32, help='image side in pixels')
    p.add_argument('--every', type=int, default=400, help='one corrupt file in this many')
    p.add_argument('--weights', default=None, help=argparse.SUPPRESS)
    p.add_argument('--child', type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(); a.t0 = time.time(); a.threads = a.threads or 1   # one torch thread unless told
    if a.quick: a.n_large, a.n_small, a.every = 400, 100, 50
    child(a) if a.child else main(a)
