"""Tests of fastai_attncrop.export: the four pre-annotation formats parsed by readers written here (json,
ElementTree, plain text; pycocotools is not a dependency), the package's own readers giving the boxes back, the
crop manifest's round trip, and a review sheet of 1,000 boxes opened in headless Chromium."""
import json, re, xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote
import numpy as np, pandas as pd, pytest
from PIL import Image
from fastai_attncrop.data import make_shapes, read_boxes_csv, read_coco, read_voc
from fastai_attncrop.crop import margin_cols, export_crops, trust_score
from fastai_attncrop.export import (export_boxes, export_table, read_yolo, read_labelstudio, labels_to_originals, review_sheet,
                                    EXPORT_FORMATS)
from test_docs import browser, _why_skip  # noqa: F401  (the headless Chromium fixture of the docs tests)

BOX = ['xmin', 'ymin', 'xmax', 'ymax']

@pytest.fixture(scope='module')
def table(tmp_path_factory):
    "A boxes table of a non-square synthetic set: the true boxes moved by sub-pixel amounts, one unreadable row, one fallback."
    root = make_shapes(tmp_path_factory.mktemp('export')/'shapes', n_train=4, n_valid=1, classes=2, size=(56, 40), seed=3)
    gt = read_boxes_csv(root/'boxes.csv')
    rng = np.random.default_rng(0)
    b = gt[BOX].to_numpy(float) + rng.uniform(-0.45, 0.45, (len(gt), 4))
    b = np.clip(b, 0, gt[['width', 'height', 'width', 'height']].to_numpy(float))
    bx = pd.DataFrame({'item': [str(root/p) for p in gt.image], 'split': gt.split, 'label': gt.label, 'target': gt.label,
                       'prob': rng.uniform(0.3, 1, len(gt)), 'prob_crop_95': rng.uniform(0.3, 1, len(gt)),
                       'width': gt.width, 'height': gt.height, 'area_ratio': 0.1, **dict(zip(margin_cols(0.95), b.T)),
                       'instance': [f"{root/p}#{l}" for p, l in zip(gt.image, gt.label)], 'fallback': None, 'error': None})
    bx.loc[2, ['error', 'fallback']] = ['OSError: truncated', 'unreadable']
    bx.loc[2, margin_cols(0.95)] = np.nan
    bx.loc[5, 'fallback'] = 'zero_map'
    return root, bx

def _expected(bx):
    "The rows that must be exported: readable, not a fallback; boxes, classes and images as in the table."
    keep = bx.error.isna() & bx.fallback.isna()
    root = Path(bx.item[0]).parents[2]
    e = bx[keep]
    return pd.DataFrame({'image': [Path(p).relative_to(root).as_posix() for p in e.item], 'label': e.target.to_numpy(),
                         **dict(zip(BOX, e[margin_cols(0.95)].to_numpy(float).T)),
                         'score': trust_score(bx, 0.95)[keep.to_numpy()]}).sort_values('image').reset_index(drop=True)

def _check(got, want, tol):
    got = got.sort_values('image').reset_index(drop=True)
    assert got[['image', 'label']].values.tolist() == want[['image', 'label']].values.tolist()
    assert np.abs(got[BOX].to_numpy(float) - want[BOX].to_numpy(float)).max() <= tol

def test_formats_read_by_independent_readers(table, tmp_path):
    root, bx = table
    want = _expected(bx)
    n_img = bx.error.isna().sum()
    outs = {f: export_boxes(bx, tmp_path/f, f, root=root, progress=False, **({'url_prefix': ''} if f == 'labelstudio' else {}))
            for f in EXPORT_FORMATS}
    for o in outs.values(): assert (o['images'], o['boxes'], o['failed'], o['fallback']) == (n_img, len(want), 1, 1)
    bad_image = Path(bx.item[2]).relative_to(root).as_posix()
    # COCO: [x, y, w, h] and a score per annotation
    d = json.loads((tmp_path/'coco'/'instances.json').read_text())
    ims, cats = {i['id']: i for i in d['images']}, {c['id']: c['name'] for c in d['categories']}
    assert len(ims) == n_img and bad_image not in {i['file_name'] for i in ims.values()}
    coco = pd.DataFrame([dict(image=ims[a['image_id']]['file_name'], label=cats[a['category_id']], xmin=a['bbox'][0], ymin=a['bbox'][1],
                              xmax=a['bbox'][0] + a['bbox'][2], ymax=a['bbox'][1] + a['bbox'][3], score=a['score']) for a in d['annotations']])
    _check(coco, want, 0.01)
    assert np.allclose(coco.sort_values('image').score, want.score, atol=1e-4)
    assert all(ims[a['image_id']]['width'] == 56 and ims[a['image_id']]['height'] == 40 for a in d['annotations'])
    # VOC: one Annotations/<id>.xml per readable image describing JPEGImages/<id>.png, 1-based whole pixels
    files = sorted((tmp_path/'voc'/'Annotations').glob('*.xml'))
    assert len(files) == n_img
    orig = dict(zip(*pd.read_csv(tmp_path/'voc'/'voc_images.csv')[['file', 'image']].values.T))   # tree file -> image under root
    rows = []
    for f in files:
        r = ET.parse(f).getroot()
        assert (r.findtext('size/width'), r.findtext('size/height')) == ('56', '40')
        assert Path(r.findtext('filename')).stem == f.stem and (tmp_path/'voc'/'JPEGImages'/r.findtext('filename')).exists()
        for o in r.iter('object'):
            rows.append(dict(image=orig['JPEGImages/' + r.findtext('filename')], label=o.findtext('name'),
                             **{k: float(o.findtext(f'bndbox/{k}')) - (k.endswith('min')) for k in BOX}))
    _check(pd.DataFrame(rows), want, 0.5)
    # YOLO: normalized centre and size, the class list; labels/<split>/<id>.txt beside images/<split>/<id>.png
    classes = (tmp_path/'yolo'/'classes.txt').read_text().split()
    orig = dict(zip(*pd.read_csv(tmp_path/'yolo'/'yolo_images.csv')[['file', 'image']].values.T))
    rows = []
    for f in sorted((tmp_path/'yolo'/'labels').rglob('*.txt')):
        for line in f.read_text().splitlines():
            c, cx, cy, w, h = line.split(); cx, cy, w, h = float(cx)*56, float(cy)*40, float(w)*56, float(h)*40
            rows.append(dict(image=orig['images/' + f.relative_to(tmp_path/'yolo'/'labels').with_suffix('.png').as_posix()], label=classes[int(c)],
                             xmin=cx - w/2, ymin=cy - h/2, xmax=cx + w/2, ymax=cy + h/2))
    assert len(list((tmp_path/'yolo'/'labels').rglob('*.txt'))) == n_img
    _check(pd.DataFrame(rows), want, 1e-3)
    # Label Studio: percent of the original image, a score per region and per task
    tasks = json.loads((tmp_path/'labelstudio'/'tasks.json').read_text())
    assert len(tasks) == n_img
    rows = []
    for t in tasks:
        res = t['predictions'][0]['result']
        if res: assert t['predictions'][0]['score'] == min(r['score'] for r in res)
        for r in res:
            v, W, H = r['value'], r['original_width'], r['original_height']
            rows.append(dict(image=unquote(t['data']['image']), label=v['rectanglelabels'][0], xmin=v['x']*W/100, ymin=v['y']*H/100,
                             xmax=(v['x'] + v['width'])*W/100, ymax=(v['y'] + v['height'])*H/100))
    _check(pd.DataFrame(rows), want, 1e-6)
    # and the package's own readers give the same boxes back to 0.5 px
    orig_voc = dict(zip(*pd.read_csv(tmp_path/'voc'/'voc_images.csv')[['file', 'image']].values.T))
    _check(read_coco(tmp_path/'coco'/'instances.json'), want, 0.5)
    _check(read_voc(tmp_path/'voc'/'Annotations').assign(image=lambda d: d.image.map(lambda n: orig_voc['JPEGImages/' + n])), want, 0.5)
    _check(read_yolo(tmp_path/'yolo'), want, 0.5)
    _check(read_labelstudio(tmp_path/'labelstudio'/'tasks.json'), want, 0.5)
    with pytest.raises(ValueError, match='`format` must be one of'): export_boxes(bx, tmp_path/'x', 'kitti')
    with pytest.raises(ValueError, match='lacks the class'): export_table(bx, classes=['circle'])

def test_labelstudio_annotations_win_over_predictions(table, tmp_path):
    root, bx = table
    out = export_boxes(bx, tmp_path, 'labelstudio', root=root, url_prefix='', progress=False)
    tasks = json.loads(out['path'].read_text())
    region = json.loads(json.dumps(tasks[0]['predictions'][0]['result'][0]))
    region['value'].update(x=10., y=20., width=30., height=40., rectanglelabels=['person'])
    tasks[0]['annotations'] = [dict(result=[region], was_cancelled=False)]
    (tmp_path/'labelled.json').write_text(json.dumps(tasks))
    got = read_labelstudio(tmp_path/'labelled.json')
    first = got[got.image == unquote(tasks[0]['data']['image'])]
    assert first.label.tolist() == ['person'] and np.allclose(first[BOX].values, [[5.6, 8., 22.4, 24.]])
    assert len(read_labelstudio(tmp_path/'labelled.json', source='predictions')) == len(read_labelstudio(out['path']))

def test_crop_manifest_round_trip(table, tmp_path):
    "Two rows (classes) per image: one crop each, a manifest of the pixels cut; boxes drawn on crops come back on the originals."
    root, bx = table
    ok = bx[bx.error.isna()].reset_index(drop=True)
    two = pd.concat([ok, ok.assign(target='other', instance=ok.item + '#other')]).sort_values('item', kind='stable').reset_index(drop=True)
    res = export_crops(two, tmp_path/'crops', margin=0.95, root=root, progress=False)
    assert res.error.isna().all() and res.dest.is_unique and all(Path(p).exists() for p in res.dest)
    man = pd.read_csv(tmp_path/'crops'/'crops.csv')
    assert len(man) == len(two) and set(man['class']) == set(two.target)
    for r in man.itertuples():   # each crop file is exactly the original's pixels x0:x1, y0:y1
        crop, orig = np.asarray(Image.open(tmp_path/'crops'/r.crop)), np.asarray(Image.open(r.item))
        assert (crop == orig[int(r.y0):int(r.y1), int(r.x0):int(r.x1)]).all()
        b = two.loc[two.instance == r.instance, margin_cols(0.95)].to_numpy(float)[0]
        assert r.x0 <= b[0] and r.y0 <= b[1] and r.x1 >= b[2] and r.y1 >= b[3]
    # a person labels a 3x2 box at (1, 1) on each crop, and one whole crop: back on the originals
    lab = pd.DataFrame({'image': man.crop, 'label': 'obj', 'xmin': 1., 'ymin': 1., 'xmax': 4., 'ymax': 3.})
    lab.loc[0, BOX] = np.nan
    back = labels_to_originals(lab, tmp_path/'crops'/'crops.csv')
    assert back.image.tolist() == man.item.tolist() and back.instance.tolist() == man.instance.tolist()
    want = np.stack([man.x0 + 1, man.y0 + 1, np.minimum(man.x0 + 4, man.x1), np.minimum(man.y0 + 3, man.y1)], 1)
    want[0] = man.loc[0, ['x0', 'y0', 'x1', 'y1']].to_numpy(float)
    assert np.allclose(back[BOX].to_numpy(float), want)
    # labels read from a labelling tool's export on the crops flow back the same way
    coco = export_boxes(pd.DataFrame({'item': [str(tmp_path/'crops'/c) for c in man.crop], 'target': 'obj', 'prob': 1.,
                                      'width': man.x1 - man.x0, 'height': man.y1 - man.y0, 'x0_95': 1., 'y0_95': 1., 'x1_95': 2., 'y1_95': 2.}),
                        tmp_path/'ann', 'coco', root=tmp_path/'crops', progress=False)
    back2 = labels_to_originals(read_coco(coco['path']), man)
    assert np.allclose(back2.sort_values('crop')[['xmin', 'ymin']].to_numpy(), (man.sort_values('crop')[['x0', 'y0']] + 1).to_numpy())
    with pytest.raises(ValueError, match='not in the manifest'): labels_to_originals(lab.assign(image='x.png'), man)

def _sheet_rows(root, n=1000):
    "`n` boxes over 40 small images (several classes per image), scores in a shuffled order."
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(40):
        p = root/f"img {i:02d}.png"   # a space: the links must be URL-quoted
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(p); paths.append(str(p))
    items = [paths[i % 40] for i in range(n)]
    x0 = rng.uniform(0, 16, n); y0 = rng.uniform(0, 12, n)
    return pd.DataFrame({'item': items, 'target': [f"c{i // 40}" for i in range(n)], 'label': 'c0', 'prob': rng.uniform(0, 1, n),
                         'width': 32, 'height': 24, 'area_ratio': 0.2, 'x0_95': x0, 'y0_95': y0, 'x1_95': x0 + 10, 'y1_95': y0 + 8,
                         'instance': [f"{p}#{i}" for i, p in enumerate(items)], 'fallback': None, 'error': None})

_COUNT_JS = """
const imgs = [...document.querySelectorAll('figure.box img')];
return {n_img: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
        scores: [...document.querySelectorAll('figure.box')].map(f => parseFloat(f.dataset.score)),
        ranks: [...document.querySelectorAll('figure.box')].map(f => parseInt(f.dataset.rank)),
        links: [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))};
"""

@pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))
def test_review_sheet_of_1000_boxes_in_chromium(tmp_path, browser):
    bx = _sheet_rows(tmp_path/'images')
    bx.loc[7, ['error', 'fallback']] = ['OSError: truncated', 'unreadable']
    index = review_sheet(bx, tmp_path/'sheet', per_page=100, progress=False)
    pages = sorted((tmp_path/'sheet').glob('*.html'))
    assert index.name == 'index.html' and len(pages) == 10
    scores, ranks = [], []
    for p in [index] + [q for q in pages if q != index]:
        browser.get(p.as_uri())
        browser.execute_script("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
        browser.execute_async_script("const done = arguments[0]; const wait = () => [...document.images].every(i => i.complete) ? "
                                     "done() : setTimeout(wait, 20); wait();")
        info = browser.execute_script(_COUNT_JS)
        assert info['n_img'] == 2 * len(info['scores']) and info['loaded'] == info['n_img'], (p.name, info['n_img'], info['loaded'])
        assert set(info['links']) == {q.name for q in pages if q != p}
        scores += info['scores']; ranks += info['ranks']
    assert len(scores) == 999 and ranks == list(range(999))                     # every readable box once, in order
    assert scores == sorted(scores)                                             # least trusted first
    want = np.sort(np.delete(bx.prob.to_numpy(), 7))
    assert np.allclose(scores, want, atol=1e-6)
    assert 'truncated' in index.read_text() and '1 images could not be read' in index.read_text()
