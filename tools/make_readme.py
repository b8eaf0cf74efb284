"""Write README.md from nbs/index.ipynb (quarto, which `nbdev-readme` needs, cannot be installed offline).

Markdown cells are copied as they are; code cells become fenced Python blocks without their `#|` directives;
cells marked `#| hide` (or `#| include: false`) are left out. Links to pictures in `nbs/images/` are pointed there from
the repository root, and links to other pages of the docs (`tutorial_quickstart.html`) to their notebooks. Outputs are not copied, so the README does not
change with timings or random numbers of a notebook run. One exception: a code cell marked `#| readme: output` is run here
and its value (markdown: the results table, read from bench/results/*.json by tools/bench_report.py) replaces it, so the
README's numbers come from the same files as the docs' and change only when a results file does.
"""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]

def _directives(src):
    return [l[3:].strip() for l in src.splitlines() if l.startswith('#|')]

def _relink(md):
    "Relative links of a docs page, as seen from the README at the repository root."
    md = re.sub(r'\]\(images/', '](nbs/images/', md)
    pages = {re.sub(r'^\d+[a-z]?_', '', p.stem) + '.html': p.name for p in (root/'nbs').glob('*.ipynb')}
    return re.sub(r'\]\(([\w.-]+\.html)\)', lambda m: f"](nbs/{pages[m[1]]})" if m[1] in pages else m[0], md)

def _output(src):
    "The markdown value of a `#| readme: output` cell: its code run (tools/ importable), the last line's value."
    sys.path.insert(0, str(root/'tools'))
    try:
        lines = [l for l in src.splitlines() if not l.startswith('#|') and l.strip()]
        ns = {'__name__': 'make_readme_cell'}
        exec('\n'.join(lines[:-1]), ns)
        v = eval(lines[-1], ns)
    finally: sys.path.remove(str(root/'tools'))
    return getattr(v, 'data', v) if not isinstance(v, str) else v

def render(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        ds = _directives(src)
        if 'hide' in ds or 'include: false' in ds or any(d.startswith('default_exp') for d in ds): continue
        if cell['cell_type'] == 'code' and 'readme: output' in ds:
            parts.append(_relink(str(_output(src)).strip())); continue
        body = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
        if not body: continue
        if cell['cell_type']=='markdown': body = _relink(body)
        parts.append(body if cell['cell_type']=='markdown' else f"```python\n{body}\n```")
    note = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->"
    return note + '\n\n' + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    out = root/'README.md'
    text = render(root/'nbs'/'index.ipynb')
    if not out.exists() or out.read_text() != text: out.write_text(text)
    sys.exit(0)
