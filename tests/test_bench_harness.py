"""bench/harness.py (the stamp and results writer of every benchmark script) and the results it has written: every script
of bench/ has its stamped results file under bench/results/ with the keys of its final JSON line, and is known to the smoke
run (`make bench-smoke`, tools/bench_smoke.py). Fast: no script runs here."""
import importlib.util, json, math, sys
from pathlib import Path
import numpy as np, pytest

root = Path(__file__).resolve().parents[1]

def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

H = _load(root/'bench'/'harness.py', 'bench_harness')
smoke = _load(root/'tools'/'bench_smoke.py', 'bench_smoke')

def test_write_results(tmp_path):
    "Both files written (and nothing else left there), the stamp complete, numpy and NaN made plain JSON, the md headed by title and stamp."
    res = {'ratio': np.float64(0.5), 'n': np.int64(3), 'gone': float('nan'), 'arr': np.arange(2)}
    j, m = H.write_results('x', res, '# A title\n\nSome text.', tmp_path, settings={'size': 64})
    assert sorted(p.name for p in tmp_path.iterdir()) == ['x.json', 'x.md']
    d = json.loads(j.read_text())
    assert d['result'] == {'ratio': 0.5, 'n': 3, 'gone': None, 'arr': [0, 1]} and d['settings'] == {'size': 64} and d['name'] == 'x'
    assert {'date', 'machine', 'versions', 'commit', 'command'} <= set(d['stamp'])
    assert {'cores', 'cpu', 'gpu', 'torch_threads'} <= set(d['stamp']['machine'])
    text = m.read_text()
    assert text.startswith('# A title\n\n' + d['stamp']['date']) and 'Some text.' in text
    assert text.rstrip().endswith(json.dumps(d['result']) + '\n```')

def test_results_dir():
    "A --quick run never writes over the committed results: bench/out/ unless --out says otherwise."
    from argparse import Namespace
    assert H.results_dir(Namespace(quick=True, out=None)) == H.OUT
    assert H.results_dir(Namespace(quick=False, out=None)) == H.RESULTS
    assert H.results_dir(Namespace(quick=True, out='/tmp/o')) == Path('/tmp/o')

def test_parser_shared_options():
    a = H.parser('Doc.\n\nMore.').parse_args(['--quick', '--threads', '2'])
    assert a.quick and a.threads == 2 and a.out is None

def test_need_data(tmp_path):
    "Absent data: a --quick run gets a message naming the folder, a full run stops with it."
    assert H.need_data(tmp_path) is None
    msg = H.need_data(tmp_path/'nope', quick=True)
    assert str(tmp_path/'nope') in msg
    with pytest.raises(SystemExit, match='nope'): H.need_data(tmp_path/'nope')

def test_command():
    assert H.command(['bench/trust.py', '--quick'], script=str(root/'bench'/'trust.py')) == 'PYTHONPATH=. python bench/trust.py --quick'

def test_every_script_in_smoke_run():
    "A new script under bench/ must be added to the smoke run's table (with the keys of its final JSON line)."
    assert {p.stem for p in (root/'bench').glob('*.py')} - {'harness'} == set(smoke.SCRIPTS)

@pytest.mark.parametrize('script', sorted(smoke.SCRIPTS))
def test_committed_results_stamped(script):
    "Each script's committed results file: stamped (date, machine, command) and holding its final JSON line's keys."
    name = smoke.SCRIPTS[script][0].replace('_quick', '')
    d = json.loads((root/'bench'/'results'/f'{name}.json').read_text())
    assert {'date', 'machine', 'command'} <= set(d['stamp']), f"{name}.json: incomplete stamp"
    assert (root/'bench'/'results'/f'{name}.md').exists()
    missing = [k for k in smoke.SCRIPTS[script][1] if k not in d['result'] and not k.startswith(('quick', 'limit'))]
    assert not missing, f"{name}.json lacks {missing}"

def test_smoke_check(tmp_path, monkeypatch):
    "The smoke run's check: a run is good only with its keys in the last line and a fresh stamped file holding that line."
    import time
    from types import SimpleNamespace as P
    monkeypatch.setattr(smoke, 'OUT', tmp_path); monkeypatch.setattr(smoke, 'ROOT', tmp_path)
    t0 = time.time() - 1
    line = {k: 1 for k in smoke.SCRIPTS['soak'][1]}
    assert smoke.check('soak', P(returncode=0, stdout='x\n' + json.dumps(line), stderr=''), t0)   # no file written
    H.write_results('soak', line, '', tmp_path)
    assert smoke.check('soak', P(returncode=0, stdout='x\n' + json.dumps(line), stderr=''), t0) == []
    bad = dict(line); del bad['rss_mb_20k']
    assert any('rss_mb_20k' in e for e in smoke.check('soak', P(returncode=0, stdout=json.dumps(bad), stderr=''), t0))
    assert smoke.check('soak', P(returncode=1, stdout='', stderr='boom'), t0)

B = _load(root/'tools'/'bench_report.py', 'bench_report')
PIECES = ['readme_table', 'demo_goals', 'small_objects_summary', 'saliency_table', 'transformers_table', 'box_pass_summary', 'refit_table',
          'batched_table', 'localization_table', 'trust_summary', 'spg_summary']

@pytest.mark.parametrize('piece', PIECES)
def test_report_renders(piece):
    "Every table and sentence of the docs renders from the committed results files."
    out = getattr(B, piece)()
    assert out.strip() and 'no results file' not in out

def test_readme_numbers_from_results():
    "The README's results table is the one bench_report renders from bench/results/*.json (regenerate: `make readme`)."
    table = B.readme_table()
    assert table in (root/'README.md').read_text()
    r = B.result('crop_pass')
    assert f"{r['crop_pass_vs_get_preds']:.2f}x `learn.get_preds`" in table

@pytest.mark.slow
def test_trust_quick_runs(tmp_path):
    "One real script end to end (the cheapest, about 10 s): `bench/trust.py --quick --out DIR` prints its keys last and writes its stamped files there."
    import os, subprocess
    env = {**os.environ, 'PYTHONPATH': str(root), 'OMP_NUM_THREADS': '1'}
    p = subprocess.run([sys.executable, str(root/'bench'/'trust.py'), '--quick', '--out', str(tmp_path)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    line = smoke.last_json(p.stdout)
    assert line is not None and all(k in line for k in smoke.SCRIPTS['trust'][1])
    d = json.loads((tmp_path/'trust.json').read_text())
    assert d['result'] == line and d['stamp']['command'].endswith(f'bench/trust.py --quick --out {tmp_path}')
    assert (tmp_path/'trust.md').exists()
