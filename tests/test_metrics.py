"Tests of fastai_attncrop.metrics: box scores, AP, BoxAcc/MaxBoxAcc/MaxBoxAccV2, PxAP, baselines, evaluate_localization."
import numpy as np, pandas as pd, pytest, torch
from hypothesis import given, settings, strategies as st
from fastai_attncrop.metrics import (box_area, box_iou, union_area, box_scores, average_precision, box_accuracy, mask_iou,
                                     pixel_precision, boxes_from_maps, centred_box, best_centred_size, score_boxes,
                                     evaluate_localization, eps_curve, default_taus, SUMMARY_COLUMNS)

HYP = settings(max_examples=80, deadline=None)
int_box = st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(1, 8), st.integers(1, 8)).map(
    lambda t: (t[0], t[1], t[0]+t[2], t[1]+t[3]))

def _raster(boxes, W=24, H=24):
    m = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in boxes: m[int(y0):int(y1), int(x0):int(x1)] = True
    return m

# ---- geometry and box_scores ----
def test_hand_cases():
    assert union_area([[0, 0, 2, 2], [1, 1, 3, 3]]) == 7
    assert union_area([[0, 0, 4, 4], [1, 1, 2, 2], [3, 0, 5, 1]]) == 17
    assert union_area([[0.5, 0, 1.5, 1], [1, 0, 2, 0.5]]) == pytest.approx(1.25)
    assert np.allclose(box_iou([0, 0, 2, 2], [[1, 0, 3, 2], [0, 0, 2, 2], [5, 5, 6, 6]]), [[1/3, 1, 0]])
    s = box_scores([1, 0, 3, 3], [[0, 0, 2, 2], [1, 1, 3, 3]], (10, 10))
    assert s['recall'] == pytest.approx(5/7) and s['precision'] == pytest.approx(5/6)
    assert s['iou'] == pytest.approx(4/6) and s['area_reduction'] == pytest.approx(0.94) and s['best_gt'] == 1
    # a prediction reaching outside the image is clipped; a GT duplicated does not change recall
    s = box_scores([-4, -4, 5, 10], [[0, 0, 5, 5], [0, 0, 5, 5]], (10, 10))
    assert (s['recall'], s['precision'], s['iou'], s['area_reduction']) == pytest.approx((1, 0.5, 0.5, 0.5))
    assert box_scores([3, 3, 3, 8], [[0, 0, 1, 1]], (10, 10))['precision'] == 0   # empty box
    with pytest.raises(ValueError, match='`gts`'): box_scores([0, 0, 1, 1], [], (4, 4))
    with pytest.raises(ValueError, match='`img_wh`'): box_scores([0, 0, 1, 1], [[0, 0, 1, 1]], (0, 4))

@HYP
@given(st.lists(int_box, min_size=1, max_size=5))
def test_union_area_matches_rasterization(boxes):
    assert union_area(boxes) == _raster(boxes).sum()

@HYP
@given(int_box, st.lists(int_box, min_size=1, max_size=4))
def test_scores_match_rasterization_and_lie_in_unit_interval(pred, gts):
    s = box_scores(pred, gts, (24, 24))
    p, g = _raster([pred]), _raster(gts)
    assert s['recall'] == pytest.approx((p & g).sum()/g.sum())
    assert s['precision'] == pytest.approx((p & g).sum()/p.sum())
    assert s['iou'] == pytest.approx(max(( _raster([pred]) & _raster([b])).sum()/(_raster([pred]) | _raster([b])).sum() for b in gts))
    assert s['area_reduction'] == pytest.approx(1 - p.sum()/24**2)
    for k in ('recall', 'precision', 'iou', 'area_reduction'): assert 0 <= s[k] <= 1

@HYP
@given(st.tuples(st.floats(-20, 40), st.floats(-20, 40), st.floats(-20, 40), st.floats(-20, 40)),
       st.lists(int_box, min_size=1, max_size=3))
def test_every_metric_in_unit_interval_for_any_box(pred, gts):
    s = box_scores(pred, gts, (16, 16))
    for k in ('recall', 'precision', 'iou', 'area_reduction'): assert 0 <= s[k] <= 1 + 1e-12

# ---- AP ----
def test_average_precision_hand_cases():
    assert average_precision([.9, .8, .7], [1, 0, 1], 2) == pytest.approx(0.5 + 0.5*2/3)
    assert average_precision([.9, .8, .7], [1, 0, 1], 4) == pytest.approx(0.25 + 0.25*2/3)
    assert average_precision([.7, .8, .9], [1, 0, 1], 2) == pytest.approx(0.5 + 0.5*2/3)  # order of rows is irrelevant
    assert average_precision([1, 1, 1, 1], [1, 1, 0, 1], 4) == pytest.approx(0.75**2)   # ties: one threshold
    assert average_precision([.3, .9], [1, 0], 1) == pytest.approx(0.5)
    assert average_precision([.5, .4], [1, 1], 2) == 1.0 and average_precision([], [], 3) == 0

def test_missing_scores_rank_last_and_tie():
    "NaN scores (baselines beside scored rows) are one tie below every score, whatever the order of the rows."
    assert average_precision([np.nan]*4, [1, 1, 0, 1], 4) == pytest.approx(0.75**2)
    assert average_precision([np.nan]*4, [0, 1, 1, 1], 4) == pytest.approx(0.75**2)
    assert average_precision([np.nan, .2, np.nan], [1, 0, 1], 2) == pytest.approx(2/3)   # the scored miss comes first

@HYP
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=20), st.integers(0, 5))
def test_ap_in_unit_interval(dets, extra):
    scores, correct = zip(*dets)
    ap = average_precision(scores, correct, sum(correct) + extra)
    assert 0 <= ap <= 1

# ---- MaxBoxAcc / MaxBoxAccV2 ----
def _hand_case():
    m1 = np.zeros((10, 10)); m1[:4, :4] = 0.3; m1[9, 9] = 1     # right only for tau < 0.3 (largest = object)
    m2 = np.zeros((10, 10)); m2[:2, :2] = 1; m2[4:, 4:] = 0.6   # largest is wrong below 0.6, one component exact
    m3 = np.zeros((10, 10)); m3[:6] = 1                        # IoU 0.6 at every tau
    gt = pd.DataFrame(dict(image=['a', 'b', 'c'], label='x', xmin=0, ymin=0, xmax=[4, 2, 10], ymax=[4, 2, 10],
                           width=10, height=10))
    return dict(a=torch.tensor(m1), b=torch.tensor(m2), c=torch.tensor(m3)), gt

def test_max_box_acc_hand_case():
    maps, gt = _hand_case()
    acc = box_accuracy(maps, gt)
    assert acc['MaxBoxAcc'] == pytest.approx(2/3)
    assert acc['MaxBoxAccV2'] == pytest.approx(8/9)
    assert [acc[f'MaxBoxAccV2@{d}'] for d in (0.3, 0.5, 0.7)] == pytest.approx([1, 1, 2/3])
    c = acc['curves'].set_index(acc['curves'].tau.round(2))
    assert c.loc[0.1, 'BoxAcc'] == pytest.approx(2/3) and c.loc[0.4, 'BoxAcc'] == pytest.approx(1/3)
    assert c.loc[0.7, 'BoxAcc'] == pytest.approx(2/3) and c.loc[0.1, 'BoxAccV2@0.5'] == 1
    # only image a with its object: MaxBoxAcc 1; with a single delta the V2 mean is that delta's value
    one = box_accuracy({'c': maps['c']}, gt, deltas=(0.7,))
    assert one['MaxBoxAcc'] == 1 and one['MaxBoxAccV2'] == 0

def test_maps_at_feature_resolution_and_keys_by_class():
    gt = pd.DataFrame(dict(image=['a', 'a'], label=['cat', 'dog'], xmin=[0, 16], ymin=[0, 16], xmax=[16, 32], ymax=[16, 32],
                           width=32, height=32))
    small = torch.zeros(4, 4); small[:2, :2] = 1   # a 4x4 map: block-constant, the top-left quarter
    acc = box_accuracy({('a', 'cat'): small, ('a', 'dog'): small}, gt, taus=[0.5])
    assert acc['MaxBoxAcc'] == 0.5   # right for the cat, wrong for the dog
    with pytest.raises(KeyError, match="image 'zz'"): box_accuracy({'zz': small}, gt)

# ---- PxAP and mask IoU ----
def test_pxap_hand_case():
    px = pixel_precision({'a': torch.tensor([[0., 0.25, 0.5, 1]])}, {'a': np.array([[0, 1, 0, 1]], bool)}, taus=[0, .25, .5, .75])
    assert px['PxAP'] == pytest.approx(1*0.5 + 0.5*0 + 2/3*0.5 + 0.5*0)
    assert px['MaxMaskIoU'] == pytest.approx(2/3) and px['best_tau'] == 0.25
    perfect = pixel_precision({'a': torch.tensor([[0., 1, 0, 1]])}, {'a': np.array([[0, 1, 0, 1]], bool)})
    assert perfect['PxAP'] == 1 and perfect['MaxMaskIoU'] == 1
    # pixels are pooled over images
    two = pixel_precision({'a': torch.tensor([[1., 0]]), 'b': torch.tensor([[1., 0]])},
                          {'a': np.array([[1, 0]], bool), 'b': np.array([[0, 1]], bool)}, taus=[0, 0.5])
    assert two['PxAP'] == pytest.approx(0.5*0.5 + 0.5*0.5)

def test_mask_iou():
    assert mask_iou(torch.tensor([[1, 1, 0]]), torch.tensor([[0, 1, 1]])).item() == pytest.approx(1/3)
    assert mask_iou(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3)).tolist() == [1, 1]
    assert mask_iou(torch.ones(3, 3), torch.zeros(3, 3)).item() == 0

# ---- baselines and the evaluation table ----
def test_baselines():
    assert centred_box((10, 20), 0.5) == (2.5, 5, 7.5, 15)
    gt = pd.DataFrame(dict(image=['a', 'b'], label='x', xmin=[30, 25], ymin=[30, 25], xmax=[70, 75], ymax=[70, 75], width=100, height=100))
    assert best_centred_size(['a', 'b'], gt, sizes=np.linspace(0.1, 1, 10)) == pytest.approx(0.4)
    with pytest.raises(ValueError, match='`rel`'): centred_box((4, 4), 1.5)

def test_evaluate_localization_hand_case():
    maps, gt = _hand_case()
    preds = boxes_from_maps(maps, gt, eps=0)
    preds['score'] = [0.9, 0.8, 0.7]
    per_image, summary = evaluate_localization(preds, gt, maps={'model': maps}, taus=default_taus(0.05))
    assert list(summary.columns[:5]) == SUMMARY_COLUMNS
    assert list(summary.index) == ['model', 'whole image', 'centred box (100% of sides)']
    m = summary.loc['model']
    assert m.Recall == pytest.approx((1 + 1 + 0.6)/3) and m.IoU == pytest.approx((0.16 + 0.04 + 0.6)/3)
    assert m.Precision == pytest.approx((0.16 + 0.04 + 1)/3)
    assert m['Image Area Reduction'] == pytest.approx(0.4/3) and m.BoxAcc == pytest.approx(1/3)
    assert m.mAP == pytest.approx(1/9)   # the only hit is ranked last: recall 0 -> 1/3 at precision 1/3
    assert (m.MaxBoxAcc, m.MaxBoxAccV2) == pytest.approx((2/3, 8/9))
    w = summary.loc['whole image']
    assert (w.Recall, w['Image Area Reduction'], w.IoU) == pytest.approx((1, 0, 0.4))
    assert len(per_image) == 9 and per_image.correct.sum() == 3

def test_evaluate_with_labels_missing_gt_and_masks():
    gt = pd.DataFrame(dict(image=['a', 'a', 'b'], label=['cat', 'dog', 'cat'], xmin=[0, 5, 0], ymin=0, xmax=[5, 10, 10],
                           ymax=[5, 10, 10], width=10, height=10))
    preds = pd.DataFrame(dict(image=['a', 'a', 'b', 'b'], label=['cat', 'dog', 'cat', 'dog'], xmin=[0, 5, 0, 0], ymin=0,
                              xmax=[5, 10, 10, 3], ymax=[5, 10, 10, 3], score=[.9, .8, .7, .95]))
    per_image, summary = evaluate_localization(preds, gt, baselines=False)
    assert per_image.has_gt.tolist() == [True, True, True, False]
    m = summary.loc['model']
    assert m.Recall == 1 and m.IoU == pytest.approx(3/4)   # the dog box on b has IoU 0 and no recall
    assert m.mAP == pytest.approx((1 + 0.5)/2)   # cat: AP 1; dog: the false b box outranks the hit
    with pytest.raises(ValueError, match='missing column'): evaluate_localization(preds.drop(columns='xmax'), gt)
    with pytest.raises(ValueError, match='`gt` is missing'): evaluate_localization(preds, gt.drop(columns='width'))

def test_eps_curve_monotone():
    rng = np.random.default_rng(0)
    gt = pd.DataFrame(dict(image=list('abcd'), label='x', xmin=[2, 10, 0, 5], ymin=[3, 0, 8, 5], xmax=[12, 30, 9, 20],
                           ymax=[9, 11, 24, 26], width=32, height=32))
    maps = {r.image: torch.tensor(rng.random((8, 8)))**4 for r in gt.itertuples()}
    curve = eps_curve(maps, gt)
    assert (np.diff(curve.area_reduction) >= -1e-9).all() and (np.diff(curve.recall) <= 1e-9).all()
    assert curve.area_reduction.iloc[0] == pytest.approx(0, abs=1e-9)   # eps = 0: dense maps give the whole image

def test_show_boxes_reads_images_from_root(tmp_path):
    "show_boxes opens the images by path under `root` (it once failed: PIL's Image was not imported)."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from PIL import Image
    from fastai_attncrop.metrics import show_boxes
    Image.new('RGB', (20, 10), 'white').save(tmp_path/'a.png')
    gt = pd.DataFrame(dict(image=['a.png'], label='x', xmin=[2], ymin=[2], xmax=[8], ymax=[6]))
    fig = show_boxes(None, gt, gt.assign(xmin=[1]), root=tmp_path, ncols=1)
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape[:2] == (10, 20) and len(ax.patches) == 2
    plt.close(fig)
