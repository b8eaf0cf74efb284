"Tests of fastai_attncrop.data: the synthetic generator and the ground-truth loaders."
import json
import numpy as np, pandas as pd, pytest
from PIL import Image
from fastai_attncrop import data
from fastai_attncrop.data import (make_shapes, read_boxes_csv, read_voc, read_coco, segmentation_mask, mask_box,
                                  read_instance_mask, SHAPES)

KW = dict(n_train=6, n_valid=3, classes=['circle', 'star', 'cross'], size=[(64, 64), (80, 48)], obj_frac=(0.05, 0.3), seed=5)

@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp('ds')/'shapes', **KW)

def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}

def test_deterministic(shapes, tmp_path):
    again = make_shapes(tmp_path/'again', **KW)
    assert _files(again) == _files(shapes)
    other = make_shapes(tmp_path/'other', **{**KW, 'seed': 6})
    assert (other/'boxes.csv').read_bytes() != (shapes/'boxes.csv').read_bytes()

def test_boxes_match_drawn_pixels(shapes):
    gt = read_boxes_csv(shapes/'boxes.csv')
    assert len(gt) == (6+3)*3
    for r in gt.itertuples():
        inst = read_instance_mask(shapes, r.image)
        m = inst == r.instance
        assert mask_box(m) == (r.xmin, r.ymin, r.xmax, r.ymax), r.image
        img = np.asarray(Image.open(shapes/r.image).convert('RGB'))
        assert img.shape[:2] == inst.shape == (r.height, r.width)
        # the object is painted in its two pattern colours exactly over its mask, and they differ from the outside
        colours = np.unique(img[m], axis=0)
        assert 1 <= len(colours) <= 2
        # and the box is tight: every edge row/column of the box holds object pixels
        sub = m[r.ymin:r.ymax, r.xmin:r.xmax]
        assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()

def test_sizes_and_counts(shapes):
    gt = read_boxes_csv(shapes/'boxes.csv')
    counts = gt.groupby(['split', 'label']).size()
    assert counts.loc['train'].to_dict() == {'circle': 6, 'cross': 6, 'star': 6}
    assert counts.loc['valid'].to_dict() == {'circle': 3, 'cross': 3, 'star': 3}
    assert set(zip(gt.width, gt.height)) <= {(64, 64), (80, 48)}
    frac = (gt.xmax-gt.xmin)*(gt.ymax-gt.ymin)/(gt.width*gt.height)
    # the box is the canvas asked for, up to rounding of its sides to whole pixels
    assert frac.min() >= 0.05*0.8 and frac.max() <= 0.3*1.2
    for split in ('train', 'valid'):
        for c in KW['classes']:
            files = sorted((shapes/split/c).glob('*.png'))
            assert len(files) == (6 if split == 'train' else 3)
    labels = pd.read_csv(shapes/'labels.csv')
    assert len(labels) == 27 and labels.is_valid.sum() == 9

def test_tiny_objects_and_several_per_image(tmp_path):
    p = make_shapes(tmp_path/'tiny', n_train=5, n_valid=0, classes=2, size=128, obj_frac=0.05, n_objects=(2, 3), seed=0)
    gt = read_boxes_csv(p/'boxes.csv')
    per_img = gt.groupby('image').size()
    assert per_img.between(2, 3).all() and len(per_img) == 10
    assert (gt.groupby('image').label.nunique() == 1).all()  # single-label sets repeat the image's class
    frac = (gt.xmax-gt.xmin)*(gt.ymax-gt.ymin)/(128*128)
    assert frac.between(0.04, 0.06).all()
    for img, g in gt.groupby('image'):  # several objects never overlap
        inst = read_instance_mask(p, img)
        assert sorted(np.unique(inst)[1:]) == sorted(g.instance)

def test_multi_label(tmp_path):
    p = make_shapes(tmp_path/'ml', n_train=3, n_valid=1, classes=['circle', 'ring', 'square'], n_objects=(2, 3),
                    multi_label=True, size=96, obj_frac=0.05)
    gt, labels = read_boxes_csv(p/'boxes.csv'), pd.read_csv(p/'labels.csv')
    assert (gt.groupby('image').label.nunique() == gt.groupby('image').size()).all()
    for r in labels.itertuples():
        assert r.labels.split() == sorted(gt[gt.image == r.image].label)

def test_from_folder(shapes):
    from fastai.vision.all import ImageDataLoaders, Resize
    dls = ImageDataLoaders.from_folder(shapes, train='train', valid='valid', item_tfms=Resize(64), bs=4, num_workers=0)
    assert list(dls.vocab) == ['circle', 'cross', 'star']
    assert (len(dls.train_ds), len(dls.valid_ds)) == (18, 9)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 64, 64)

@pytest.mark.parametrize('kw,msg', [
    (dict(n_train=-1), '`n_train`'), (dict(n_valid=2.5), '`n_valid`'),
    (dict(obj_frac=(0.2, 1.5)), '`obj_frac`'), (dict(obj_frac=0), '`obj_frac`'), (dict(obj_frac=(0.3, 0.1)), '`obj_frac`'),
    (dict(classes=['circle', 'logo']), "unknown class name(s) ['logo']"), (dict(classes=1), '`classes`'),
    (dict(n_objects=0), '`n_objects`'), (dict(n_objects=4, multi_label=True, classes=3), '`n_objects`'),
    (dict(size=8), '`size`'), (dict(background='sky'), '`background`'), (dict(n_distractors=-1), '`n_distractors`'),
])
def test_bad_arguments_name_the_argument(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=None) as e: make_shapes(tmp_path/'x', **kw)
    assert msg in str(e.value)
    assert not (tmp_path/'x').exists()  # nothing written

def test_unplaceable_objects(tmp_path):
    with pytest.raises(ValueError, match='without overlap'):
        make_shapes(tmp_path/'x', n_train=1, n_valid=0, obj_frac=0.6, n_objects=3)

def test_existing_folder_protected(shapes, tmp_path):
    with pytest.raises(FileExistsError, match='other settings'): make_shapes(shapes, **{**KW, 'seed': 9})
    (tmp_path/'own').mkdir(); (tmp_path/'own/notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='not empty'): make_shapes(tmp_path/'own', n_train=1, n_valid=0)
    assert (tmp_path/'own/notes.txt').read_text() == 'mine'

def test_interrupted_run_resumes_to_same_result(shapes, tmp_path, monkeypatch):
    calls, real = [0], data.save_image_atomic
    def flaky(img, path, **kw):
        calls[0] += 1
        if calls[0] == 20: raise KeyboardInterrupt
        return real(img, path, **kw)
    monkeypatch.setattr(data, 'save_image_atomic', flaky)
    with pytest.raises(KeyboardInterrupt): make_shapes(tmp_path/'r', **KW)
    assert not (tmp_path/'r/boxes.csv').exists() and (tmp_path/'r/.partial').exists()
    monkeypatch.setattr(data, 'save_image_atomic', real)
    make_shapes(tmp_path/'r', **KW)
    assert _files(tmp_path/'r') == _files(shapes)

def test_read_voc(tmp_path):
    (tmp_path/'a.xml').write_text("""<annotation><filename>a.jpg</filename><size><width>100</width><height>80</height></size>
      <object><name>cat</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>80</ymax></bndbox></object>
      <object><name>dog</name><difficult>1</difficult><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
    </annotation>""")
    (tmp_path/'b.xml').write_text("<annotation><filename>b.jpg</filename><size><width>50</width><height>50</height></size></annotation>")
    df = read_voc(tmp_path)
    assert df[['image', 'label', 'xmin', 'ymin', 'xmax', 'ymax', 'width', 'height', 'difficult']].values.tolist() == [
        ['a.jpg', 'cat', 0, 0, 100, 80, 100, 80, 0], ['a.jpg', 'dog', 10, 20, 30, 40, 100, 80, 1]]
    assert read_voc(tmp_path, labels=['dog']).label.tolist() == ['dog']
    (tmp_path/'c.xml').write_text('<annotation><filename>c.jpg')
    with pytest.raises(ValueError, match='c.xml: not valid XML'): read_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match='no .xml'): read_voc(tmp_path/'nothing')

def _rle_encode_string(mask):
    "COCO's compressed RLE, written here independently of the package to check its decoder."
    flat = np.asarray(mask, bool).T.ravel()
    counts, val, run = [], False, 0
    for v in flat:
        if v == val: run += 1
        else: counts.append(run); val, run = v, 1
    counts.append(run)
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i-2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1f; x >>= 5
            more = not ((ch & 0x10 == 0 and x == 0) or (ch & 0x10 and x == -1))
            if more: ch |= 0x20
            out.append(chr(ch + 48))
    return ''.join(out)

def test_read_coco_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    blob = np.zeros((30, 40), bool); blob[5:17, 8:31] = True; blob[rng.random((30, 40)) < 0.05] = True
    coco = dict(images=[dict(id=1, file_name='x.jpg', width=40, height=30)], categories=[dict(id=3, name='logo')],
                annotations=[dict(id=1, image_id=1, category_id=3, bbox=[4.5, 2, 10, 6], iscrowd=0,
                                  segmentation=[[4.5, 2, 14.5, 2, 14.5, 8, 4.5, 8]]),
                             dict(id=2, image_id=1, category_id=3, bbox=[0, 0, 40, 30], iscrowd=1,
                                  segmentation=dict(size=[30, 40], counts=_rle_encode_string(blob)))])
    (tmp_path/'c.json').write_text(json.dumps(coco))
    df = read_coco(tmp_path/'c.json')
    assert df[['image', 'label', 'xmin', 'ymin', 'xmax', 'ymax']].values.tolist()[0] == ['x.jpg', 'logo', 4.5, 2, 14.5, 8]
    poly = segmentation_mask(df.segmentation[0], 40, 30)
    assert poly.shape == (30, 40) and poly[3:8, 6:14].all() and not poly[20:].any()
    assert (segmentation_mask(df.segmentation[1], 40, 30) == blob).all()
    bad = dict(coco, annotations=[dict(coco['annotations'][0], category_id=9)])
    (tmp_path/'bad.json').write_text(json.dumps(bad))
    with pytest.raises(ValueError, match='unknown category_id 9'): read_coco(tmp_path/'bad.json')
    (tmp_path/'broken.json').write_text('{"images": [')
    with pytest.raises(ValueError, match='broken.json: not valid JSON'): read_coco(tmp_path/'broken.json')

def test_read_boxes_csv_errors(tmp_path):
    (tmp_path/'b.csv').write_text('image,label,xmin,ymin,xmax,ymax\na,c,5,5,2,9\n')
    with pytest.raises(ValueError, match='xmax <= xmin'): read_boxes_csv(tmp_path/'b.csv')
    with pytest.raises(FileNotFoundError, match='no boxes CSV'): read_boxes_csv(tmp_path/'none.csv')

def test_every_shape_fills_its_canvas():
    for s in SHAPES:
        for w, h in [(3, 3), (7, 12), (40, 25)]:
            assert mask_box(data.shape_mask(s, w, h)) == (0, 0, w, h), (s, w, h)
