"""A real Label Studio (issue 31, item 3): the Label Studio export of `export_boxes` imported through the REST API
with the documented setup (local files served by Label Studio, a Local Storage over the images), every task's
prediction at the exported coordinates, every image URL answering 200, then Label Studio's own exports (the quick
JSON export, JSON_MIN and a snapshot with full predictions) read back with `read_labelstudio`. The same import of the
command line's export (`attncrop boxes LEARNER.pkl IMAGES --format labelstudio --document-root DIR`).

Label Studio lives in its own virtual environment, `.venv-labelstudio/` at the repository root (made once with
`pip install label-studio`; a migrated empty database is kept beside it, so later runs start in seconds). The server
listens on 127.0.0.1 only, on a free port, with a temporary data directory, and is stopped after. The test is
skipped, with the reason, when Label Studio cannot be installed, or with ATTNCROP_LABELSTUDIO=0.

The small exports of such a run are kept in tests/fixtures/labelstudio/ (regenerate them with
ATTNCROP_SAVE_LS_FIXTURES=1): the reader is tested on them without a server too."""
import fcntl, json, os, shutil, signal, socket, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path
import numpy as np, pandas as pd, pytest
from fastai_attncrop.crop import margin_cols
from fastai_attncrop.data import make_shapes, read_boxes_csv
from fastai_attncrop.export import export_boxes, export_table, read_labelstudio, LS_ROOT_VARS

REPO = Path(__file__).resolve().parents[1]
VENV = REPO/'.venv-labelstudio'
LS = VENV/'bin'/'label-studio'
TEMPLATE = VENV/'template-data'       # a migrated data directory with the test user: copied for each run
FIXTURES = Path(__file__).parent/'fixtures'/'labelstudio'
USER, PASSWORD, TOKEN = 'attncrop@example.com', 'attncrop-test-1', 'attncroptesttoken0123456789'
BOX = ['xmin', 'ymin', 'xmax', 'ymax']

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _get(url, token=TOKEN, timeout=10):
    req = urllib.request.Request(url, headers={'Authorization': f'Token {token}'} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as f: return f.status, f.read()

class Server:
    "A Label Studio server on 127.0.0.1:`port` over `data` (local files served from below `docroot`); `api` calls its REST API."
    def __init__(self, data, docroot, log):
        self.port, self.data, self.docroot, self.log = _free_port(), Path(data), Path(docroot), Path(log)
        self.url = f"http://127.0.0.1:{self.port}"
    def start(self, timeout=300):
        env = {**os.environ, 'LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED': 'true', 'LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT': str(self.docroot),
               'LABEL_STUDIO_BASE_DATA_DIR': str(self.data), 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ''}
        env.pop('VIRTUAL_ENV', None)
        self.proc = subprocess.Popen([str(LS), 'start', '--no-browser', '--port', str(self.port), '--internal-host', '127.0.0.1',
                                      '--data-dir', str(self.data), '--username', USER, '--password', PASSWORD, '--user-token', TOKEN,
                                      '--enable-legacy-api-token', '--skip-long-migrations', '--log-level', 'WARNING'],
                                     env=env, stdout=open(self.log, 'wb'), stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None: raise RuntimeError(f"label-studio exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if _get(self.url + '/health', None, 2)[0] == 200: return self
            except (urllib.error.URLError, OSError): pass
            time.sleep(1)
        self.stop(); raise RuntimeError(f"label-studio did not answer on {self.url} in {timeout} s:\n{self.log.read_text()[-3000:]}")
    def stop(self):
        if getattr(self, 'proc', None) is None or self.proc.poll() is not None: return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try: self.proc.wait(30)
        except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(10)
    def api(self, method, path, body=None):
        req = urllib.request.Request(self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={'Authorization': f'Token {TOKEN}', 'Content-Type': 'application/json'})
        try:
            with urllib.request.urlopen(req, timeout=60) as f: return json.loads(f.read() or b'null')
        except urllib.error.HTTPError as e: raise AssertionError(f"{method} {path}: HTTP {e.code} {e.read()[:1000]!r}") from None

def _install() -> str:
    "Make `.venv-labelstudio` (pip install label-studio) and its migrated template data directory, once; the reason to skip, or ''."
    if os.environ.get('ATTNCROP_LABELSTUDIO') == '0': return 'ATTNCROP_LABELSTUDIO=0'
    VENV.parent.mkdir(exist_ok=True)
    with open(REPO/'.venv-labelstudio.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                       # two test processes: one installs, the other waits
        if not (VENV/'.installed').exists():
            shutil.rmtree(VENV, ignore_errors=True)
            steps = [[sys.executable, '-m', 'venv', str(VENV)], [str(VENV/'bin'/'python'), '-m', 'pip', 'install', '--quiet', '--retries', '2', '--timeout', '30', 'label-studio']]
            for cmd in steps:
                try: r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                except (OSError, subprocess.TimeoutExpired) as e: r = None; err = str(e)
                if r is None or r.returncode:
                    shutil.rmtree(VENV, ignore_errors=True)
                    return f"label-studio cannot be installed ({' '.join(cmd[-2:])}): {(r.stderr[-500:] if r else err).strip()}"
            (VENV/'.installed').write_text('pip install label-studio\n')
        if not (TEMPLATE/'label_studio.sqlite3').exists():
            tmp = VENV/'template-data.tmp'
            shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir()
            s = Server(tmp, tmp, VENV/'template.log').start(timeout=900)   # the first start runs every migration
            s.stop()
            shutil.rmtree(TEMPLATE, ignore_errors=True); os.replace(tmp, TEMPLATE)
    return ''

def _table(root):
    "A box-pass table of a small synthetic set (one file name with a space, one unreadable row), some predictions wrong."
    gt = read_boxes_csv(root/'boxes.csv')
    spaced = root/'valid'/'with space.png'
    shutil.copy(root/gt.image.iloc[-1], spaced)
    gt = pd.concat([gt, gt.iloc[[-1]].assign(image=spaced.relative_to(root).as_posix())], ignore_index=True)
    rng = np.random.default_rng(1)
    b = np.clip(gt[BOX].to_numpy(float) + rng.uniform(-0.45, 0.45, (len(gt), 4)), 0, gt[['width', 'height', 'width', 'height']].to_numpy(float))
    target = [('square' if l == 'circle' else 'circle') if i % 3 == 1 else l for i, l in enumerate(gt.label)]
    bx = pd.DataFrame({'item': [str(root/p) for p in gt.image], 'split': gt.split, 'label': gt.label, 'target': target,
                       'prob': rng.uniform(0.3, 1, len(gt)).round(3), 'width': gt.width, 'height': gt.height, 'area_ratio': 0.1,
                       **dict(zip(margin_cols(0.95), b.T)), 'instance': [f"{root/p}#{t}" for p, t in zip(gt.image, target)],
                       'fallback': None, 'error': None})
    bx.loc[1, ['error', 'fallback']] = ['OSError: truncated', 'unreadable']; bx.loc[1, margin_cols(0.95)] = np.nan
    return bx

def _same(got, want, tol):
    got = got.sort_values(['image', 'xmin']).reset_index(drop=True); want = want.sort_values(['image', 'xmin']).reset_index(drop=True)
    assert got[['image', 'label']].values.tolist() == want[['image', 'label']].values.tolist()
    assert len(got) == 0 or np.abs(got[BOX].to_numpy(float) - want[BOX].to_numpy(float)).max() <= tol

@pytest.fixture(scope='module')
def server(tmp_path_factory):
    why = _install()
    if why: pytest.skip(why)
    tmp = tmp_path_factory.mktemp('labelstudio')
    shutil.copytree(TEMPLATE, tmp/'data')
    (tmp/'files').mkdir()
    s = Server(tmp/'data', tmp/'files', tmp/'server.log').start()
    try: yield s
    finally: s.stop()

def test_real_labelstudio_round_trip(server, tmp_path):
    root = make_shapes(server.docroot/'shapes', n_train=3, n_valid=2, classes=2, size=(64, 48), seed=11)
    bx = _table(root)
    out = export_boxes(bx, tmp_path/'ls', 'labelstudio', document_root=server.docroot, cls='both', model_version='attncrop-test', progress=False)
    assert out['failed'] == 1 and out['local_storage'] == root
    want = export_table(bx, root=server.docroot, cls='both')[0]          # image = the path below the document root
    exported = json.loads(out['path'].read_text())
    # the documented setup: a project with the labelling config, a Local Storage covering the images, the tasks imported
    proj = server.api('POST', '/api/projects', dict(title='attncrop boxes', label_config=out['config'].read_text()))
    server.api('POST', '/api/storages/localfiles', dict(project=proj['id'], path=str(out['local_storage']), title='images', use_blob_urls=True))
    imp = server.api('POST', f"/api/projects/{proj['id']}/import", exported)
    assert (imp['task_count'], imp['prediction_count']) == (len(exported), len(exported))
    tasks = server.api('GET', f"/api/tasks?project={proj['id']}&fields=all&page_size=1000")['tasks']
    assert len(tasks) == out['images']
    by_item = {t['data']['item']: t for t in exported}
    for t in tasks:                                                       # every prediction exactly as exported
        p, e = t['predictions'][0], by_item[t['data']['item']]['predictions'][0]
        assert p['model_version'] == 'attncrop-test' and p['score'] == pytest.approx(e['score'])
        assert [(r['value'], r['score'], r.get('meta')) for r in p['result']] == [(r['value'], r['score'], r['meta']) for r in e['result']]
        status, body = _get(server.url + t['data']['image'])             # every image URL loads: the original's bytes
        assert status == 200 and body == Path(t['data']['item']).read_bytes(), t['data']['image']
    (tmp_path/'api.json').write_text(json.dumps(tasks))
    _same(read_labelstudio(tmp_path/'api.json', source='predictions'), want, 1e-6)   # ... at the exported pixels
    # a person labels the first task, skips the second; then Label Studio's exports, read back
    ids = sorted(t['id'] for t in tasks)
    first = next(t for t in tasks if t['id'] == ids[0])
    W, H = first['predictions'][0]['result'][0]['original_width'], first['predictions'][0]['result'][0]['original_height']
    region = dict(type='rectanglelabels', from_name='label', to_name='image', original_width=W, original_height=H, image_rotation=0,
                  value=dict(x=10., y=25., width=50., height=50., rotation=0, rectanglelabels=['circle']))
    server.api('POST', f"/api/tasks/{ids[0]}/annotations", dict(result=[region], was_cancelled=False))
    server.api('POST', f"/api/tasks/{ids[1]}/annotations", dict(result=[], was_cancelled=True))
    labelled = pd.DataFrame([dict(image=read_labelstudio(tmp_path/'api.json', source='predictions').set_index('task').loc[[ids[0]], 'image'].iloc[0],
                                  label='circle', xmin=0.1*W, ymin=0.25*H, xmax=0.6*W, ymax=0.75*H)])
    exports = {}
    _, exports['quick'] = _get(f"{server.url}/api/projects/{proj['id']}/export?exportType=JSON&download_all_tasks=true")
    _, exports['min'] = _get(f"{server.url}/api/projects/{proj['id']}/export?exportType=JSON_MIN&download_all_tasks=true")
    snap = server.api('POST', f"/api/projects/{proj['id']}/exports", dict(title='snapshot', task_filter_options=dict(only_with_annotations=False),
                                                                          serialization_options=dict(predictions=dict(only_id=False))))
    for _ in range(120):
        if server.api('GET', f"/api/projects/{proj['id']}/exports/{snap['id']}")['status'] == 'completed': break
        time.sleep(0.5)
    _, exports['snapshot'] = _get(f"{server.url}/api/projects/{proj['id']}/exports/{snap['id']}/download?exportType=JSON")
    for k, v in exports.items(): (tmp_path/f"{k}.json").write_bytes(v)
    quick, mini, snapshot = (read_labelstudio(tmp_path/f"{k}.json") for k in ('quick', 'min', 'snapshot'))
    _same(quick, labelled, 1e-9); _same(mini, labelled, 1e-9)          # only what people labelled: predictions are ids here
    with pytest.raises(ValueError, match='listed by id only'): read_labelstudio(tmp_path/'quick.json', source='predictions')
    skipped_image = read_labelstudio(tmp_path/'api.json', source='predictions').set_index('task').loc[[ids[1]], 'image'].iloc[0]
    rest = want[(want.image != labelled.image[0]) & (want.image != skipped_image)]
    _same(snapshot, pd.concat([labelled, rest[['image', 'label'] + BOX]]), 1e-6)   # labels where given, else the predictions
    assert set(snapshot.source) == {'annotation', 'prediction'} and skipped_image not in set(snapshot.image)
    _same(read_labelstudio(tmp_path/'snapshot.json', source='predictions'), want, 1e-6)
    assert read_labelstudio(tmp_path/'snapshot.json', source='predictions').set_index('image').loc[skipped_image, 'skipped'].all()
    if os.environ.get('ATTNCROP_SAVE_LS_FIXTURES') == '1':              # keep small copies for the tests without a server
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for k in exports: (FIXTURES/f"{k}.json").write_text(json.dumps(json.loads((tmp_path/f"{k}.json").read_text()), indent=1))
        want[['image', 'label'] + BOX].to_csv(FIXTURES/'predicted.csv', index=False)
        labelled.to_csv(FIXTURES/'labelled.csv', index=False)
        (FIXTURES/'skipped.txt').write_text(skipped_image + '\n')

def test_real_labelstudio_command_line(server, fit_shapes, tmp_path):
    "The command line's Label Studio export of an exported learner's boxes on new images, imported with the setup it prints."
    _, learn = fit_shapes(tmp_path, n_train=8, bs=8, widths=(8, 16, 16, 16), epochs=1, classes=2)
    learn.export(tmp_path/'model.pkl')
    new = make_shapes(server.docroot/'new', n_train=3, n_valid=0, classes=2, size=(56, 44), obj_frac=(0.2, 0.4), background='plain', seed=3)/'train'
    first = sorted(new.rglob('*.png'))[0]
    shutil.copy(first, first.parent/'with space.png')                    # a file name a URL must quote
    env = {k: v for k, v in os.environ.items() if k not in LS_ROOT_VARS}  # the document root from the option alone
    out = tmp_path/'out'
    cmd = [sys.executable, '-m', 'fastai_attncrop', 'boxes', str(tmp_path/'model.pkl'), str(new), '--out', str(out), '--format', 'labelstudio',
           '--document-root', str(server.docroot), '--model-version', 'attncrop-cli-test', '--no-progress']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**env, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out/'attncrop.json').read_text())
    assert rec['finished'] and rec['labelstudio_local_storage'] == str(new) and f"add a Local Storage of {new}" in r.stdout
    table = pd.read_pickle(out/'boxes.pkl')
    want = export_table(table, root=server.docroot)[0]                  # image = the path below the document root
    exported = json.loads((out/'labelstudio'/'tasks.json').read_text())
    assert len(exported) == len(list(new.rglob('*.png'))) == len(table)
    # the setup the command prints: a project with its labelling config, a Local Storage of the folder it names, the tasks imported
    proj = server.api('POST', '/api/projects', dict(title='attncrop command line', label_config=(out/'labelstudio'/'config.xml').read_text()))
    server.api('POST', '/api/storages/localfiles', dict(project=proj['id'], path=rec['labelstudio_local_storage'], title='new images', use_blob_urls=True))
    imp = server.api('POST', f"/api/projects/{proj['id']}/import", exported)
    assert (imp['task_count'], imp['prediction_count']) == (len(exported), len(exported))
    tasks = server.api('GET', f"/api/tasks?project={proj['id']}&fields=all&page_size=1000")['tasks']
    assert sorted(t['data']['item'] for t in tasks) == sorted(table['item'])
    by_item = {t['data']['item']: t for t in exported}
    for t in tasks:                                                       # every prediction as exported, every image loads
        p, e = t['predictions'][0], by_item[t['data']['item']]['predictions'][0]
        assert p['model_version'] == 'attncrop-cli-test' and p['score'] == pytest.approx(e['score'])
        assert [(r['value'], r['score']) for r in p['result']] == [(r['value'], r['score']) for r in e['result']]
        status, body = _get(server.url + t['data']['image'])
        assert status == 200 and body == Path(t['data']['item']).read_bytes(), t['data']['image']
    (tmp_path/'api.json').write_text(json.dumps(tasks))
    assert len(want) > 0
    _same(read_labelstudio(tmp_path/'api.json', source='predictions'), want, 1e-6)   # at the box pass's pixels

# --- the reader on Label Studio's real exports, without a server ------------------------------------------------------

@pytest.fixture
def fixtures():
    if not (FIXTURES/'snapshot.json').exists(): pytest.fail(f"no Label Studio export fixtures in {FIXTURES}")
    return (pd.read_csv(FIXTURES/'predicted.csv'), pd.read_csv(FIXTURES/'labelled.csv'), (FIXTURES/'skipped.txt').read_text().strip())

def test_quick_export_predictions_are_ids(fixtures):
    predicted, labelled, skipped = fixtures
    tasks = json.loads((FIXTURES/'quick.json').read_text())
    assert all(isinstance(p, int) for t in tasks for p in t['predictions'])        # what Label Studio writes
    _same(read_labelstudio(FIXTURES/'quick.json'), labelled, 1e-9)
    with pytest.raises(ValueError, match='listed by id only'): read_labelstudio(FIXTURES/'quick.json', source='predictions')
    assert read_labelstudio(FIXTURES/'quick.json', source='annotations').image.tolist() == labelled.image.tolist()

def test_json_min_export(fixtures):
    predicted, labelled, skipped = fixtures
    _same(read_labelstudio(FIXTURES/'min.json'), labelled, 1e-9)

def test_snapshot_export_with_full_predictions_and_a_skipped_task(fixtures):
    predicted, labelled, skipped = fixtures
    got = read_labelstudio(FIXTURES/'snapshot.json')
    rest = predicted[(predicted.image != labelled.image[0]) & (predicted.image != skipped)]
    _same(got, pd.concat([labelled, rest]), 1e-6)
    assert skipped not in set(got.image)                                          # a skipped task is no label
    preds = read_labelstudio(FIXTURES/'snapshot.json', source='predictions')
    _same(preds, predicted, 1e-6)
    assert preds[preds.image == skipped].skipped.all() and not preds[preds.image != skipped].skipped.any()
    assert (preds.score.between(0, 1)).all() and set(preds.source) == {'prediction'}
