"""The sharded box pass launched for real: 2 processes on the CPU (gloo over the loopback interface) give exactly the
one-process boxes table; a rank that fails mid-pass (an exception, or the process dying) fails the whole run, leaves
no final cache, and the next run resumes from the finished chunks. About 3 launches of 2 processes."""
import json, os, re, socket, subprocess, sys, warnings
from pathlib import Path
import pandas as pd, pytest, torch
from fastai.vision.all import set_seed
from fastai_attncrop.models import shapes_learner
from fastai_attncrop.boxpass import box_pass

warnings.filterwarnings('ignore')
WORKER = Path(__file__).parent/'_distrib_worker.py'
MARGINS = [0.95, 0.8]
N_BATCHES = 9          # 72 items in batches of 8, one batch per chunk: 5 rounds on 2 ranks

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "A synthetic set, a briefly trained learner (weights saved for the launched ranks) and its one-process table."
    tmp = tmp_path_factory.mktemp('distrib')
    learn = shapes_learner(None, tmp/'shapes', bs=8, epochs=2, n_train=20, n_valid=4, classes=3, size=32, obj_frac=(0.2, 0.4),
                           background='plain')       # the ranks rebuild it with the launched script's `_learner` and load its weights
    root = learn.dls.path
    torch.save(learn.model.state_dict(), tmp/'weights.pth')
    ref = box_pass(learn, margins=MARGINS, cache=False, chunk_batches=1, progress=False)
    assert len(ref) == 72 and ref['x0_95'].nunique() > 10 and ref['zero'].mean() < 0.5   # real boxes, not all whole-image
    return tmp, root, ref

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def launch(tmp, root, passes, fail=None, name='spec'):
    "Run the worker on 2 CPU processes; return (returncode, output, per-rank JSON reports)."
    spec = dict(data=str(root), weights=str(tmp/'weights.pth'), size=32, bs=8, margins=MARGINS, passes=passes, fail=fail)
    (tmp/f'{name}.json').write_text(json.dumps(spec))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MASTER_ADDR': '127.0.0.1',
           'PYTHONPATH': os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get('PYTHONPATH', '')])}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
                        '--master_port', str(_free_port()), '--monitor_interval', '0.1', '--log-dir', str(tmp/f'logs-{name}'),
                        '--redirects', '3', str(WORKER), str(tmp/f'{name}.json')],
                       capture_output=True, text=True, env=env, timeout=240)
    # each rank's output in its own file: two ranks writing one pipe at once can cut each other's lines
    logs = sorted((tmp/f'logs-{name}').rglob('*.log'))
    out = r.stdout + r.stderr + ''.join(f.read_text() for f in logs)
    reports = [json.loads(l) for f in logs if f.name == 'stdout.log' for l in f.read_text().splitlines() if l.startswith('{"rank"')]
    return r.returncode, out, sorted(reports, key=lambda o: o['rank'])

def _finals(cache): return list(Path(cache).glob('boxes-*.pkl'))
def _parts(cache): return sorted(p.name for p in Path(cache).glob('boxes-*.parts/*.pkl'))

def test_failing_rank_fails_the_run_and_resume_is_exact(setup):
    tmp, root, ref = setup
    # rank 1 raises in its third chunk (round 3): rounds 1 and 2 are complete (4 chunks), plus rank 0's chunk of round 3
    rc, out, reports = launch(tmp, root, [dict(cache=str(tmp/'c'), out=str(tmp/'never.pkl'))],
                              fail=dict(rank=1, after=2, how='raise'), name='raise')
    assert rc != 0 and not reports
    assert 'DistributedBoxPassError: box pass failed on rank 1 (chunk 5 of 9): InjectedFailure: injected failure' in out
    assert 'run again to resume' in out
    assert not _finals(tmp/'c') and _parts(tmp/'c') == [f'{c:05d}.pkl' for c in range(5)]
    assert not list(Path(tmp/'c').rglob('.*'))                      # no temporary (torn) files left behind
    # rank 1 dies outright in its first chunk: the launcher stops rank 0 (no hang) and nothing is lost or torn
    rc, out, reports = launch(tmp, root, [dict(cache=str(tmp/'c'), out=str(tmp/'never.pkl'))],
                              fail=dict(rank=1, after=0, how='exit'), name='exit')
    assert rc != 0 and not reports and re.search(r'exitcode\s*:\s*3\b', out)   # the launcher names the dead rank's exit
    assert not _finals(tmp/'c') and len(_parts(tmp/'c')) >= 5 and not list(Path(tmp/'c').rglob('.*'))
    left = N_BATCHES - len(_parts(tmp/'c'))
    # the same run again: a clean 2-process pass without cache, then the resumed pass; both equal 1 process exactly
    rc, out, reports = launch(tmp, root, [dict(cache=None, out=str(tmp/'fresh.pkl')), dict(cache=str(tmp/'c'), out=str(tmp/'resumed.pkl'))],
                              name='resume')
    assert rc == 0, out[-3000:]
    assert [o['batches'][0] for o in reports] == [5, 4]             # every chunk exactly once, shared
    assert sum(o['batches'][1] for o in reports) == left            # only the missing chunks were computed
    for f in ('fresh.pkl', 'resumed.pkl'):
        pd.testing.assert_frame_equal(pd.read_pickle(tmp/f), ref, check_exact=True)
    assert len(_finals(tmp/'c')) == 1 and not _parts(tmp/'c')
    pd.testing.assert_frame_equal(pd.read_pickle(_finals(tmp/'c')[0]), ref, check_exact=True)
