"""The package as users install it: `python -m build` makes an sdist and a wheel, and the wheel, installed in a fresh
virtual environment, gives the console script `attncrop` and `import fastai_attncrop.all`.

The fresh environment takes its dependencies (torch, fastai, ...) from the environment running the tests, appended to
its path by a `.pth` file (as `--system-site-packages` would, but for a virtual environment's packages), so nothing is
downloaded; the package itself comes from the wheel, installed without its dependencies and without an index."""
import os, site, subprocess, sys, tarfile, venv, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def sh(*cmd, cwd=None, timeout=600):
    "Run `cmd` without PYTHONPATH (which would import the source tree); return its stdout, after checking its status."
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout

@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv(tmp_path):
    dist = tmp_path/'dist'
    # --no-isolation: the build backend (setuptools>=77, a dev extra) from this environment, not downloaded
    sh(sys.executable, '-m', 'build', '--no-isolation', '--outdir', dist, ROOT, cwd=tmp_path)
    whl, sdist = sorted(dist.glob('*.whl')), sorted(dist.glob('*.tar.gz'))
    assert len(whl) == 1 and len(sdist) == 1, sorted(p.name for p in dist.iterdir())
    names = zipfile.ZipFile(whl[0]).namelist()
    for f in ['fastai_attncrop/cli.py', 'fastai_attncrop/all.py', 'fastai_attncrop/__main__.py']: assert f in names, f
    ep = zipfile.ZipFile(whl[0]).read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    assert 'attncrop = fastai_attncrop.cli:main' in ep
    with tarfile.open(sdist[0]) as t: snames = {n.split('/', 1)[-1] for n in t.getnames()}
    for f in ['pyproject.toml', 'README.md', 'fastai_attncrop/cli.py']: assert f in snames, f

    env = tmp_path/'venv'
    venv.EnvBuilder(with_pip=False).create(env)
    py = env/'bin'/'python'
    purelib = Path(sh(py, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))').strip())
    (purelib/'_test_deps.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
    sh(sys.executable, '-m', 'pip', '--python', py, 'install', '--quiet', '--no-deps', '--no-index', whl[0], cwd=tmp_path)

    where = sh(py, '-c', 'import fastai_attncrop, fastai_attncrop.all; print(fastai_attncrop.__file__)', cwd=tmp_path).strip().splitlines()[-1]
    assert Path(where).resolve() == (purelib/'fastai_attncrop'/'__init__.py').resolve(), where   # from the wheel, not the source tree
    h = sh(env/'bin'/'attncrop', '--help', cwd=tmp_path)
    for s in ['attncrop boxes', '--out', '--format', '--crops', '--review', '--no-progress']: assert s in h, s
    assert 'attncrop boxes' in sh(py, '-m', 'fastai_attncrop', 'boxes', '--help', cwd=tmp_path)
