"The console script `attncrop` (fastai_attncrop.cli): the table it writes is `box_pass`'s, a killed run resumes, errors name what is wrong."
import json
from functools import partial
from pathlib import Path
import pandas as pd, pytest
from fastai_attncrop.cli import main, usage, boxes, image_files, read_run, RUN_FILE
from fastai_attncrop.export import LS_ROOT_VARS
from fastcore.script import anno_parser

@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    "(path of an exported small learner, a folder of new images in two class folders)."
    from fastai_attncrop.data import make_shapes
    from fastai_attncrop.models import small_cnn, shapes_learner
    tmp = tmp_path_factory.mktemp('cli')
    learn = shapes_learner(partial(small_cnn, widths=(8, 16, 16, 16)), tmp/'shapes', bs=8, epochs=1, metrics=None,
                           n_train=8, n_valid=4, classes=2, size=48, obj_frac=(0.2, 0.4), background='plain')
    learn.export(tmp/'model.pkl')
    new = make_shapes(tmp/'drawn', n_train=6, n_valid=0, classes=2, size=(56, 44), obj_frac=(0.2, 0.4), background='plain', seed=1)/'train'
    return tmp/'model.pkl', new

def expected_table(pkl, files, **kwargs):
    from fastai.learner import load_learner
    from fastai_attncrop.boxpass import box_pass
    return box_pass(load_learner(pkl, cpu=True), items=[str(p) for p in files], cache=False, progress=False, **kwargs)

def test_table_and_outputs(exported, tmp_path, capsys):
    pkl, new = exported
    out = tmp_path/'out'
    rc = main(['boxes', pkl, new, '--out', out, '--format', 'labelstudio,coco,voc,yolo', '--document-root', new.parent, '--crops', '--review',
               '--no-progress'])
    assert rc == 0, capsys.readouterr().err
    files = sorted(new.rglob('*.png'))
    table = pd.read_pickle(out/'boxes.pkl')
    pd.testing.assert_frame_equal(table, expected_table(pkl, files))
    assert table['item'].tolist() == [str(p) for p in files]      # absolute paths, in sorted order, one row each
    csv = pd.read_csv(out/'boxes.csv')
    assert csv['item'].tolist() == table['item'].tolist() and (csv['x0_95'] - table['x0_95']).abs().max() < 1e-9
    rec = read_run(out)
    assert rec['finished'] and rec['counts']['images'] == len(files) == rec['counts']['rows']
    from fastai_attncrop.data import read_coco
    coco = read_coco(out/'coco'/'instances.json')
    assert len(coco) == rec['counts']['coco'] == len(table) - table['fallback'].notna().sum()
    tasks = json.loads((out/'labelstudio'/'tasks.json').read_text())
    assert len(tasks) == len(files) and all(t['predictions'] for t in tasks)
    assert [t['data']['image'] for t in tasks] == ['/data/local-files/?d=' + p.relative_to(new.parent).as_posix() for p in files]
    assert rec['document_root'] == str(new.parent) and rec['labelstudio_local_storage'] == str(new)
    assert (out/'labelstudio'/'config.xml').is_file() and tasks[0]['predictions'][0]['model_version'] == 'fastai_attncrop'
    for f in ['coco', 'voc', 'yolo', 'labelstudio']:           # every export lists what it left out (here: the fallbacks)
        assert len(pd.read_csv(out/f/'skipped.csv')) == rec['counts']['skipped'][f] == table['fallback'].notna().sum()
    assert len(pd.read_csv(out/'crops'/'crops.csv')) == len(files) == rec['counts']['crops']
    assert (out/'review'/'index.html').is_file() and (out/'voc').is_dir() and (out/'yolo').is_dir()
    printed = capsys.readouterr().out
    for name in ['boxes.pkl', 'boxes.csv', 'coco', 'labelstudio', 'crops', 'review']: assert str(out/name) in printed
    assert f"add a Local Storage of {new}" in printed

def count_chunks(monkeypatch, stop_after=None):
    "Count the box pass's chunks computed; with `stop_after`, a Ctrl-C once that many are done (a killed run)."
    import fastai_attncrop.boxpass as bp
    calls, orig = [], bp.box_chunk
    def chunk(*args, **kwargs):
        if stop_after is not None and len(calls) == stop_after: raise KeyboardInterrupt
        calls.append(1); return orig(*args, **kwargs)
    monkeypatch.setattr(bp, 'box_chunk', chunk)
    return calls

def test_killed_run_resumes(exported, tmp_path, monkeypatch, capsys):
    pkl, new = exported
    files = sorted(new.rglob('*.png'))
    args = ['boxes', pkl, new, '--out', tmp_path/'out', '--bs', '1', '--no-progress', '--crops']   # 8 images a chunk
    n_chunks = -(-len(files)//8)
    assert n_chunks >= 2
    with monkeypatch.context() as m:
        calls = count_chunks(m, stop_after=1)
        assert main(args) == 130
    assert 'run the same command again to resume' in capsys.readouterr().err
    assert len(calls) == 1 and read_run(tmp_path/'out')['finished'] is False
    assert not (tmp_path/'out'/'boxes.pkl').exists()
    calls = count_chunks(monkeypatch)
    assert main(args) == 0                      # no --overwrite needed: the folder holds an unfinished run
    assert 'resuming' in capsys.readouterr().out
    assert len(calls) == n_chunks - 1            # the finished chunk came from the cache
    pd.testing.assert_frame_equal(pd.read_pickle(tmp_path/'out'/'boxes.pkl'), expected_table(pkl, files, bs=1))
    assert read_run(tmp_path/'out')['finished'] is True
    assert main(args) == 1                      # a finished run is not written over ...
    assert 'holds a finished attncrop run' in capsys.readouterr().err
    calls = count_chunks(monkeypatch)
    assert main(args + ['--overwrite']) == 0 and len(calls) == 0   # ... unless asked; the table from the cache
    (tmp_path/'bad.pkl').write_text('not a learner')   # an error before any work leaves the earlier run's outputs alone
    assert run('boxes', tmp_path/'bad.pkl', *args[2:], '--overwrite')[0] == 1
    assert (tmp_path/'out'/'boxes.pkl').is_file() and (tmp_path/'out'/'crops'/'crops.csv').is_file()

def run(*args):
    "`main(args)`: (exit status, stderr), argparse's exits included."
    import contextlib, io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try: rc = main([str(a) for a in args])
        except SystemExit as e: rc = e.code
    return rc, err.getvalue()

def test_errors_name_what_is_wrong(exported, tmp_path, monkeypatch):
    pkl, new = exported
    for v in LS_ROOT_VARS: monkeypatch.delenv(v, raising=False)
    out = tmp_path/'out'
    (tmp_path/'notes.txt').write_text('not a learner'); (tmp_path/'empty').mkdir()
    (tmp_path/'full').mkdir(); (tmp_path/'full'/'mine.txt').write_text('x')
    cases = [(['boxes', tmp_path/'missing.pkl', new, '--out', out], 1, 'LEARNER: ' + str(tmp_path/'missing.pkl') + ' does not exist'),
             (['boxes', tmp_path/'notes.txt', new, '--out', out], 1, 'LEARNER: could not load ' + str(tmp_path/'notes.txt')),
             (['boxes', pkl, tmp_path/'nowhere', '--out', out], 1, 'IMAGES: ' + str(tmp_path/'nowhere') + ' does not exist'),
             (['boxes', pkl, tmp_path/'empty', '--out', out], 1, 'IMAGES: no image files in ' + str(tmp_path/'empty')),
             (['boxes', pkl, '--out', out], 1, 'IMAGES: give at least one image file or folder'),
             (['boxes', pkl, new], 1, '--out is required'),
             (['boxes', pkl, new, '--out', out, '--format', 'coco,pascal'], 1, "--format: unknown format(s) 'pascal'"),
             (['boxes', pkl, new, '--out', out, '--margin', '1.5'], 1, '--margin:'),
             (['boxes', pkl, new, '--out', out, '--method', 'nocam'], 1, "--method: 'nocam' is not one of"),
             (['boxes', pkl, new, '--out', out, '--bs', '0'], 1, '--bs must be an integer >= 1'),
             (['boxes', pkl, new, '--out', out, '--bs', 'two'], 2, "argument --bs: invalid int value: 'two'"),
             (['boxes', pkl, new, '--out', tmp_path/'full'], 1, '--out ' + str(tmp_path/'full') + ' is not empty (1 entries, e.g. mine.txt)'),
             (['boxes', pkl, new, '--out', new/'out'], 1, 'lies inside the image folder ' + str(new)),
             (['boxes', pkl, *sorted(new.rglob('*.png'))[::5], '--out', new/'out', '--crops'], 1, 'lies inside the image folder'),
             (['boxes', pkl, new, '--out', tmp_path/'notes.txt'], 1, 'is a file, not a folder'),
             (['boxes', pkl, new, '--out', out, '--format', 'coco,labelstudio'], 1, '--format labelstudio needs --document-root DIR or --url-prefix URL'),
             (['boxes', pkl, new, '--out', out, '--format', 'labelstudio', '--document-root', new/'circle'], 1,
              '--document-root ' + str(new/'circle') + ': '),
             (['boxes', pkl, new, '--out', out, '--format', 'labelstudio', '--document-root', tmp_path/'nowhere'], 1, 'nowhere does not exist'),
             (['boxes', pkl, new, '--out', out, '--format', 'labelstudio', '--document-root', new, '--url-prefix', 'http://h/'], 1,
              '--document-root and --url-prefix: give one'),
             (['boxes', pkl, new, '--out', out, '--url-prefix', 'http://h/'], 1, '--url-prefix is an option of the Label Studio export'),
             (['boxes', pkl, new, '--out', out, '--cls', 'truth'], 1, "--cls must be one of pred, label, both, got 'truth'"),
             (['boxes', pkl, new, '--out', out, '--review', '--links', 'web'], 1, "--links must be relative or absolute, got 'web'"),
             (['boxe'], 2, "unknown command 'boxe'")]
    for args, code, msg in cases:
        rc, err = run(*args)
        assert (rc, msg in err) == (code, True), (args, rc, err)
    assert not out.exists() and not (new/'out').exists()      # nothing written before the arguments are checked
    assert (tmp_path/'full'/'mine.txt').read_text() == 'x'

def test_help_documents_every_option(capsys):
    h = usage()
    parser = anno_parser(boxes.__wrapped__, prog='attncrop boxes')
    for a in parser._actions:
        if a.help == '==SUPPRESS==': continue
        for o in (a.option_strings or [a.dest]): assert o in h, o
        if a.option_strings != ['-h', '--help']: assert a.help and len(a.help) > 10, a
    assert main(['--help']) == 0 and capsys.readouterr().out.strip() == h.strip()
    with pytest.raises(SystemExit) as e: main(['boxes', '--help'])
    assert e.value.code == 0 and capsys.readouterr().out == parser.format_help()

def test_image_files(tmp_path):
    from PIL import Image
    for p in ['b/2.png', 'b/1.jpg', 'a/x.png', 'a/notes.txt']:
        (tmp_path/p).parent.mkdir(exist_ok=True)
        (tmp_path/p).write_text('x') if p.endswith('txt') else Image.new('RGB', (4, 4)).save(tmp_path/p)
    got = image_files([tmp_path/'b', tmp_path, tmp_path/'a'/'x.png'])
    assert got == [tmp_path/'b'/'1.jpg', tmp_path/'b'/'2.png', tmp_path/'a'/'x.png']   # folder order kept, files sorted, each once

def test_killed_during_the_exports_resumes(exported, tmp_path, monkeypatch):
    "A run killed after the table and an export were written: the same command writes everything again, then finishes."
    import fastai_attncrop.crop as crop
    pkl, new = exported
    args = ['boxes', pkl, new, '--out', tmp_path/'out', '--format', 'coco,yolo,labelstudio', '--document-root', new, '--crops', '--no-progress']
    def killed(*a, **k): raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(crop, 'export_crops', killed)
        assert run(*args)[0] == 130
    assert (tmp_path/'out'/'labelstudio'/'tasks.json').is_file() and read_run(tmp_path/'out')['finished'] is False
    assert run(*args)[0] == 0                   # the exports written again over the interrupted run's
    rec = read_run(tmp_path/'out')
    assert rec['finished'] and rec['outputs'] == ['boxes.pkl', 'boxes.csv', 'coco', 'yolo', 'labelstudio', 'crops']
    assert len(pd.read_csv(tmp_path/'out'/'crops'/'crops.csv')) == rec['counts']['crops'] == len(list(new.rglob('*.png')))

def test_labelstudio_image_urls(exported, tmp_path, monkeypatch):
    "Label Studio tasks name their images by URL: below the document root (option or environment variable), or behind --url-prefix."
    pkl, new = exported
    files = sorted(new.rglob('*.png'))
    monkeypatch.setenv(LS_ROOT_VARS[0], str(new.parent))      # the variable Label Studio is started with, set in this shell too
    args = ['boxes', pkl, new, '--format', 'labelstudio', '--no-progress']
    assert run(*args, '--out', tmp_path/'env')[0] == 0
    tasks = json.loads((tmp_path/'env'/'labelstudio'/'tasks.json').read_text())
    assert [t['data']['image'] for t in tasks] == ['/data/local-files/?d=' + p.relative_to(new.parent).as_posix() for p in files]
    assert read_run(tmp_path/'env')['document_root'] == str(new.parent)
    rc, err = run(*args, '--out', tmp_path/'env2', '--document-root', new/'circle')   # the option wins over the variable
    assert rc == 1 and 'are not below it' in err
    monkeypatch.setenv(LS_ROOT_VARS[0], str(new/'square'))
    rc, err = run(*args, '--out', tmp_path/'env2')
    assert rc == 1 and f"${LS_ROOT_VARS[0]} {new/'square'}: " in err
    assert run(*args, '--out', tmp_path/'url', '--url-prefix', 'https://img.example/new/', '--model-version', 'shapes-v2', '--cls', 'both')[0] == 0
    tasks = json.loads((tmp_path/'url'/'labelstudio'/'tasks.json').read_text())
    assert [t['data']['image'] for t in tasks] == ['https://img.example/new/' + p.relative_to(new).as_posix() for p in files]
    preds = [t['predictions'][0] for t in tasks]
    assert {p['model_version'] for p in preds} == {'shapes-v2'}
    assert all(r['meta']['text'] == [f"predicted: {r['value']['rectanglelabels'][0]}"] for p in preds for r in p['result'])   # no labels: the prediction
    rec = read_run(tmp_path/'url')
    assert rec['url_prefix'] == 'https://img.example/new/' and rec['document_root'] is None and 'labelstudio_local_storage' not in rec
    assert run(*args, '--out', tmp_path/'url', '--url-prefix', 'https://img.example/v3/', '--overwrite')[0] == 0   # written again
    assert json.loads((tmp_path/'url'/'labelstudio'/'tasks.json').read_text())[0]['data']['image'].startswith('https://img.example/v3/')

def test_review_links(exported, tmp_path):
    pkl, new = exported
    assert run('boxes', pkl, new, '--out', tmp_path/'out', '--format', 'none', '--review', '--links', 'absolute', '--no-progress')[0] == 0
    page = (tmp_path/'out'/'review'/'index.html').read_text()
    assert sorted(new.rglob('*.png'))[0].as_uri() in page
