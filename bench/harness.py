"""The one harness of the benchmark scripts: the stamp, the results writer, the shared command-line options and the
shared learner builders.

Every script under `bench/` ends the same way: `finish(name, result, md, args, settings=...)` writes
`results/<name>.json` (the stamp, the settings, `result`: the dict of the final JSON line, and any `tables`) and
`results/<name>.md` (a title, the stamp line, the script's markdown, the final JSON line), both atomically, then prints
the final JSON line as the last line of output. A `--quick` run (tiny data, seconds to a minute: `make bench-smoke`)
writes to the git-ignored `bench/out/` instead, so that it never replaces a real run's file.

    import harness as H                      # bench/ is on sys.path when a script runs
    p = H.parser(__doc__)                    # --quick, --out, --threads
    a = p.parse_args(); H.setup(a)
    ...
    H.finish('crop_pass', result, md, a, settings=vars(a))

The learner builder `shapes_learner` (the package's `fastai_attncrop.models.shapes_learner`, quiet) is the one place the
scripts build a "synthetic folder -> DataLoaders -> learner" block.
"""
import argparse, datetime, json, os, platform, shlex, subprocess, sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH/'results'       # committed: the runs the docs quote
OUT = BENCH/'out'               # git-ignored: --quick runs and other trial runs
CACHE = BENCH/'cache'           # git-ignored: generated sets, fine-tuned weights
DATA = REPO.parent/'shared'/'data'   # the project's benchmark photographs (never committed; absent on CI)

# ------------------------------------------------------------------------------------------------------------ stamp
def _cpu_model() -> str:
    try:
        for l in Path('/proc/cpuinfo').read_text().splitlines():
            if l.startswith('model name'): return l.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()

def _git(*args) -> str:
    try: return subprocess.run(['git', '-C', str(REPO), *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError): return ''

def _version(mod):
    try: return __import__(mod).__version__
    except Exception: return None

def command(argv=None, script=None) -> str:
    "The command line that ran this script, as one would type it from the repository root."
    argv = sys.argv if argv is None else argv
    script = script or argv[0]
    try: script = Path(script).resolve().relative_to(REPO).as_posix()
    except ValueError: pass
    return 'PYTHONPATH=. python ' + shlex.join([script, *argv[1:]])

def stamp(argv=None) -> dict:
    "Date (UTC), machine (OS, CPU, cores, GPU, load average), versions, git commit and the exact command of this run."
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    commit = _git('rev-parse', '--short', 'HEAD')
    if commit and _git('status', '--porcelain', '--untracked-files=no'): commit += '+dirty'
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                machine=dict(os=f"{platform.system()} {platform.machine()}", cpu=_cpu_model(), cores=os.cpu_count(),
                             cores_usable=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
                             gpu=gpu, torch_threads=torch.get_num_threads(), load_average=round(os.getloadavg()[0], 1)),
                versions=dict(python=platform.python_version(), torch=torch.__version__, fastai=_version('fastai'),
                              fastai_attncrop=_version('fastai_attncrop')),
                commit=commit or None, command=command(argv))

def stamp_line(s:dict) -> str:
    "The stamp as one markdown paragraph (the header of every results file)."
    if 'transcribed_from' in s:
        return (f"{s.get('date')}; {s.get('machine')}" + (f"; commit {s['commit']}" if s.get('commit') else '')
                + f"; command `{s.get('command')}`; transcribed from `{s['transcribed_from']}` "
                f"(a run from before the harness)" + (f"; {s['note']}" if s.get('note') else '') + '.')
    m, v = s['machine'], s['versions']
    load = m.get('load_average')
    return (f"{s['date']}; {m['os']}, {m['cpu']}, {m['cores']} CPU cores" + (f", GPU {m['gpu']}" if m.get('gpu') else ', no GPU')
            + f", {m['torch_threads']} torch threads" + ('' if load is None else f", load average {load} at the end")
            + f"; torch {v['torch']}, fastai {v['fastai']}, fastai_attncrop {v['fastai_attncrop']}; commit {s.get('commit')}."
            + f"\nCommand: `{s['command']}`" + (f" ({s['seconds']:.0f} s)" if s.get('seconds') is not None else '') + '.')

# ------------------------------------------------------------------------------------------------------------ writer
def _atomic(path:Path, text:str):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

def _plain(o):
    "JSON-safe: numpy scalars and arrays, paths, NaN as null."
    import math
    if isinstance(o, dict): return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [_plain(v) for v in o]
    if hasattr(o, 'tolist') and not isinstance(o, (str, bytes)): return _plain(o.tolist())
    if isinstance(o, float) and not math.isfinite(o): return None
    if isinstance(o, Path): return str(o)
    return o

def results_dir(args=None) -> Path:
    "Where a run writes: `--out` if given, `bench/out/` for a `--quick` run, else `bench/results/`."
    out = getattr(args, 'out', None)
    if out: return Path(out)
    return OUT if getattr(args, 'quick', False) else RESULTS

def write_results(name:str, result:dict, md:str='', out=None, settings:dict=None, tables:dict=None, title:str=None,
                  stamp_:dict=None, seconds:float=None, **extra) -> tuple:
    """Write `<out>/<name>.json` (stamp, settings, `result`: the final JSON line, `tables`, `extra`) and `<out>/<name>.md`
    (title, stamp line, `md`, the final JSON line), each atomically; `out` defaults to `bench/results/`. Returns both paths."""
    out = Path(out) if out is not None else RESULTS
    s = dict(stamp_ or stamp())
    if seconds is not None: s['seconds'] = round(seconds)
    data = _plain(dict(name=name, stamp=s, settings=settings or {}, result=result, **({'tables': tables} if tables else {}), **extra))
    j, m = out/f'{name}.json', out/f'{name}.md'
    _atomic(j, json.dumps(data, indent=1) + '\n')
    body = md.strip()
    if body.startswith('# '): title, body = body.split('\n', 1)[0][2:], body.split('\n', 1)[1].strip() if '\n' in body else ''
    _atomic(m, f"# {title or name}\n\n{stamp_line(s)}\n\n" + (body + '\n\n' if body else '')
            + "Final JSON line:\n\n```json\n" + json.dumps(data['result']) + "\n```\n")
    return j, m

def finish(name:str, result:dict, md:str, args=None, settings:dict=None, t0:float=None, **kw) -> dict:
    "Write the results of `name` where `args` says (`results_dir`) and print `result` as the last line of output."
    import time
    settings = settings if settings is not None else {k: v for k, v in vars(args or argparse.Namespace()).items() if k != 'argv'}
    j, m = write_results(name, result, md, results_dir(args), settings=settings, seconds=None if t0 is None else time.time() - t0, **kw)
    print(f"results: {j.relative_to(REPO) if j.is_relative_to(REPO) else j}, {m.name}", file=sys.stderr)
    print(json.dumps(_plain(result)), flush=True)
    return result

def load(name:str, folder=None) -> dict:
    "The results file `<folder>/<name>.json` (default `bench/results/`) as a dict."
    return json.loads((Path(folder or RESULTS)/f'{name}.json').read_text())

# ------------------------------------------------------------------------------------------------------------ options
def parser(doc:str, quick:str='tiny data, seconds to a minute; results in bench/out/') -> argparse.ArgumentParser:
    "An ArgumentParser with the options every script shares: `--quick`, `--out`, `--threads`."
    p = argparse.ArgumentParser(description=(doc or '').strip().split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help=f'a smoke run: {quick}')
    p.add_argument('--out', default=None, help='folder of the results files (default bench/results/, --quick: bench/out/)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: the torch default)')
    return p

def setup(args):
    "Apply the shared options: torch threads."
    if getattr(args, 'threads', 0):
        import torch
        torch.set_num_threads(args.threads)

def need_data(*paths, quick=False) -> str | None:
    """None when every path exists. Otherwise a message naming the missing folder: a `--quick` run returns it (the caller
    skips that part and says so); a full run stops with it."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if not missing: return None
    msg = f"{', '.join(missing)} is not there: this part needs the project's benchmark photographs (../shared/data, see its README)"
    if quick: return msg
    raise SystemExit(msg)

def skipped(name:str, reason:str, args, keys=(), settings=None) -> dict:
    "Finish a run that could not run (its data absent): the stamped file says why; the JSON line has `skipped` and `keys` as null."
    print(f"{name}: skipped: {reason}", file=sys.stderr)
    return finish(name, {'skipped': reason, **{k: None for k in keys}}, f"Skipped: {reason}.", args, settings=settings)

# ------------------------------------------------------------------------------------------------------------ learners
def shapes_learner(path, arch=None, widths=None, metrics=None, **kwargs):
    """`fastai_attncrop.models.shapes_learner` for the scripts: the set made at `path` without its progress bar (reused when made
    with the same settings), `small_cnn` from scratch (`widths`: its channels), a model function or a `PRETRAINED` name, no metrics
    unless asked; `kwargs`: the helper's (`input_size`, `bs`, `seed`, `epochs`, `lr`, `make_shapes`'s settings, the learner's)."""
    import contextlib, io, torch
    from functools import partial
    from fastai_attncrop.models import small_cnn, shapes_learner as build
    if widths is not None: arch = partial(small_cnn, widths=tuple(widths))
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark   # `set_seed(reproducible=True)` sets them
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return build(arch, path, metrics=metrics, **kwargs)
    finally: torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn   # the timings run as before

def make_shapes_quiet(*args, **kwargs):
    "`make_shapes` without its progress bar."
    import contextlib, io
    from fastai_attncrop.data import make_shapes
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()): return make_shapes(*args, **kwargs)
