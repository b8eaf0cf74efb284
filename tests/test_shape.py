"""The code's shape (issue 33's "done when"): modules import only upstream modules' public names, `boxpass` does not
import `crop`, no function takes more than 8 parameters but the documented entry points, no exported cell is much over 50
lines. Each check reads the generated modules or the notebooks, so it fails on the change that breaks it."""
import ast, json
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'fastai_attncrop'
# The order data flows in (the brief's "Shape of the package"): a module may import only modules before it.
ORDER = ['data', 'layers', 'methods', 'engine', 'saliency', 'boxes', 'metrics', 'models', 'boxtable', 'crop', 'boxpass',
         'learner', 'spg', 'distributed', 'export', 'cli', 'demo']
# Documented entry points users call with many options (each documents them with docments); any other function,
# private helpers above all, takes at most 8 parameters (`self` and `*args`/`**kwargs` not counted).
ENTRY_POINTS = {'box_pass', 'attention_crop', 'zoom_predict', 'show_attention', 'saliency_maps', 'show_saliency',
                'export_boxes', 'export_crops', 'review_sheet', 'attention_dls', 'make_shapes', 'run_demo',
                'distrib_attention_crop', 'main', 'boxes'}   # the last two: `@call_parse` command lines
MAX_PARAMS, MAX_CELL_LINES = 8, 55   # "no export cell over ~50 lines"

def _imports(path):
    "(module, names) of every import of a sibling module in `path`, at any depth (lazy imports inside functions too)."
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom): continue
        mod = node.module or ''
        if node.level == 1: yield mod.split('.')[0], [a.name for a in node.names]
        elif mod.startswith('fastai_attncrop.'): yield mod.split('.')[1], [a.name for a in node.names]

def test_modules_import_only_upstream_public_names():
    bad = []
    for m in ORDER:
        for dep, names in _imports(PKG/f'{m}.py'):
            if dep not in ORDER: continue
            if ORDER.index(dep) >= ORDER.index(m): bad.append(f'{m} imports {dep} (downstream or itself)')
            bad += [f'{m} imports private {dep}.{n}' for n in names if n.startswith('_')]
    assert bad == []

def test_boxpass_does_not_import_crop():
    assert 'crop' not in {dep for dep, _ in _imports(PKG/'boxpass.py')}

def _params(fn):
    a = fn.args
    return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ('self', 'cls')]

def test_no_function_has_more_than_8_parameters_but_entry_points():
    wide = [f'{f.stem}.{n.name} ({len(_params(n))})' for f in sorted(PKG.glob('*.py')) if not f.stem.startswith('_')
            for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and len(_params(n)) > MAX_PARAMS and n.name not in ENTRY_POINTS]
    assert wide == []

def test_entry_points_are_public_and_exist():
    "The exemption list names real public functions (a renamed one would otherwise exempt nothing, silently)."
    defined = {n.name for f in PKG.glob('*.py') for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.FunctionDef)}
    assert ENTRY_POINTS <= defined, ENTRY_POINTS - defined

@pytest.mark.parametrize('nb', sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb')))
def test_no_long_export_cells(nb):
    cells = json.loads((ROOT/'nbs'/nb).read_text())['cells']
    long = [(i, len(''.join(c['source']).splitlines())) for i, c in enumerate(cells) if c['cell_type'] == 'code'
            and ''.join(c['source']).lstrip().startswith(('#| export', '#|export'))
            and len(''.join(c['source']).splitlines()) > MAX_CELL_LINES]
    assert long == [], f"{nb}: export cells (index, lines) over {MAX_CELL_LINES} lines: {long}"
