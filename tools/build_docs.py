"""Build the documentation site offline (quarto, which nbdev's own renderer needs, cannot be installed here).

Every notebook in `nbs/` becomes one HTML page, in three steps, each redone only for notebooks that changed:

1. execute: stale notebooks are copied to `_build/stage/` and run there by `nbdev-test --save`, which writes their
   outputs back (figures, tables); successful ones move to `_build/exec/`. This is the project's notebook test.
2. process: nbdev's own processors (`nbdev.processors.FilterDefaults`, as `nbdev-preview` applies them) turn each
   executed notebook into its documentation form: frontmatter from the title cell, `show_doc` cells added and run
   for every exported function, exported and hidden cells removed, links to documented names added. The outputs
   of the other cells are those of the nbdev-test run (`doc_filters`).
3. render: nbconvert's basic HTML template renders the processed notebook (figures embedded as data URIs); the
   quarto cell options nbdev leaves (`echo`, `output`, `include`) are applied here; every page gets
   a sidebar linking all pages: home, tutorials (`*tutorial*` notebooks), the benchmarks page and the API reference
   (the rest); `nbs/images/` is copied beside the pages.

Output: `_site/` (git-ignored); `_site/pages.json` lists every page with its title and source notebook.

    python tools/build_docs.py            # execute what changed, process, render
    python tools/build_docs.py --execute --force  # only step 1, every notebook (what `make nbtest` runs); ends with
                                                  # a table of each notebook's time and slowest cell
    python tools/build_docs.py --only tutorial  # a partial site of the matching notebooks, while writing them
"""
from __future__ import annotations
import argparse, hashlib, html, json, os, re, shutil, subprocess, sys, time, warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

root = Path(__file__).resolve().parents[1]
NBS, BUILD, SITE = root/'nbs', root/'_build', root/'_site'
EXEC, STAGE, BODY = BUILD/'exec', BUILD/'stage', BUILD/'body'
PKG = 'fastai_attncrop'

# ---------------------------------------------------------------------------------------------------- notebooks
def notebooks(nbs=NBS) -> list[Path]:
    "Every notebook in `nbs`, in file-name order, as `nbdev-test` finds them (no `_`/`.` names)."
    return sorted(p for p in nbs.glob('*.ipynb') if not p.name.startswith(('_', '.')))

def page_name(nb: Path) -> str:
    "The page a notebook renders to, as nbdev names it: `02_boxes.ipynb` -> `boxes.html`."
    return re.sub(r'^\d+[a-z]?_', '', nb.stem) + '.html'

def section(nb: Path) -> str:
    if nb.stem == 'index': return 'Home'
    if 'tutorial' in nb.stem: return 'Tutorials'
    if 'benchmarks' in nb.stem: return 'Benchmarks'
    return 'API reference'

def _digest(nb: Path) -> str:
    "Hash of a notebook and of everything it runs against (the package, the project's config)."
    h = hashlib.sha256(nb.read_bytes())
    for p in sorted((root/PKG).glob('*.py')) + [root/'pyproject.toml']: h.update(p.read_bytes())
    return h.hexdigest()

def _stamp(nb: Path) -> Path: return EXEC/(nb.name + '.sha256')

def stale(nbs: list[Path]) -> list[Path]:
    return [nb for nb in nbs if not (EXEC/nb.name).exists() or not _stamp(nb).exists()
            or _stamp(nb).read_text() != _digest(nb)]

# ---------------------------------------------------------------------------------------------------- 1. execute
def _has_code(nb: Path) -> bool: return any(c['cell_type'] == 'code' for c in json.loads(nb.read_text())['cells'])

def execute(nbs: list[Path], n_workers=2, force=False) -> list[Path]:
    "Run the stale notebooks among `nbs` (all of them with `force`) with `nbdev-test --save`; returns the failed ones."
    todo = list(nbs) if force else stale(nbs)
    print(f"execute: {len(todo)} of {len(nbs)} notebooks changed since their last run", flush=True)
    if not todo: return []
    shutil.rmtree(STAGE, ignore_errors=True); STAGE.mkdir(parents=True); EXEC.mkdir(parents=True, exist_ok=True)
    digests = {nb.name: _digest(nb) for nb in todo}
    for nb in todo: shutil.copy2(nb, STAGE/nb.name)
    t0 = time.time()
    for nb in todo: os.utime(STAGE/nb.name, (t0 - 10, t0 - 10))  # a saved notebook is newer than t0
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'),
           'PYTHONPATH': os.pathsep.join(filter(None, [str(root), os.environ.get('PYTHONPATH')]))}
    nbdev_test = Path(sys.executable).parent/'nbdev-test'
    cmd = [str(nbdev_test), str(STAGE), '--save', '--n-workers', str(min(n_workers, len(todo))), '--timing']
    rc = subprocess.run(cmd, cwd=root, env=env).returncode
    failed = []
    for nb in todo:
        staged = STAGE/nb.name
        if staged.stat().st_mtime >= t0 or not _has_code(staged):   # nbdev-test saves nothing for a notebook without code
            shutil.move(staged, EXEC/nb.name); _stamp(nb).write_text(digests[nb.name])
        else: failed.append(nb)
    if rc and not failed: failed = todo  # nbdev-test failed without telling which: trust nothing it ran
    print(f"execute: {time.time() - t0:.0f} s", flush=True)
    print_timing([EXEC/nb.name for nb in todo if nb not in failed])
    return failed

def cell_times(nb: Path) -> list[tuple[float, int, str]]:
    "(seconds, cell number, first code line) of each code cell of an executed notebook, from the times `nbdev-test --save` keeps in its metadata."
    res = []
    for i, c in enumerate(json.loads(nb.read_text())['cells'], start=1):
        t = (c.get('metadata', {}).get('execution') or {}).get('total')
        if c['cell_type'] != 'code' or t is None: continue
        src = c['source'] if isinstance(c['source'], str) else ''.join(c['source'])
        first = next((l.strip() for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#|')), '')
        res.append((float(t), i, first))
    return res

def print_timing(nbs: list[Path], width=60):
    "A table of each notebook's run time (its cells' sum) and slowest cell, slowest first, and the slowest cell of all."
    rows = [(sum(t for t, *_ in ts), nb.name, max(ts)) for nb in nbs if nb.exists() and (ts := cell_times(nb))]
    if not rows: return
    print(f"\n{'notebook':<40} {'total':>7}  {'slowest cell':>12}  first line of that cell", flush=True)
    for tot, name, (t, i, first) in sorted(rows, key=lambda r: -r[0]):
        print(f"{name:<40} {tot:6.1f}s  {t:6.1f}s #{i:<4} {first[:width]}")
    tot, name, (t, i, first) = max(rows, key=lambda r: r[2][0])
    print(f"slowest cell overall: {name} cell #{i}, {t:.1f} s: {first[:width]}\n", flush=True)

# ---------------------------------------------------------------------------------------------------- 2. process
_SHOW_DIRS = {'export', 'exports', 'exporti', 'exec_doc'}

def _imports_only(src: str) -> str:
    "The import statements of a cell's source (empty if it has none or does not parse)."
    import ast
    try: tree = ast.parse(src)
    except SyntaxError: return ''
    return '\n'.join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))

def doc_filters():
    "nbdev's `FilterDefaults`, with its `exec_show_docs` made for notebooks that `nbdev-test` already ran."
    from nbdev.processors import FilterDefaults, exec_show_docs
    class exec_show_docs_executed(exec_show_docs):
        """Run exported and `show_doc` cells as nbdev does; of the other cells, only their imports (nbdev runs the whole
        cell when it mixes imports with other code, which fails on names an earlier, unrun cell defines), keeping
        the outputs of the real run."""
        def __call__(self, cell):
            if cell.cell_type != 'code' or not cell.get('source') or getattr(cell, 'has_sd', False) \
               or (getattr(cell, 'directives_', {}) or {}).keys() & _SHOW_DIRS or cell.source.lstrip().startswith('show_doc'):
                return super().__call__(cell)
            src, outs = cell.source, cell.get('outputs')
            try:
                cell.source = _imports_only(src)
                if cell.source: super().__call__(cell)
            finally:
                cell.source = src
                if outs is not None: cell['outputs'] = outs
    class DocFilters(FilterDefaults):
        def base_procs(self): return [exec_show_docs_executed if p is exec_show_docs else p for p in super().base_procs()]
    return DocFilters()

def process(nb_path: Path):
    "Apply nbdev's doc processors to the executed notebook at `nb_path` (run with the notebook's folder as cwd)."
    from fastcore.nbio import read_nb
    warnings.filterwarnings('ignore', message='Found cells containing imports')
    nb = read_nb(nb_path)
    cwd = os.getcwd(); os.chdir(nb_path.parent)
    try: doc_filters()(nb)
    finally: os.chdir(cwd)
    return nb

# ---------------------------------------------------------------------------------------------------- 3. render
_re_opt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
_re_progress = re.compile(r'\|[█\-]*\|\s+\d+(\.\d+)?% \[')
_re_qattr = re.compile(r'(\]\([^)]*\))\{[^}\n]*\}')  # quarto's [text](url){attrs}
_re_fdiv = re.compile(r'^:::+\s*(\{([^}]*)\})?\s*$', re.M)
_re_ansi = re.compile(r'\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])')

def _options(src: str):
    "Split the leading `#| key: value` quarto options off a code cell."
    opts, lines = {}, src.splitlines()
    while lines and (m := _re_opt.match(lines[0])):
        opts[m.group(1)] = m.group(2).strip('"\'').lower() or 'true'; lines.pop(0)
    return opts, '\n'.join(lines).strip('\n')

def _clean_stream(text: str, name: str) -> str:
    "What a terminal would finally show: carriage returns applied, progress bars and warnings left out."
    out, skip = [], False
    for line in _re_ansi.sub('', text).split('\n'):
        line = line.rstrip('\r').split('\r')[-1]
        if _re_progress.search(line) or line.strip() == '█': continue
        if name == 'stderr' and re.search(r'\w+Warning:', line): skip = True; continue
        if skip and line.startswith('  '): continue
        skip = False
        out.append(line)
    return '\n'.join(out).strip('\n')

def _fdivs(md: str) -> str:
    "Quarto fenced divs (`::: {.callout-note}` ... `:::`) as HTML divs."
    def div(m):
        if not m.group(1): return '\n</div>\n'
        classes = ' '.join(c[1:] for c in m.group(2).split() if c.startswith('.'))
        return f'\n<div class="{html.escape(classes)}">\n'
    return _re_fdiv.sub(div, md)

def prepare(nb):
    "Turn a processed notebook into a plain one nbconvert renders: returns (title, description, nbformat node)."
    import nbformat
    title = desc = ''
    cells = []
    for c in nb.cells:
        src = c.get('source')
        if not src: continue  # hidden by nbdev (`hide`, `export`, header dashes)
        if c.cell_type == 'raw':
            if src.lstrip().startswith('---'):  # nbdev's frontmatter
                import yaml
                fm = yaml.safe_load(src.strip().strip('-')) or {}
                title, desc = fm.get('title', title), fm.get('description', desc)
            continue
        if c.cell_type == 'markdown':
            if src.startswith('<!-- WARNING'): continue
            cells.append(nbformat.v4.new_markdown_cell(_fdivs(_re_qattr.sub(r'\1', src)))); continue
        opts, code = _options(src)
        if opts.get('include') == 'false': continue
        outputs = [] if opts.get('output') == 'false' else [dict(o) for o in c.get('outputs', [])]
        kept = []
        for o in outputs:
            if o.get('output_type') == 'stream':
                o['text'] = _clean_stream(''.join(o['text']), o.get('name'))
                if not o['text'].strip(): continue
            data = o.get('data', {})
            md = data.get('text/markdown')
            if md is not None:
                md = ''.join(md) if isinstance(md, list) else md
                data['text/markdown'] = _fdivs(_re_qattr.sub(r'\1', md))
            kept.append(o)
        cell = nbformat.v4.new_code_cell(code, outputs=[nbformat.from_dict(o) for o in kept])
        tags = []
        if opts.get('echo') == 'false' or not code.strip(): tags.append('remove_input')
        if tags: cell.metadata['tags'] = tags
        if tags == ['remove_input'] and not kept: continue
        cells.append(cell)
    node = nbformat.v4.new_notebook(cells=cells)
    node.metadata['language_info'] = {'name': 'python', 'pygments_lexer': 'ipython3'}
    return title, desc, node

def render_body(node) -> str:
    "The notebook's cells as HTML (nbconvert's basic template: no page, no prompts, images as data URIs)."
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    cfg = Config()
    cfg.TagRemovePreprocessor.enabled = True
    cfg.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    ex = HTMLExporter(template_name='basic', config=cfg, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = ex.from_notebook_node(node)
    return body

def _full_description(nb_path: Path) -> str:
    "The whole `> ...` summary under the notebook's title (nbdev's frontmatter keeps only its first line)."
    cells = json.loads(nb_path.read_text())['cells']
    md = next((''.join(c['source']) for c in cells if c['cell_type'] == 'markdown'), '')
    if not md.lstrip().startswith('# '): return ''
    return ' '.join(l[1:].strip() for l in md.splitlines() if l.startswith('>'))

def build_page(nb_name: str) -> dict:
    "Process and render one executed notebook; the result is cached in `_build/body/`."
    nb_path = EXEC/nb_name
    title, desc, node = prepare(process(nb_path))
    desc = _full_description(nb_path) or desc
    res = dict(source=f'nbs/{nb_name}', page=page_name(nb_path), title=title or nb_path.stem, description=desc,
               section=section(nb_path), body=render_body(node),
               n_figures=sum('image/png' in o.get('data', {}) for c in node.cells for o in c.get('outputs', [])))
    (BODY/(nb_name + '.json')).write_text(json.dumps(res))
    return res

def _links(body: str, pages: set, doc_url: str) -> str:
    "Links into the published docs (added by nbdev) point to this site's pages instead."
    def sub(m):
        page, frag = m.group(1), m.group(2) or ''
        return f'href="{page}{frag}"' if page in pages else m.group(0)
    if doc_url: body = re.sub(rf'href="{re.escape(doc_url)}/?([\w.-]+\.html)(#[^"]*)?"', sub, body)
    return body

def _doc_url() -> str:
    try:
        import tomllib
        return tomllib.loads((root/'pyproject.toml').read_text())['project']['urls']['Documentation'].rstrip('/')
    except Exception: return ''

SECTIONS = ('Home', 'Tutorials', 'Benchmarks', 'API reference')

def title_html(title: str) -> str:
    "A page title as HTML, its `code` spans as <code>."
    return re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(title))

def sidebar(pages: list[dict], current: str) -> str:
    parts = [f'<a class="brand" href="index.html">{PKG}</a>']
    for sec in SECTIONS:
        items = [p for p in pages if p['section'] == sec and p['page'] != 'index.html']
        if not items: continue
        parts.append(f'<h4>{sec}</h4><ul>')
        for p in items:
            cls = ' class="current"' if p['page'] == current else ''
            parts.append(f'<li><a{cls} href="{p["page"]}">{title_html(p["title"])}</a></li>')
        parts.append('</ul>')
    return '\n'.join(parts)

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {pkg}</title><link rel="stylesheet" href="style.css"></head>
<body><nav class="sidebar" id="sidebar">{sidebar}</nav>
<main class="content"><header class="page-header"><h1 class="title">{h1}</h1>{desc}</header>
{body}
<footer>Built from <code>{source}</code>: executed by <code>nbdev-test</code>, processed by nbdev, rendered by nbconvert.</footer>
</main></body></html>
"""

def write_site(pages: list[dict], out=SITE):
    from nbconvert.filters import markdown2html
    shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
    names, doc_url = {p['page'] for p in pages}, _doc_url()
    for p in pages:
        desc = markdown2html(p['description']) if p['description'] else ''
        desc = f'<div class="description">{desc}</div>' if desc else ''
        (out/p['page']).write_text(PAGE.format(title=html.escape(p['title'].replace('`', '')), h1=title_html(p['title']), pkg=PKG, sidebar=sidebar(pages, p['page']),
            desc=desc, body=_links(p['body'], names, doc_url), source=p['source']))
    (out/'style.css').write_text(style())
    if (NBS/'images').is_dir(): shutil.copytree(NBS/'images', out/'images')   # pictures the markdown cells link to
    (out/'pages.json').write_text(json.dumps([{k: v for k, v in p.items() if k != 'body'} for p in pages], indent=1))

def style() -> str:
    from pygments.formatters import HtmlFormatter
    return (root/'tools'/'docs.css').read_text() + '\n' + HtmlFormatter(style='default').get_style_defs('.highlight')

def build(n_workers=2, execute_only=False, only=None, force=False) -> int:
    nbs = [nb for nb in notebooks() if not only or re.search(only, nb.name)]
    t0 = time.time()
    failed = execute(nbs, n_workers, force)
    if failed:
        print('notebooks that failed: ' + ', '.join(nb.name for nb in failed), file=sys.stderr); return 1
    if execute_only: return 0
    BODY.mkdir(parents=True, exist_ok=True)
    todo = [nb.name for nb in nbs if not (BODY/(nb.name + '.json')).exists()
            or (BODY/(nb.name + '.json')).stat().st_mtime < (EXEC/nb.name).stat().st_mtime]
    t1 = time.time()
    # each page in a fresh process: nbdev's processors run its imports and `show_doc` cells in an IPython shell
    run = lambda name: subprocess.run([sys.executable, __file__, '--page', name], cwd=root, capture_output=True, text=True)
    with ThreadPoolExecutor(max(1, min(n_workers, len(todo)))) as ex: results = list(ex.map(run, todo))
    bad = [(name, r) for name, r in zip(todo, results) if r.returncode]
    for name, r in bad: print(f"processing {name} failed:\n{r.stdout[-2000:]}{r.stderr[-4000:]}", file=sys.stderr)
    if bad: return 1
    pages = [json.loads((BODY/(nb.name + '.json')).read_text()) for nb in nbs]
    write_site(pages)
    print(f"docs: {len(pages)} pages in {SITE.relative_to(root)}/ ({len(todo)} processed and rendered in "
          f"{time.time() - t1:.0f} s; {time.time() - t0:.0f} s in all)")
    return 0

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--execute', action='store_true', help='only execute the notebooks that changed')
    ap.add_argument('--n-workers', type=int, default=2)
    ap.add_argument('--only', help='regex: only the notebooks whose file name matches (a partial site, for authoring)')
    ap.add_argument('--force', action='store_true', help='execute every notebook, changed or not')
    ap.add_argument('--page', help=argparse.SUPPRESS)  # internal: process and render one executed notebook
    a = ap.parse_args()
    if a.page: build_page(a.page); sys.exit(0)
    sys.exit(build(a.n_workers, a.execute, a.only, a.force))
