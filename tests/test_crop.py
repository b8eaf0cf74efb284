"Tests of fastai_attncrop.crop: margins, crop boxes, the AttentionCrop transform, mixed DataLoaders and export_crops."
import hashlib, random
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
from PIL import Image
from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms
import fastai_attncrop.crop as crop_mod
from fastai_attncrop.data import make_shapes, read_boxes_csv
from fastai_attncrop.crop import (check_margins, margin_eps, margin_cols, df_margins, adaptive_margin, crop_box, CropItem,
                                  CropImage, AttentionCrop, mixed_items, attention_dls, export_crops, gt_recall)

@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = make_shapes(tmp_path_factory.mktemp('crop')/'shapes', n_train=6, n_valid=2, classes=2, size=48, obj_frac=(0.05, 0.2), seed=1)
    gt = read_boxes_csv(root/'boxes.csv')
    # "boxes" = the ground truth at 0.95, its centre half at 0.6: the crop module does not care where boxes come from
    cx, cy, w, h = (gt.xmin+gt.xmax)/2, (gt.ymin+gt.ymax)/2, gt.xmax-gt.xmin, gt.ymax-gt.ymin
    bx = pd.DataFrame({'item': [str(root/p) for p in gt.image], 'label': gt.label, 'split': gt.split, 'area_ratio': 0.03,
                       'width': gt.width, 'height': gt.height,
                       **dict(zip(margin_cols(0.95), [gt.xmin*1., gt.ymin*1., gt.xmax*1., gt.ymax*1.])),
                       **dict(zip(margin_cols(0.6), [cx-w/4, cy-h/4, cx+w/4, cy+h/4]))})
    return root, gt, bx

def test_margins():
    assert margin_eps(0.95) == pytest.approx(0.025) and margin_eps(1) == 0
    assert margin_cols(0.8) == ['x0_80', 'y0_80', 'x1_80', 'y1_80']
    for bad in (0, -1, 1.01, [0.5, 2], [], 'x'):
        with pytest.raises(ValueError, match=r'`margins`.*\(0, 1\]|`margins`'): check_margins(bad)
    assert adaptive_margin([0.01, 0.3, 0.9], [0.95, 0.8, 0.6]).tolist() == [0.6, 0.8, 0.95]

def test_crop_box_rounds_outwards_inside_image():
    assert crop_box((1.5, 2.5, 3.1, 3.9), (10, 10)) == (1, 2, 4, 4)
    assert crop_box((9.9, 9.9, 12, 12), (10, 10)) == (9, 9, 10, 10)

def test_attention_crop_random_on_train_fixed_elsewhere(shapes):
    root, gt, bx = shapes
    tfm = AttentionCrop(bx, margins=[0.95, 0.6])
    it = CropItem(bx.item[0], bx.label[0], crop=True)
    g = gt.iloc[0]
    full = (g.xmax-g.xmin, g.ymax-g.ymin)
    random.seed(0)
    train_sizes = {tfm(CropImage.create(it), split_idx=0).size for _ in range(30)}
    assert full in train_sizes and len(train_sizes) == 2
    assert {tfm(CropImage.create(it), split_idx=1).size for _ in range(10)} == {full}   # widest margin by default
    assert AttentionCrop(bx, [0.95, 0.6], valid_margin=0.6)(CropImage.create(it), split_idx=1).size != full
    assert tfm(CropImage.create(it._replace(crop=False)), split_idx=0).size == (48, 48)
    with pytest.raises(KeyError, match='no box'): tfm(CropImage.create(CropItem(str(root/'masks'/gt.image[0]), 'x', True)), split_idx=1)

def test_aspect_squares_the_crop_and_keeps_the_object(shapes):
    "With aspect=1 every crop is square (as far as the image allows) and holds its whole box; without, it is the box."
    root, gt, bx = shapes
    sq, plain = AttentionCrop(bx, margins=[0.95], aspect=1), AttentionCrop(bx, margins=[0.95])
    for i in range(len(bx)):
        it = CropItem(bx.item[i], bx.label[i], crop=True)
        g = gt.iloc[i]; bw, bh = g.xmax-g.xmin, g.ymax-g.ymin
        assert plain(CropImage.create(it), split_idx=1).size == (bw, bh)
        w, h = sq(CropImage.create(it), split_idx=1).size
        assert max(bw, bh) <= min(w, h) and max(w, h) <= max(bw, bh) + 1   # square up to the outward rounding (small objects fit)
        x0, y0, x1, y1 = crop_box(bx.loc[i, margin_cols(0.95)].to_numpy(float), (48, 48), aspect=1)
        assert x0 <= g.xmin and y0 <= g.ymin and x1 >= g.xmax and y1 >= g.ymax
    assert crop_box((0, 10, 48, 20), (48, 30), aspect=1) == (0, 0, 48, 30)   # capped at the image
    for bad in (0, -1, float('inf'), 'square'):
        with pytest.raises(ValueError, match='`aspect` must be a positive'): AttentionCrop(bx, margins=[0.95], aspect=bad)

def test_mixed_dls_labels_share_and_show_batch(shapes):
    root, gt, bx = shapes
    dls0 = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(48), batch_tfms=aug_transforms(), bs=8, num_workers=0)
    dls = attention_dls(dls0, bx, margins=[0.95, 0.6], crop_share=0.5)
    items = dls.train_ds.items
    assert sum(o.crop for o in items) == 12 and sum(not o.crop for o in items) == 12
    assert all(o.label == Path(o.path).parent.name for o in items)
    assert not any(o.crop for o in dls.valid_ds.items)
    assert [dls.vocab[int(dls.train_ds[i][1])] for i in range(len(items))] == [o.label for o in items]
    xb, yb = dls.one_batch(); assert xb.shape[-2:] == (48, 48)
    dls.show_batch(max_n=4); plt.close('all')
    dv = attention_dls(dls0, bx, margins=[0.95, 0.6], crop_valid=True)
    assert all(o.crop for o in dv.valid_ds.items)
    assert all(o.crop for o in mixed_items(bx, crop_share=1) if not o.valid) and len(mixed_items(bx, crop_share=0)) == len(bx)

def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob('*')) if p.is_file()}

def test_export_crops_resumable_and_originals_untouched(shapes, tmp_path, monkeypatch):
    root, gt, bx = shapes
    before = _digest(root)
    ref = export_crops(bx, tmp_path/'ref', margin=0.95, root=root, progress=False)
    assert ref.written.all()
    real, n = crop_mod.save_image_atomic, [0]
    def flaky(*a, **k):
        n[0] += 1
        if n[0] == 5: raise KeyboardInterrupt('interrupted')
        return real(*a, **k)
    monkeypatch.setattr(crop_mod, 'save_image_atomic', flaky)
    with pytest.raises(KeyboardInterrupt): export_crops(bx, tmp_path/'out', margin=0.95, root=root, progress=False)
    assert len([f for f in _digest(tmp_path/'out') if f.endswith('.png')]) == 4   # four finished files, no partial one
    assert len(pd.read_csv(tmp_path/'out'/'crops.csv')) == 4                       # and listed in the manifest
    monkeypatch.setattr(crop_mod, 'save_image_atomic', real)
    again = export_crops(bx, tmp_path/'out', margin=0.95, root=root, progress=False)
    assert again.written.sum() == len(bx) - 4
    assert _digest(tmp_path/'out') == _digest(tmp_path/'ref')
    assert _digest(root) == before
    with pytest.raises(ValueError, match='inside the source tree'): export_crops(bx, root/'crops', root=root)
    assert np.allclose(gt_recall(bx, gt, root, 0.95), 1)

def test_df_margins_and_errors(shapes):
    _, _, bx = shapes
    assert df_margins(bx) == [0.95, 0.6]
    with pytest.raises(ValueError, match='no boxes for margin'): AttentionCrop(bx, [0.8])
    with pytest.raises(ValueError, match='crop_share'): mixed_items(bx, crop_share=-0.1)

MOVED = ['check_margins', 'margin_eps', 'margin_cols', 'df_margins', 'failed_rows', 'row_keys', 'crop_prob_col', 'FALLBACKS',
         'LABEL_DELIM', 'split_labels', 'is_multi_label', 'CropItem']

def test_moved_names_stay_importable():
    "The boxes table's accessors moved to `boxtable` (and `crop_box` to `boxes`); outside code imports them from `crop` as before: the same objects."
    import fastai_attncrop.boxtable as bt, fastai_attncrop.boxes as bxs, fastai_attncrop.all as everything
    for n in MOVED:
        assert getattr(crop_mod, n) is getattr(bt, n), n
        assert getattr(everything, n) is getattr(bt, n), n
    assert crop_mod.crop_box is bxs.crop_box
    from fastai_attncrop.boxpass import item_path, CropItem as C2   # the box pass's names too
    assert item_path is bt.item_path and C2 is bt.CropItem

def test_gt_recall_keys_through_boxes_as_preds(shapes):
    "`gt_recall` joins through `boxes_as_preds`: an unreadable row (NaN) need not lie under `root`; an item outside `root` is named."
    root, gt, bx = shapes
    bad = bx.iloc[:1].assign(item='/elsewhere/x.png', error='OSError: gone')
    r = gt_recall(pd.concat([bx.assign(error=None), bad], ignore_index=True), gt, root)
    assert np.isnan(r[-1]) and np.allclose(r[:-1], 1)
    with pytest.raises(ValueError, match='is not under `root`'): gt_recall(bx.iloc[:1].assign(item='/elsewhere/x.png'), gt, root)

def test_boxes_as_preds_keys(tmp_path):
    "`boxes_as_preds` keys each item by its path under `root` as listed, else resolved (a `root` reached through a symlink)."
    from fastai_attncrop.boxtable import boxes_as_preds, check_boxes
    real = tmp_path/'real'; (real/'sub').mkdir(parents=True); (tmp_path/'link').symlink_to(real)
    bx = pd.DataFrame({'item': [str(real/'sub'/'a.png'), str(tmp_path/'link'/'b.png')], 'fallback': [None, 'zero_map'],
                       **dict(zip(margin_cols(0.95), [[0., 1], [0., 1], [4., 5], [4., 5]]))})
    for root in (real, tmp_path/'link'):
        p = boxes_as_preds(bx, root)
        assert p.image.tolist() == ['sub/a.png', 'b.png'] and p.fallback.tolist() == [False, True], (root, p)
    with pytest.raises(ValueError, match='no box columns'): check_boxes(bx[['item']])
    with pytest.raises(ValueError, match=r'no boxes for margin\(s\) \[0.6\]'): boxes_as_preds(bx, real, 0.6)
