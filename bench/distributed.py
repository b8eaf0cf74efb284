"""Benchmark (not a timed test): the box pass on 1 process against 2 processes (torch.distributed, gloo, one machine's
CPU), the same items in the same run, each configuration launched with torch.distributed.run and timed inside the
processes (after start-up and a warm-up chunk, between two barriers), plus the launch's whole wall time.

    flock /work/cpu.lock python bench/distributed.py                 # 4096 items at 64 px, best of 2
    python bench/distributed.py --items 1024 --repeats 1                   # reduced scale
    python bench/distributed.py --quick                                    # a smoke run (bench/out/distributed.*)

Configurations: 1 process with as many torch threads as cores (the fair single-process baseline), 1 process with 1
thread, and 2 processes with cores/2 threads each. The runs are interleaved; each time is the best of `--repeats`.
The 2-process table is checked to be identical to the 1-process one. Prints a table, then as the last line one JSON
object: {"items", "cores", "seconds_1proc", "seconds_1proc_1thread", "seconds_2proc", "speedup_2proc",
"launch_seconds_1proc", "launch_seconds_2proc"}; speedup_2proc = seconds_1proc / seconds_2proc.
Writes results/distributed.json and .md with the harness's stamp."""
import argparse, json, os, socket, subprocess, sys, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402

def items_of(paths, n): return (paths * (n // len(paths) + 1))[:n]

def child(a):
    "One launched rank: learner, warm-up, the timed pass; rank 0 saves the table and prints the time."
    import torch, torch.distributed as dist
    from fastai.distributed import teardown_distrib
    from fastai_attncrop.data import make_shapes
    from fastai_attncrop.distributed import setup_distributed, distrib_box_pass, _learner, _world
    torch.set_num_threads(a.threads)
    state = setup_distributed()
    rank, world = _world()
    root = make_shapes(Path(a.data), n_train=a.n_img, n_valid=2, classes=4, size=a.size, seed=0)
    learn = _learner(root, 'small_cnn', a.size, a.bs, 0, state.device)
    items = items_of([str(p) for p in learn.dls.train_ds.items], a.n)
    distrib_box_pass(learn, items[:a.bs*world], bs=a.bs, cache=False, chunk_batches=1, progress=False)   # warm-up
    if world > 1: dist.barrier()
    t0 = time.perf_counter()
    bx = distrib_box_pass(learn, items, bs=a.bs, cache=False, chunk_batches=a.chunk_batches, progress=False)
    if world > 1: dist.barrier()
    t = time.perf_counter() - t0
    if rank == 0:
        bx.to_pickle(a.pickle)
        print(json.dumps({'seconds': t, 'world': world, 'threads': torch.get_num_threads()}), flush=True)
    teardown_distrib()

def _port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def launch(a, nproc, threads, out):
    "Launch `nproc` ranks of this script with `threads` torch threads each; (pass seconds, launch seconds)."
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_addr', '127.0.0.1',
           '--master_port', str(_port()), __file__, '--child', '--threads', str(threads), '--pickle', str(out), '--data', a.data,
           '--items', str(a.n), '--n-img', str(a.n_img), '--size', str(a.size), '--bs', str(a.bs), '--chunk-batches', str(a.chunk_batches)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': str(threads)})
    wall = time.perf_counter() - t0
    if r.returncode: sys.exit(f"launch of {nproc} process(es) failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return json.loads([l for l in r.stdout.splitlines() if l.startswith('{')][-1])['seconds'], wall

def main(a):
    import pandas as pd
    cores = len(os.sched_getaffinity(0))
    H.make_shapes_quiet(Path(a.data), n_train=a.n_img, n_valid=2, classes=4, size=a.size, seed=0)   # made once, before the timings
    tmp = Path(tempfile.mkdtemp())
    confs = {'1proc': (1, cores), '1proc_1thread': (1, 1), '2proc': (2, max(1, cores//2))}
    times = {k: [] for k in confs}
    for _ in range(a.repeats):
        for k, (n, th) in confs.items(): times[k].append(launch(a, n, th, tmp/f'{k}.pkl'))
    pd.testing.assert_frame_equal(pd.read_pickle(tmp/'2proc.pkl'), pd.read_pickle(tmp/'1proc_1thread.pkl'), check_exact=True)
    best = {k: min(v) for k, v in times.items()}
    lines = [f"{'configuration':<34}{'pass (s)':>10}{'items/s':>10}{'launch (s)':>12}"]
    for k, (n, th) in confs.items():
        lines.append(f"{f'{n} process(es) x {th} thread(s)':<34}{best[k][0]:>10.3f}{a.n/best[k][0]:>10.0f}{best[k][1]:>12.1f}")
    note = (f"items {a.n} at {a.size} px, bs {a.bs}, {a.chunk_batches} batches per chunk; {cores} cores; best of {a.repeats}; "
            f"2-process table identical to the 1-process one")
    print('\n'.join(lines + [note]))
    res = {'items': a.n, 'cores': cores, 'seconds_1proc': round(best['1proc'][0], 3),
           'seconds_1proc_1thread': round(best['1proc_1thread'][0], 3), 'seconds_2proc': round(best['2proc'][0], 3),
           'speedup_2proc': round(best['1proc'][0]/best['2proc'][0], 3),
           'launch_seconds_1proc': round(best['1proc'][1], 1), 'launch_seconds_2proc': round(best['2proc'][1], 1)}
    md = "# The box pass on 2 processes against 1\n\n```\n" + '\n'.join(lines) + "\n```\n\n" + note + '.'
    H.finish('distributed', res, md, a, settings=dict(items=a.n, n_img=a.n_img, size=a.size, bs=a.bs, chunk_batches=a.chunk_batches,
                                                      repeats=a.repeats, quick=a.quick), t0=a.t0)

if __name__ == '__main__':
    p = H.parser(__doc__, '128 items, one repeat; results in bench/out/')
    p.add_argument('--items', dest='n', type=int, default=4096, help='items of the pass (the synthetic images, repeated)')
    p.add_argument('--n-img', type=int, default=50, help='distinct images per class of the synthetic set')
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--chunk-batches', type=int, default=8)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--data', default=str(Path(tempfile.gettempdir())/'attncrop_bench_distrib'))
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--pickle', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(); a.t0 = time.time()
    if a.child: a.threads = a.threads or 1
    if a.quick: a.n, a.n_img, a.repeats, a.data = 128, 4, 1, a.data + '_quick'
    child(a) if a.child else main(a)
