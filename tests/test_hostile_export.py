"""Issue 30's export cases, as a hostile user meets them: a second export into the same folder, existing annotation
files, crops re-cut when their box changed, file-name clashes, invalid boxes, symlinked items, a symlink loop the box
pass reported. Each test failed on the code before the fix."""
import json, os, xml.etree.ElementTree as ET
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
from fastai_attncrop.crop import export_crops, margin_cols
from fastai_attncrop.data import read_coco
from fastai_attncrop.export import export_boxes, review_sheet, labels_to_originals, read_yolo, EXPORT_FORMATS

BOX = ['xmin', 'ymin', 'xmax', 'ymax']
LS = dict(url_prefix='http://127.0.0.1:8081/')   # Label Studio needs to know where the images are served

def _img(path, size=(50, 40), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).save(path, format='PNG')
    return path

def _table(paths, boxes=None, target='a', wh=(50, 40)):
    "A boxes table of `paths` (one row each), boxes (x0, y0, x1, y1) at margin 0.95 (default: a distinct box per row)."
    n = len(paths)
    b = np.array(boxes, float) if boxes is not None else np.array([[2 + i, 3 + i, 20 + i, 25 + i] for i in range(n)], float)
    return pd.DataFrame({'item': [str(p) for p in paths], 'split': 'valid', 'label': target, 'target': target, 'prob': 0.9,
                         'width': wh[0], 'height': wh[1], 'area_ratio': 0.2, **dict(zip(margin_cols(0.95), b.T)),
                         'instance': [f"{p}#{target}" for p in paths], 'fallback': None, 'error': None})

def _crop_ok(dest, man):
    "Every crop file of the manifest holds exactly the original's pixels x0:x1, y0:y1."
    for r in man.itertuples():
        crop, orig = np.asarray(Image.open(dest/r.crop)), np.asarray(Image.open(r.item))
        assert (crop == orig[int(r.y0):int(r.y1), int(r.x0):int(r.x1)]).all(), r.crop

def test_second_export_crops_merges_the_manifest(tmp_path):
    paths = [_img(tmp_path/'src'/f"{i}.png", seed=i) for i in range(4)]
    export_crops(_table(paths[:2]), tmp_path/'crops', root=tmp_path/'src', progress=False)
    export_crops(_table(paths[2:]), tmp_path/'crops', root=tmp_path/'src', progress=False)
    man = pd.read_csv(tmp_path/'crops'/'crops.csv')
    assert sorted(man.crop) == ['0.png', '1.png', '2.png', '3.png']   # the first batch's rows are still there
    _crop_ok(tmp_path/'crops', man)
    back = labels_to_originals(pd.DataFrame({'image': ['0.png', '3.png'], 'label': 'x'}), man)
    assert back.image.tolist() == [str(paths[0]), str(paths[3])]

def test_export_crops_recuts_crops_whose_box_changed(tmp_path):
    paths = [_img(tmp_path/'src'/f"{i}.png", size=(50, 48), seed=i) for i in range(3)]
    export_crops(_table(paths, [[11, 8, 42, 35]]*3, wh=(50, 48)), tmp_path/'crops', root=tmp_path/'src', progress=False)
    res = export_crops(_table(paths, [[1, 1, 48, 46], [11, 8, 42, 35], [0, 0, 10, 10]], wh=(50, 48)), tmp_path/'crops',
                       root=tmp_path/'src', progress=False)
    assert res.written.tolist() == [True, False, True]              # the unchanged crop is kept, the others are re-cut
    man = pd.read_csv(tmp_path/'crops'/'crops.csv')
    _crop_ok(tmp_path/'crops', man)
    back = labels_to_originals(pd.DataFrame({'image': ['0.png'], 'label': 'x'}), man)
    assert back[BOX].to_numpy().tolist() == [[1, 1, 48, 46]]
    # the same table at another margin: every crop whose pixels differ is cut again
    bx = _table(paths, [[1, 1, 48, 46]]*3, wh=(50, 48))
    bx[margin_cols(0.6)] = [11., 8., 42., 35.]
    res = export_crops(bx, tmp_path/'crops', margin=0.6, root=tmp_path/'src', progress=False)
    assert res.written.tolist() == [True, False, True]               # the second crop was cut from (11, 8, 42, 35) already
    man = pd.read_csv(tmp_path/'crops'/'crops.csv')
    _crop_ok(tmp_path/'crops', man)
    assert (man.margin == 0.6).all() and man[['x0', 'y0', 'x1', 'y1']].values.tolist() == [[11, 8, 42, 35]]*3

def test_export_boxes_refuses_to_replace_annotation_files(tmp_path):
    paths = [_img(tmp_path/'src'/f"{i}.png", seed=i) for i in range(2)]
    bx = _table(paths)
    for f in EXPORT_FORMATS:
        out = export_boxes(bx, tmp_path/f, f, progress=False, **(LS if f == 'labelstudio' else {}))
        main = out['path'] if out['path'].is_file() else sorted(out['path'].glob('*'))[0]
        main.write_text('made by hand')
        with pytest.raises(FileExistsError, match=r'overwrite=True') as e:
            export_boxes(bx, tmp_path/f, f, progress=False, **(LS if f == 'labelstudio' else {}))
        assert str(tmp_path/f) in str(e.value)
        assert main.read_text() == 'made by hand'                   # untouched
        export_boxes(bx, tmp_path/f, f, overwrite=True, progress=False, **(LS if f == 'labelstudio' else {}))
        assert main.read_text() != 'made by hand'
    # hand-made VOC files in the folder VOC writes into
    (tmp_path/'hand'/'Annotations').mkdir(parents=True)
    (tmp_path/'hand'/'Annotations'/'mine.xml').write_text('<annotation/>')
    with pytest.raises(FileExistsError, match='mine.xml'): export_boxes(bx, tmp_path/'hand', 'voc', progress=False)

def test_name_clashes_give_unique_names_in_every_format(tmp_path):
    src = tmp_path/'src'
    paths = [_img(src/'x.png', seed=1), _img(src/'x.jpg', seed=2), _img(src/'a'/'b.png', seed=3), _img(src/'a__b.png', seed=4)]
    bx = _table(paths)
    want = {Path(p).relative_to(src).as_posix(): b for p, b in zip(paths, bx[margin_cols(0.95)].to_numpy())}
    for f in EXPORT_FORMATS:
        out = export_boxes(bx, tmp_path/f, f, progress=False, **(LS if f == 'labelstudio' else {}))
        assert (out['images'], out['boxes']) == (4, 4)
    ann = sorted((tmp_path/'voc'/'Annotations').glob('*.xml'))
    assert len(ann) == 4
    names = [ET.parse(a).getroot().findtext('filename') for a in ann]
    assert len(set(names)) == 4 and all((tmp_path/'voc'/'JPEGImages'/n).exists() for n in names)
    assert all(Path(n).stem == a.stem for n, a in zip(names, ann))   # <id>.xml describes JPEGImages/<id>.<ext>
    m = pd.read_csv(tmp_path/'voc'/'voc_images.csv')
    for a in ann:                                                   # each annotation holds its own image's box
        r = ET.parse(a).getroot()
        image = m.set_index('file').loc[f"JPEGImages/{r.findtext('filename')}", 'image']
        bb = [float(r.findtext(f'object/bndbox/{k}')) for k in BOX]
        assert np.allclose([bb[0] - 1, bb[1] - 1, bb[2], bb[3]], want[image], atol=0.5)
    got = read_yolo(tmp_path/'yolo')
    assert sorted(got.image) == sorted(want) and len(list((tmp_path/'yolo'/'labels').rglob('*.txt'))) == 4
    for r in got.itertuples(): assert np.allclose([r.xmin, r.ymin, r.xmax, r.ymax], want[r.image], atol=1e-3)
    coco = read_coco(tmp_path/'coco'/'instances.json')
    assert sorted(coco.image) == sorted(want)
    tasks = json.loads((tmp_path/'labelstudio'/'tasks.json').read_text())
    assert len({t['data']['image'] for t in tasks}) == 4
    res = export_crops(pd.concat([bx, bx.assign(target='b', instance=bx.item + '#b')]), tmp_path/'crops', root=src, progress=False)
    assert res.dest.is_unique and res.written.all()

def test_exports_check_boxes_and_list_what_they_left_out(tmp_path):
    paths = [_img(tmp_path/'src'/f"{i}.png", seed=i) for i in range(6)]
    bx = _table(paths, [[1, 1, 10, 10], [np.nan, 1, 10, 10], [10, 1, 5, 10], [1, 1, 60, 10], [1, 1, 10, 10], [2, 2, 9, 9]])
    bx.loc[4, ['error', 'fallback']] = ['OSError: truncated', 'unreadable']
    bx.loc[4, margin_cols(0.95)] = np.nan
    os.remove(paths[5])                                             # gone since the box pass
    for f in EXPORT_FORMATS:
        out = export_boxes(bx, tmp_path/f, f, progress=False, **(LS if f == 'labelstudio' else {}))
        assert out['boxes'] == 1, f
        sk = pd.read_csv(out['skipped_csv'])
        assert sorted(sk.item) == sorted(str(p) for p in paths[1:]), f
        reasons = dict(zip(sk.item, sk.reason))
        assert 'not finite' in reasons[str(paths[1])] and 'x0 < x1' in reasons[str(paths[2])]
        assert 'not inside' in reasons[str(paths[3])] and 'truncated' in reasons[str(paths[4])] and 'not found' in reasons[str(paths[5])]
    for f in EXPORT_FORMATS:                                        # a missing score or image size: no NaN written, no crash
        bad = bx.assign(prob=[np.nan, 0.9, 0.9, 0.9, 0.9, 0.9], width=[50., np.nan, 50, 50, 50, 50])
        out = export_boxes(bad, tmp_path/'nan'/f, f, progress=False, **(LS if f == 'labelstudio' else {}))
        assert out['boxes'] == 1 and 'no image size' in pd.read_csv(out['skipped_csv']).reason.iloc[0]
    for f in ('coco/instances.json', 'labelstudio/tasks.json', 'nan/coco/instances.json', 'nan/labelstudio/tasks.json'):
        json.loads((tmp_path/f).read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {f}"))
    json.loads((tmp_path/'coco'/'instances.json').read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    json.loads((tmp_path/'labelstudio'/'tasks.json').read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    res = export_crops(bx, tmp_path/'crops', root=tmp_path/'src', progress=False)
    assert res.written.tolist() == [True] + [False]*5
    sk = pd.read_csv(tmp_path/'crops'/'skipped.csv')
    assert sorted(sk.item) == sorted(str(p) for p in paths[1:])
    index = review_sheet(bx, tmp_path/'sheet', progress=False)
    txt = index.read_text()
    assert txt.count('<figure class="box"') == 1 and all(str(p) in txt for p in paths[1:])
    assert len(pd.read_csv(tmp_path/'sheet'/'skipped.csv')) == 5

def test_symlinked_items_keep_the_names_listed(tmp_path):
    blobs = [_img(tmp_path/'blobs'/f"{h}", seed=i) for i, h in enumerate(['9f2c1e', '0a77d3'])]   # a content-addressed cache
    named = tmp_path/'data'
    named.mkdir()
    for n, b in zip(['cat.png', 'dog.png'], blobs): (named/n).symlink_to(b)
    bx = _table([named/'cat.png', named/'dog.png'])
    coco = read_coco(export_boxes(bx, tmp_path/'coco', 'coco', progress=False)['path'])
    assert sorted(coco.image) == ['cat.png', 'dog.png']
    tasks = json.loads(export_boxes(bx, tmp_path/'ls', 'labelstudio', progress=False, **LS)['path'].read_text())
    assert sorted(t['data']['image'] for t in tasks) == ['http://127.0.0.1:8081/cat.png', 'http://127.0.0.1:8081/dog.png']
    assert sorted(read_yolo(export_boxes(bx, tmp_path/'yolo', 'yolo', progress=False)['path'].parent).image) == ['cat.png', 'dog.png']
    res = export_crops(bx, tmp_path/'crops', progress=False)
    assert sorted(pd.read_csv(tmp_path/'crops'/'crops.csv').crop) == ['cat.png', 'dog.png'] and res.written.all()
    assert 'cat.png' in review_sheet(bx, tmp_path/'sheet', progress=False).read_text()

def test_a_symlink_loop_reported_by_the_box_pass_is_no_crash(tmp_path):
    good = _img(tmp_path/'src'/'ok.png')
    loop = tmp_path/'src'/'loop.png'
    loop.symlink_to(loop)
    bx = _table([good, loop])
    bx.loc[1, ['error', 'fallback']] = ['OSError: [Errno 40] Too many levels of symbolic links', 'unreadable']
    bx.loc[1, margin_cols(0.95)] = np.nan
    for f in EXPORT_FORMATS:
        out = export_boxes(bx, tmp_path/f, f, progress=False, **(LS if f == 'labelstudio' else {}))
        assert (out['images'], out['boxes'], out['failed']) == (1, 1, 1)
        assert pd.read_csv(out['skipped_csv']).item.tolist() == [str(loop)]
    res = export_crops(bx, tmp_path/'crops', progress=False)
    assert res.written.tolist() == [True, False] and 'symbolic links' in res.error[1]
    assert 'symbolic links' in review_sheet(bx, tmp_path/'sheet', progress=False).read_text()

def test_review_sheet_links_work_from_any_directory(tmp_path, monkeypatch):
    _img(tmp_path/'work'/'imgs'/'a.png')
    monkeypatch.chdir(tmp_path/'work')
    bx = _table([Path('imgs')/'a.png'])                              # items relative to the working directory
    index = review_sheet(bx, tmp_path/'elsewhere'/'sheet', progress=False)
    monkeypatch.chdir(tmp_path)
    import re
    srcs = set(re.findall(r'src="([^"]+)"', index.read_text()))
    assert srcs and all((index.parent/s).resolve() == (tmp_path/'work'/'imgs'/'a.png').resolve() for s in srcs)
    absolute = review_sheet(bx.assign(item=str(tmp_path/'work'/'imgs'/'a.png')), tmp_path/'abs', links='absolute', progress=False)
    assert all(s.startswith('file://') for s in re.findall(r'src="([^"]+)"', absolute.read_text()))
