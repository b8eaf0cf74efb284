"""Each export format opened by its reference consumer, as written (issue 31): pycocotools (COCO, COCOeval),
supervision (COCO, Pascal VOC, YOLO), Ultralytics' dataset checker (no model, no weights, nothing downloaded), and
the Label Studio files checked against the labelling config they come with. Each consumer is skipped, with the
reason, where it is not installed (`pip install -e '.[dev]'` installs them)."""
import json, os, xml.etree.ElementTree as ET
from pathlib import Path
import numpy as np, pandas as pd, pytest
from fastai_attncrop.crop import margin_cols
from fastai_attncrop.data import make_shapes, read_boxes_csv
from fastai_attncrop.export import export_boxes, export_table, read_labelstudio

BOX = ['xmin', 'ymin', 'xmax', 'ymax']

@pytest.fixture(scope='module')
def table(tmp_path_factory):
    "A box-pass table of a non-square synthetic set with train and valid splits: sub-pixel boxes, one unreadable row, one fallback, some wrong predictions."
    root = make_shapes(tmp_path_factory.mktemp('consumers')/'shapes', n_train=4, n_valid=2, classes=3, size=(64, 48), seed=5)
    gt = read_boxes_csv(root/'boxes.csv')
    rng = np.random.default_rng(0)
    b = np.clip(gt[BOX].to_numpy(float) + rng.uniform(-0.45, 0.45, (len(gt), 4)), 0, gt[['width', 'height', 'width', 'height']].to_numpy(float))
    classes = sorted(gt.label.unique())
    target = [classes[(classes.index(l) + (i % 4 == 1)) % len(classes)] for i, l in enumerate(gt.label)]   # every 4th prediction wrong
    bx = pd.DataFrame({'item': [str(root/p) for p in gt.image], 'split': gt.split, 'label': gt.label, 'target': target,
                       'prob': rng.uniform(0.3, 1, len(gt)), 'width': gt.width, 'height': gt.height, 'area_ratio': 0.1,
                       **dict(zip(margin_cols(0.95), b.T)), 'instance': [f"{root/p}#{t}" for p, t in zip(gt.image, target)],
                       'fallback': None, 'error': None})
    bx.loc[2, ['error', 'fallback']] = ['OSError: truncated', 'unreadable']; bx.loc[2, margin_cols(0.95)] = np.nan
    bx.loc[6, 'fallback'] = 'zero_map'
    return root, bx

def _close(a, b, tol) -> bool: return np.shape(a) == np.shape(b) and (np.size(a) == 0 or np.abs(np.asarray(a) - np.asarray(b)).max() <= tol)

def _want(bx, root, cls='pred'):
    t = export_table(bx, root=root, cls=cls)[0]
    return t.sort_values(['image', 'xmin']).reset_index(drop=True)

def test_coco_in_pycocotools_and_supervision(table, tmp_path):
    coco_mod = pytest.importorskip('pycocotools.coco', reason='pycocotools is not installed')
    from pycocotools.cocoeval import COCOeval
    root, bx = table
    out = export_boxes(bx, tmp_path, 'coco', root=root, progress=False)
    want = _want(bx, root)
    coco = coco_mod.COCO(str(out['path']))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(want) == out['boxes'] and len(coco.getImgIds()) == out['images']
    for a in anns:
        assert a['area'] == pytest.approx(a['bbox'][2] * a['bbox'][3], abs=1e-6) and a['iscrowd'] == 0
        im = coco.loadImgs(a['image_id'])[0]
        m = coco.annToMask(a)                                          # the box polygon rasterizes
        assert m.shape == (im['height'], im['width']) and abs(int(m.sum()) - a['area']) <= 2 * (a['bbox'][2] + a['bbox'][3]) + 4
    got = pd.DataFrame([dict(image=coco.loadImgs(a['image_id'])[0]['file_name'], label=coco.loadCats(a['category_id'])[0]['name'],
                             xmin=a['bbox'][0], ymin=a['bbox'][1], xmax=a['bbox'][0] + a['bbox'][2], ymax=a['bbox'][1] + a['bbox'][3])
                        for a in anns]).sort_values(['image', 'xmin']).reset_index(drop=True)
    assert got[['image', 'label']].values.tolist() == want[['image', 'label']].values.tolist()
    assert np.abs(got[BOX].to_numpy() - want[BOX].to_numpy()).max() <= 0.01
    # COCOeval reads the same annotations as detections: a perfect score
    dets = coco.loadRes([dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'], score=a['score']) for a in anns])
    ev = COCOeval(coco, dets, 'bbox'); ev.evaluate(); ev.accumulate(); ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    sv = pytest.importorskip('supervision', reason='supervision is not installed')
    ds = sv.DetectionDataset.from_coco(images_directory_path=str(root), annotations_path=str(out['path']))
    n = 0
    for path, _, det in ds:
        w = want[want.image == Path(path).relative_to(root).as_posix()].sort_values('xmin')
        xyxy = det.xyxy[np.argsort(det.xyxy[:, 0])]
        assert _close(xyxy, w[BOX].to_numpy(), 0.01)
        assert [ds.classes[c] for c in det.class_id[np.argsort(det.xyxy[:, 0])]] == w.label.tolist()
        n += len(xyxy)
    assert n == out['boxes']

def test_voc_in_supervision(table, tmp_path):
    sv = pytest.importorskip('supervision', reason='supervision is not installed')
    root, bx = table
    out = export_boxes(bx, tmp_path, 'voc', root=root, progress=False)
    ds = sv.DetectionDataset.from_pascal_voc(images_directory_path=str(tmp_path/'JPEGImages'), annotations_directory_path=str(out['path']))
    files = pd.read_csv(tmp_path/'voc_images.csv').set_index('file')['image']
    want, n = _want(bx, root), 0
    for path, _, det in ds:
        w = want[want.image == files[f"JPEGImages/{Path(path).name}"]].sort_values('xmin')
        xyxy = det.xyxy[np.argsort(det.xyxy[:, 0])]
        assert len(xyxy) == len(w), path                                # every box read, none lost
        assert _close(xyxy, w[BOX].to_numpy(), 0.5)                     # VOC's whole pixels
        n += len(xyxy)
    assert n == out['boxes'] > 0 and len(ds) == out['images']
    sets = {p.stem: p.read_text().split() for p in (tmp_path/'ImageSets'/'Main').glob('*.txt')}
    assert sorted(sets) == ['train', 'valid'] and sorted(sum(sets.values(), [])) == sorted(p.stem for p in (tmp_path/'Annotations').glob('*.xml'))

def test_yolo_in_supervision_and_ultralytics(table, tmp_path, monkeypatch):
    sv = pytest.importorskip('supervision', reason='supervision is not installed')
    root, bx = table
    out = export_boxes(bx, tmp_path/'yolo', 'yolo', root=root, progress=False)
    files = pd.read_csv(tmp_path/'yolo'/'yolo_images.csv').set_index('file')['image']
    want, n = _want(bx, root), 0
    for split in ('train', 'valid'):
        ds = sv.DetectionDataset.from_yolo(images_directory_path=str(tmp_path/'yolo'/'images'/split),
                                           annotations_directory_path=str(tmp_path/'yolo'/'labels'/split), data_yaml_path=str(out['path']))
        assert ds.classes == sorted(want.label.unique().tolist())
        for path, _, det in ds:
            w = want[want.image == files[f"images/{split}/{Path(path).name}"]].sort_values('xmin')
            o = np.argsort(det.xyxy[:, 0])
            assert _close(det.xyxy[o], w[BOX].to_numpy(), 1e-3)
            assert [ds.classes[c] for c in det.class_id[o]] == w.label.tolist()
            n += len(o)
    assert n == out['boxes'] > 0
    monkeypatch.setenv('YOLO_CONFIG_DIR', str(tmp_path/'ultralytics-config')); monkeypatch.setenv('YOLO_OFFLINE', '1')
    ud = pytest.importorskip('ultralytics.data.utils', reason='ultralytics is not installed')
    monkeypatch.setattr(ud, 'check_font', lambda *a, **k: None)      # a plotting font download, not a dataset check
    data = ud.check_det_dataset(str(out['path']), autodownload=False)
    assert data['names'] == dict(enumerate(sorted(want.label.unique()))) and data['nc'] == 3
    found = 0
    for k, split in (('train', 'train'), ('val', 'valid')):
        assert Path(data[k]) == (tmp_path/'yolo'/'images'/split).absolute()
        ims = sorted(str(p) for p in Path(data[k]).iterdir())
        for im, lb in zip(ims, ud.img2label_paths(ims)):               # where Ultralytics looks for each image's labels
            r = ud.verify_image_label((im, lb, '', False, data['nc'], 0, 0, False))
            assert r[0] is not None and r[6] == 1, (im, r[-1])         # image read, label file found, not corrupt
            found += len(r[1])
    assert found == out['boxes']

def test_labelstudio_files_agree_with_their_config(table, tmp_path):
    root, bx = table
    out = export_boxes(bx, tmp_path, 'labelstudio', root=root, document_root=root.parent, cls='both', model_version='v7', progress=False)
    cfg = ET.parse(out['config']).getroot()
    assert cfg.tag == 'View' and cfg.find('Image').get('value') == '$image'
    rl = cfg.find('RectangleLabels')
    assert (rl.get('name'), rl.get('toName')) == ('label', 'image')
    labels = [l.get('value') for l in rl.iter('Label')]
    tasks = json.loads(out['path'].read_text())
    want = _want(bx, root, 'both')
    assert labels == sorted(want.label.unique()) and out['local_storage'] == root
    n = 0
    for t in tasks:
        assert t['data']['image'].startswith('/data/local-files/?d=shapes/') and Path(t['data']['item']).is_file()
        p = t['predictions'][0]
        assert p['model_version'] == 'v7'
        for r in p['result']:
            assert r['from_name'] == 'label' and r['to_name'] == 'image' and r['value']['rectanglelabels'][0] in labels
            assert 0 <= r['value']['x'] <= 100 and r['value']['x'] + r['value']['width'] <= 100 + 1e-9 and 0 <= r['score'] <= 1
            assert r['meta']['text'][0].startswith('predicted: ')
            n += 1
        if p['result']: assert p['score'] == min(r['score'] for r in p['result'])
    assert n == out['boxes']
    back = read_labelstudio(out['path'])
    assert sorted(back.label) == sorted(want.label) and set(back.source) == {'prediction'}

def test_which_class_goes_out(table, tmp_path):
    root, bx = table
    ok = bx.error.isna() & bx.fallback.isna()
    wrong = ok & (bx.target != bx.label)
    assert wrong.sum() > 0
    pred, lab = _want(bx, root, 'pred'), _want(bx, root, 'label')
    assert sorted(pred.label) == sorted(bx.target[ok]) and sorted(lab.label) == sorted(bx.label[ok])
    assert (lab.pred == pred.label).all()
    out = export_boxes(bx, tmp_path/'coco', 'coco', root=root, cls='label', progress=False)
    d = json.loads(out['path'].read_text())
    cats = {c['id']: c['name'] for c in d['categories']}
    assert sorted(cats[a['category_id']] for a in d['annotations']) == sorted(bx.label[ok])
    d = json.loads(export_boxes(bx, tmp_path/'both', 'coco', root=root, cls='both', progress=False)['path'].read_text())
    assert sorted(a['attributes']['predicted'] for a in d['annotations']) == sorted(bx.target[ok])
    # multi-label rows: the explained class when it is a true one, else left out with the reason
    multi = bx[ok].head(2).assign(label='circle square')
    t, _, _, _, sk = export_table(multi.assign(target=['square', 'star']), root=root, cls='label')
    assert t.label.tolist() == ['square'] and 'not among the labels' in sk.reason.iloc[0]
    with pytest.raises(ValueError, match='`cls` must be one of'): export_table(bx, cls='truth')

def test_labelstudio_refuses_urls_that_cannot_load(table, tmp_path, monkeypatch):
    root, bx = table
    for v in ('LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT', 'LOCAL_FILES_DOCUMENT_ROOT'): monkeypatch.delenv(v, raising=False)
    with pytest.raises(ValueError, match='LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true.*url_prefix'):
        export_boxes(bx, tmp_path/'a', 'labelstudio', progress=False)
    with pytest.raises(ValueError, match='not under the Label Studio document root'):
        export_boxes(bx, tmp_path/'b', 'labelstudio', document_root=tmp_path, progress=False)
    monkeypatch.setenv('LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT', str(root))
    tasks = json.loads(export_boxes(bx, tmp_path/'c', 'labelstudio', progress=False)['path'].read_text())
    assert all(t['data']['image'].startswith('/data/local-files/?d=train/') or t['data']['image'].startswith('/data/local-files/?d=valid/')
               for t in tasks)
    tasks = json.loads(export_boxes(bx, tmp_path/'d', 'labelstudio', url_prefix='https://img.example/set 1/', progress=False)['path'].read_text())
    assert all(t['data']['image'].startswith('https://img.example/set 1/') and ' ' not in t['data']['image'][26:] for t in tasks)
