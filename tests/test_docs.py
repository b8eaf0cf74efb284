"""The documentation site (`make docs`, tools/build_docs.py), opened in headless Chromium as a person would.

Every page is loaded from `_site/`; a full-page screenshot of each goes to `screenshots/` (git-ignored) for a
human to look at. Each page must have its notebook's title, every image on it must have loaded, no cell may show
a traceback, every sidebar link must open a page of the site (and every link between pages a page that exists), and the figures of the executed notebook must all
be on the page. Skipped, with the reason, where Chromium, chromedriver or selenium is missing; `.ci/run` installs
Debian's `chromium` and `chromium-driver`.
"""
import base64, json, os, re, shutil, subprocess, sys
from pathlib import Path
from urllib.parse import urlparse, unquote
import pytest

root = Path(__file__).resolve().parents[1]
SITE, SHOTS = root/'_site', root/'screenshots'
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
DRIVER = shutil.which('chromedriver') or '/usr/bin/chromedriver'
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--hide-scrollbars', '--window-size=1280,900']

def _why_skip():
    if not Path(CHROMIUM).exists(): return "Chromium not found (Debian: apt-get install chromium chromium-driver)"
    if not Path(DRIVER).exists(): return "chromedriver not found (Debian: apt-get install chromium-driver)"
    try: import selenium  # noqa: F401
    except ImportError: return "selenium not installed (it is in the dev extra: pip install -e '.[dev]')"
    return None

pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))

def nb_title(nb: Path) -> str:
    "The `# Title` of a notebook's first markdown cell, read from the source notebook itself."
    cells = json.loads(nb.read_text())['cells']
    md = next(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    return re.match(r'#\s+(.+)', md.strip()).group(1).strip().replace('`', '')  # `code` renders without its backticks

def source_notebooks():
    return sorted(p for p in (root/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))

@pytest.fixture(scope='module')
def site():
    "The built site: built here (only what changed since the last build) unless `make docs` just did it."
    r = subprocess.run([sys.executable, str(root/'tools'/'build_docs.py')], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, f"docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return {p['page']: p for p in json.loads((SITE/'pages.json').read_text())}

@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    os.environ.setdefault('SE_OFFLINE', 'true')  # never let selenium look for a driver online
    opts = Options()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}']: opts.add_argument(f)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()

_PAGE_JS = """
const imgs = [...document.querySelectorAll('img')];
return {title: document.title,
        h1: (document.querySelector('h1.title') || {}).textContent || '',
        images: imgs.map(i => ({src: i.getAttribute('src').slice(0, 40), complete: i.complete, width: i.naturalWidth})),
        n_main_images: document.querySelectorAll('main img').length,
        text: document.body.innerText,
        error_outputs: document.querySelectorAll('.output_error').length,
        sidebar: [...document.querySelectorAll('nav.sidebar a')].map(a => a.href),
        links: [...document.querySelectorAll('main a[href]')].map(a => a.href).filter(h => h.startsWith('file:'))};
"""

def check_page(drv, path: Path, title: str) -> tuple[dict, list]:
    "Open `path` in the browser; returns what it found and the list of problems a reader would see."
    drv.get(path.as_uri())
    drv.execute_async_script("const done = arguments[0]; "
        "if (document.readyState === 'complete') done(); else window.addEventListener('load', () => done());")
    info = drv.execute_script(_PAGE_JS)
    problems = []
    if title not in info['title'] or info['h1'].strip() != title:
        problems.append(f"title: expected {title!r}, page has <title> {info['title']!r} and <h1> {info['h1']!r}")
    for im in info['images']:
        if not im['complete'] or im['width'] == 0: problems.append(f"image did not load: {im['src']}...")
    if 'Traceback (most recent call last)' in info['text'] or info['error_outputs']:
        problems.append("a cell shows a traceback")
    if not info['sidebar']: problems.append("no sidebar links")
    for href in info['sidebar']:
        u = urlparse(href)
        target = Path(unquote(u.path))
        if u.scheme != 'file' or not target.is_file() or target.parent != path.parent:
            problems.append(f"sidebar link does not resolve to a page of the site: {href}")
    for href in set(info['links']):  # links between pages in the text (tutorials, API names linked by nbdev)
        if not Path(unquote(urlparse(href).path)).is_file(): problems.append(f"link to a missing page: {href}")
    return info, problems

def screenshot(drv, dest: Path, max_height=7000):
    "Full-page PNG (cut at `max_height` px) of the page open in `drv`."
    h = min(int(drv.execute_script('return document.documentElement.scrollHeight')), max_height)
    shot = drv.execute_cdp_cmd('Page.captureScreenshot', {'format': 'png', 'captureBeyondViewport': True,
                                                          'clip': {'x': 0, 'y': 0, 'width': 1280, 'height': h, 'scale': 1}})
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(base64.b64decode(shot['data']))

def test_checker_finds_broken_pages(browser, tmp_path):
    "The page check itself: a page with a wrong title, a missing image, a traceback and a dead link fails it."
    (tmp_path/'bad.html').write_text(
        '<!DOCTYPE html><html><head><title>Other</title></head><body><nav class="sidebar"><a href="gone.html">x</a></nav>'
        '<main><h1 class="title">Other</h1><img src="missing.png"><pre>Traceback (most recent call last):\n</pre>'
        '<a href="nowhere.html">x</a></main></body></html>')
    _, problems = check_page(browser, tmp_path/'bad.html', 'Expected title')
    text = '\n'.join(problems)
    for what in ['title:', 'image did not load', 'traceback', 'gone.html', 'nowhere.html']: assert what in text, (what, problems)

def test_every_notebook_has_a_page(site):
    "The site picks up every notebook of nbs/ by itself, tutorials included."
    nbs = source_notebooks()
    assert sorted(p['source'] for p in site.values()) == sorted(f'nbs/{nb.name}' for nb in nbs)
    assert sum(p['section'] == 'Tutorials' for p in site.values()) >= 6
    assert all((SITE/p).is_file() for p in site)

def test_pages_in_browser(site, browser):
    "Every page, screenshotted: title, images loaded, no traceback, sidebar links resolve, figures all kept."
    by_source = {p['source']: p for p in site.values()}
    failures = {}
    for nb in source_notebooks():
        p = by_source[f'nbs/{nb.name}']
        info, problems = check_page(browser, SITE/p['page'], nb_title(nb))
        screenshot(browser, SHOTS/(Path(p['page']).stem + '.png'))
        if len(info['sidebar']) < len(site) - 1: problems.append(f"sidebar lists {len(info['sidebar'])} links for {len(site)} pages")
        if info['n_main_images'] < p['n_figures']:
            problems.append(f"{p['n_figures']} figures in the executed notebook, {info['n_main_images']} on the page")
        if p['section'] == 'Tutorials' and p['n_figures'] == 0: problems.append("a tutorial without a single figure")
        if problems: failures[p['page']] = problems
    assert not failures, json.dumps(failures, indent=1)
