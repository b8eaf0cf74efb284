"Tests of fastai_attncrop.boxes: mass-cut, min/max and contour boxes, box post-processing, input->image mapping, masks."
import numpy as np, pytest, torch, torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck
from hypothesis.extra.numpy import arrays
from fastai.data.transforms import ToTensor
from fastai.vision.augment import Resize, RandomResizedCrop, CropPad
from fasttransform import Pipeline
from fastai_attncrop.data import draw_sample, mask_box
from fastai_attncrop.boxes import (mass_box, mass_edges, map_marginals, fallback_maps, component_boxes, threshold_box,
                                   adjust_boxes, InputFrame, threshold_masks, union_masks, graphcut_mask, _transform_valid)

HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
maps_st = st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda hw: arrays(np.float64, hw, elements=st.one_of(st.just(0.), st.floats(0, 10))))

# ---- mass cut: hand-computed cases ----
def test_mass_box_hand_cases():
    m = torch.zeros(6, 8); m[1:3, 2:5] = 1.
    assert mass_box(m, eps=0).tolist() == [2, 1, 5, 3]
    # 10% of the mass of 3 uniform columns is 0.3 column; of 2 uniform rows 0.2 row
    assert np.allclose(mass_box(m, eps=0.1).tolist(), [2.3, 1.2, 4.7, 2.8])
    # the default keeps the middle 95%: 2.5% of a 1-pixel-wide object is cut from each side of it
    one = torch.zeros(5, 5); one[2, 3] = 4.
    assert np.allclose(mass_box(one).tolist(), [3.025, 2.025, 3.975, 2.975])
    # two separated pixels of mass 1 and 3 along x: 20% cut lands inside the left pixel at 0.8, 20% from the right
    # inside the right one: (3 - 0.8)/3 of it remains
    two = torch.tensor([[1., 0, 0, 3]])
    assert np.allclose(mass_box(two, eps=0.2).tolist(), [0.8, 0.2, 4 - 0.8/3, 0.8])

def test_mass_box_plateau_tightest():
    # mass 1 | zeros | mass 1: with eps = 0.5 - tiny both cuts approach the middle of the empty gap's ends,
    # never leaving zero-mass columns inside the box beyond the consistent edges
    marg = torch.tensor([[1., 0, 0, 0, 1]], dtype=torch.float64)
    lo, hi = mass_edges(marg, 0.25)
    assert (lo.item(), hi.item()) == (0.5, 4.5)
    lo, hi = mass_edges(marg, 0.5 - 1e-9)
    assert lo.item() == pytest.approx(1.0, abs=1e-6) and hi.item() == pytest.approx(4.0, abs=1e-6)

def test_mass_box_fallbacks_and_errors():
    maps = torch.ones(5, 3, 5)
    maps[0, 1, 2] = 2; maps[1] = 0; maps[2, 0, 0] = float('nan'); maps[3, 1, 1] = float('inf'); maps[4] = 0.7  # all equal
    box = mass_box(maps)
    assert not torch.isnan(box).any()
    assert box[1:].tolist() == [[0, 0, 5, 3]]*4
    assert fallback_maps(maps).tolist() == [False, True, True, True, True]
    assert mass_box(-torch.ones(3, 4)).tolist() == [0, 0, 4, 3]   # negatives count as zero
    for eps in (-0.1, 0.5, 1):
        with pytest.raises(ValueError, match=r'`eps` must be in \[0, 0.5\)'): mass_box(maps, eps=eps)
    with pytest.raises(ValueError, match='`maps` must be'): mass_box(torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match='`upsample`'): mass_box(maps, size=(9, 9), upsample='nearest')
    assert mass_box(torch.zeros(2, 7, 7), size=(224, 100)).tolist() == [[0, 0, 224, 100]]*2

def test_mass_box_dtype_and_single_map():
    m = torch.rand(2, 5, 6)
    assert mass_box(m).dtype == torch.float32 and mass_box(m.double()).dtype == torch.float64
    assert torch.equal(mass_box(m[1]), mass_box(m)[1])
    assert mass_box(np.ones((3, 4), np.int64), eps=0).tolist() == [0, 0, 4, 3]

@pytest.mark.parametrize('hw,size', [((7, 7), (224, 224)), ((5, 9), (123, 61)), ((12, 4), (37, 200)), ((7, 7), (5, 5))])
def test_bilinear_marginals_match_interpolate(hw, size):
    g = torch.Generator().manual_seed(0)
    small = torch.rand(6, *hw, generator=g, dtype=torch.float64)**3
    small[0, :, : hw[1]//2] = 0   # a map with an empty half
    full = F.interpolate(small[:, None], size=size[::-1], mode='bilinear', align_corners=False)[:, 0]
    mx, my = map_marginals(small, size)
    assert torch.allclose(mx, full.sum(1), rtol=1e-10) and torch.allclose(my, full.sum(2), rtol=1e-10)
    for eps in (0, 0.025, 0.2):
        got, want = mass_box(small, eps, size=size), mass_box(full, eps)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * max(size)), (eps, got, want)
    # float32 maps, as models give them
    assert torch.allclose(mass_box(small.float(), size=size), mass_box(full.float()), rtol=1e-4, atol=1e-4 * max(size))

def test_scale_upsampling_exact_for_nearest_integer_factor():
    small = torch.rand(3, 7, 5)**2
    full = F.interpolate(small[:, None], scale_factor=(4, 6), mode='nearest')[:, 0]
    for eps in (0, 0.025, 0.3):
        assert torch.allclose(mass_box(small, eps, size=(30, 28), upsample='scale'), mass_box(full, eps), atol=1e-4)
    # bilinear upsampling blends neighbouring cells: inner cuts differ (within half a cell of the border they agree)
    assert not torch.allclose(mass_box(small, 0.3, size=(30, 28)), mass_box(full, 0.3), atol=1e-2)

# ---- mass cut: properties ----
@HYP
@given(maps_st, st.floats(0, 0.49))
def test_box_inside_image_and_ordered(m, eps):
    H, W = m.shape
    x0, y0, x1, y1 = mass_box(torch.tensor(m), eps).tolist()
    assert 0 <= x0 <= x1 <= W and 0 <= y0 <= y1 <= H
    if m.sum() > 0: assert x0 < x1 and y0 < y1

@HYP
@given(maps_st, st.floats(0, 0.49), st.floats(0, 0.49))
def test_boxes_nest_as_eps_grows(m, e1, e2):
    small_eps, big_eps = sorted((e1, e2))
    a, b = mass_box(torch.tensor(m), small_eps), mass_box(torch.tensor(m), big_eps)
    assert a[0] <= b[0] + 1e-9 and a[1] <= b[1] + 1e-9 and b[2] <= a[2] + 1e-9 and b[3] <= a[3] + 1e-9

@HYP
@given(maps_st)
def test_eps_zero_is_minmax_box(m):
    want = mask_box(m > 0)
    got = mass_box(torch.tensor(m), eps=0).tolist()
    assert got == (list(want) if want else [0, 0, m.shape[1], m.shape[0]])

@HYP
@given(maps_st, st.integers(0, 5), st.integers(0, 5), st.floats(0, 0.49))
def test_shifting_the_map_shifts_the_box(m, dx, dy, eps):
    if fallback_maps(torch.tensor(m)): return   # no mass, or all equal: the whole map, wherever it is
    shifted = np.pad(m, ((dy, 2), (dx, 3)))
    a = mass_box(torch.tensor(m), eps).numpy()
    b = mass_box(torch.tensor(shifted), eps).numpy()
    assert np.allclose(b, a + [dx, dy, dx, dy], atol=1e-9)

@HYP
@given(maps_st, st.floats(0, 0.49))
def test_batch_equals_one_by_one(m, eps):
    batch = torch.stack([torch.tensor(m), torch.tensor(m[::-1].copy()), torch.zeros(m.shape, dtype=torch.float64)])
    got = mass_box(batch, eps)
    for i in range(3): assert torch.equal(got[i], mass_box(batch[i], eps))

# ---- threshold + contours ----
def test_component_and_threshold_boxes():
    m = np.zeros((6, 10)); m[1:3, 1:3] = 1; m[2:6, 5:9] = 0.8; m[5, 0] = 0.3
    assert component_boxes(m, 0.5).tolist() == [[5, 2, 9, 6], [1, 1, 3, 3]]
    assert component_boxes(m, 0.2).tolist() == [[5, 2, 9, 6], [1, 1, 3, 3], [0, 5, 1, 6]]
    assert component_boxes(m, 0.85).tolist() == [[1, 1, 3, 3]]
    d = np.zeros((4, 4)); d[0, 0] = d[1, 1] = 1     # diagonal neighbours are one component (8-connectivity)
    assert component_boxes(d, 0.5).tolist() == [[0, 0, 2, 2]]
    t = torch.tensor(np.stack([m, np.zeros_like(m)]))
    assert threshold_box(t, 0.5).tolist() == [[5, 2, 9, 6], [0, 0, 10, 6]]
    assert threshold_box(t, 0.5, component='all').tolist() == [[1, 1, 9, 6], [0, 0, 10, 6]]
    assert threshold_box(t[0], 0.2, component='all').tolist() == [0, 1, 9, 6]
    with pytest.raises(ValueError, match='`tau`'): threshold_box(t, 1.5)
    with pytest.raises(ValueError, match='`component`'): threshold_box(t, component='each')

# ---- padding and minimum size ----
def test_adjust_boxes():
    b = torch.tensor([[2., 2, 4, 4], [0, 0, 2, 2], [9, 7, 10, 8]])
    assert adjust_boxes(b, (10, 8), pad=1).tolist() == [[1, 1, 5, 5], [0, 0, 3, 3], [8, 6, 10, 8]]
    assert adjust_boxes(b, (10, 8), min_size=4).tolist() == [[1, 1, 5, 5], [0, 0, 4, 4], [6, 4, 10, 8]]
    assert adjust_boxes(b, [(10, 8), (10, 8), (3, 3)], min_size=100).tolist() == [[0, 0, 10, 8], [0, 0, 10, 8], [0, 0, 3, 3]]
    assert adjust_boxes(b[0], (10, 8), pad_rel=0.25).tolist() == [1.5, 1.5, 4.5, 4.5]
    with pytest.raises(ValueError, match='`pad` must be >= 0'): adjust_boxes(b, (10, 8), pad=-1)

# ---- back to the original image ----
def _round_trip(tfm, wh, seed):
    img, inst, (box,) = draw_sample(['square'], size=wh, obj_frac=0.08, seed=seed)  # solid: no thin tips to lose
    _, tm = _transform_valid(tfm, img, inst.astype(np.uint8)*255)
    fr = InputFrame.from_tfms(tfm, wh)
    tm = np.asarray(tm) > 0
    assert tm.shape == fr.input_wh[::-1]
    x0, y0, x1, y1 = fr.image_region.round().int().tolist()
    region = np.zeros_like(tm); region[y0:y1, x0:x1] = True
    want = fr.to_image(fr.to_input(box))   # the part of the true box the input shows
    tol = max(wh[0]/fr.input_wh[0], wh[1]/fr.input_wh[1]) + 0.5
    found = mask_box(tm & region)
    if found is None:   # the crop cut the object away entirely
        assert min(want[2] - want[0], want[3] - want[1]) <= tol, (tfm, wh, want)
        return 0
    got = fr.to_image(found)
    assert (got - want).abs().max() <= tol, (tfm, wh, got, want)
    return 1

SIZES = [(96, 64), (64, 96), (80, 80), (50, 30), (33, 71)]
INPUTS = [48, (40, 56), (64, 40)]

@pytest.mark.parametrize('method', ['squish', 'crop', 'pad'])
@pytest.mark.parametrize('pad_mode', ['zeros', 'reflection', 'border'])
def test_resize_round_trip(method, pad_mode):
    checked = 0
    for wh in SIZES:
        for size in INPUTS:
            n = sum(_round_trip(Resize(size, method=method, pad_mode=pad_mode), wh, seed) for seed in range(2))
            checked += n
    assert checked >= 20   # of 30: crops to another aspect ratio cut a few small objects away entirely

def test_random_resized_crop_valid_and_croppad_round_trip():
    checked = 0
    for wh in SIZES:
        for size in INPUTS:
            checked += _round_trip(RandomResizedCrop(size), wh, 0)
            checked += _round_trip(RandomResizedCrop(size, val_xtra=0.3), wh, 1)
            checked += _round_trip(CropPad(size), wh, 0)
            checked += _round_trip([ToTensor(), Resize(size, method='pad'), CropPad(size)], wh, 2)   # sorted by `order`: CropPad first
            checked += _round_trip(Pipeline([Resize(size, method='crop'), ToTensor()]), wh, 3)
    assert checked >= len(SIZES)*len(INPUTS)*5 - 8

def test_input_frame_known_windows_and_errors():
    assert InputFrame.from_tfms(Resize(64), (200, 100)).window == (50, 0, 150, 100)
    assert InputFrame.from_tfms(Resize(64, method='pad'), (200, 100)).window == (0, -50, 200, 150)
    assert InputFrame.from_tfms(Resize(64, method='squish'), (200, 100)).window == (0, 0, 200, 100)
    # RandomResizedCrop(64) at valid time: squish to 64+16=80, centre crop 64 -> window 8..72 of 80
    assert np.allclose(InputFrame.from_tfms(RandomResizedCrop(64), (160, 80)).window, (16, 8, 144, 72))
    fr = InputFrame.from_tfms([Resize(64, method='pad')], (200, 100))
    assert fr.to_image([0, 0, 64, 64]).tolist() == [0, 0, 200, 100]        # padding is clipped away
    assert fr.to_image([0, 0, 64, 64], clip=False).tolist() == [0, -50, 200, 150]
    b = torch.tensor([[3., 20, 40, 30], [0, 16, 64, 48]])
    assert torch.allclose(fr.to_input(fr.to_image(b)), b.double())
    class Mystery: pass
    with pytest.raises(TypeError, match='item transform Mystery'): InputFrame.from_tfms([Resize(8), Mystery()], (10, 10))

# ---- masks ----
def test_threshold_and_union_masks():
    m = torch.tensor([[[0., 1, 2, 3], [4, 5, 6, 7]]])
    assert threshold_masks(m, tau=0.5).int().tolist() == [[[0, 0, 0, 0], [1, 1, 1, 1]]]
    assert threshold_masks(m, percentile=75).int().tolist() == [[[0, 0, 0, 0], [0, 0, 1, 1]]]
    per_class = threshold_masks(torch.stack([m[0], m[0].flip(-1)])[None], tau=0.9)
    assert per_class.shape == (1, 2, 2, 4)
    assert union_masks(per_class).int().tolist() == [[[0, 0, 0, 0], [1, 0, 0, 1]]]
    assert not threshold_masks(torch.zeros(2, 3, 3), percentile=10).any()
    with pytest.raises(ValueError, match='`percentile`'): threshold_masks(m, percentile=-1)
    with pytest.raises(ValueError, match='`tau`'): threshold_masks(m, tau=2)

def _blurred_object(seed, bg='noise'):
    img, inst, _ = draw_sample(['star'], size=(96, 64), obj_frac=0.15, background=bg, n_distractors=0, seed=seed)
    obj = inst > 0
    low = F.adaptive_avg_pool2d(torch.tensor(obj, dtype=torch.float32)[None], (8, 8))[0]   # a feature-resolution map
    return img, obj, low

def test_graphcut_follows_the_object_outline():
    pytest.importorskip('maxflow')
    iou = lambda a, b: (a & b).sum() / (a | b).sum()
    for seed, bg in [(0, 'noise'), (5, 'plain'), (7, 'texture')]:
        img, obj, low = _blurred_object(seed, bg)
        gc = graphcut_mask(img, low)
        up = F.interpolate(low[None, None], size=obj.shape, mode='bilinear', align_corners=False)[0, 0]
        th = threshold_masks(up, tau=0.5).numpy()
        assert gc.shape == obj.shape and gc.dtype == bool
        assert iou(gc, obj) > 0.8 and iou(gc, obj) > iou(th, obj) + 0.15, (seed, iou(gc, obj), iou(th, obj))
        # seeds are hard constraints: the top 5% of the map is object, the bottom 30% background
        full = F.interpolate(low[None, None], size=obj.shape, mode='bilinear', align_corners=False)[0, 0].numpy()
        assert gc[full >= np.percentile(full, 95)].all() and not gc[full <= np.percentile(full, 30)].any()

def test_graphcut_flat_map_and_errors(monkeypatch):
    pytest.importorskip('maxflow')
    img, obj, low = _blurred_object(0)
    assert graphcut_mask(img, torch.zeros(8, 8)).all()
    with pytest.raises(ValueError, match='`bg_pct` < `fg_pct`'): graphcut_mask(img, low, fg_pct=30, bg_pct=30)
    with pytest.raises(ValueError, match='`smoothness`'): graphcut_mask(img, low, smoothness=-1)
    monkeypatch.setitem(__import__('sys').modules, 'maxflow', None)   # as if PyMaxflow were not installed
    with pytest.raises(ImportError, match=r"fastai_attncrop\[segment\]"): graphcut_mask(img, low)

def test_mass_box_of_a_subnormal_map_is_the_box_of_the_same_map_scaled():
    "A map of subnormal values (found by hypothesis: `[[5e-324, 5e-324, 0]]`, eps 0.375) has the box of its normal-valued multiple, not an empty one."
    tiny = torch.tensor([[5e-324, 5e-324, 0.]], dtype=torch.float64)
    big = torch.tensor([[1., 1., 0.]], dtype=torch.float64)
    for eps in (0.375, 0.025, 0.2):
        assert mass_box(tiny, eps).tolist() == mass_box(big, eps).tolist()
        assert mass_box(tiny, eps, size=(30, 10)).tolist() == mass_box(big, eps, size=(30, 10)).tolist()

# --- per-map ε (issue 29's `adapt`)

def test_mass_box_takes_one_eps_per_map():
    "`eps` as a (B,) sequence: each map cut at its own ε, exactly as one call per map."
    import torch
    from fastai_attncrop.boxes import mass_box
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 7, 9, generator=g)
    eps = [0.0, 0.05, 0.2, 0.45]
    got = mass_box(maps, torch.tensor(eps), size=(90, 70))
    want = torch.stack([mass_box(maps[i], e, size=(90, 70)) for i, e in enumerate(eps)])
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match='`eps`'): mass_box(maps, torch.tensor([0.1, 0.6, 0.1, 0.1]))
    with pytest.raises(ValueError, match='`eps`'): mass_box(maps, [0.1, 0.1])   # one per map

def test_item_eps_follows_the_maps_concentration():
    "`item_eps`: `eps * (a/ref)**adapt`, `a` the share of a map above half its maximum; `adapt=0` gives `eps` back unchanged."
    import torch
    from fastai_attncrop.boxes import item_eps
    peak = torch.zeros(20, 20); peak[9:11, 9:11] = 1          # 1% of the map above half its maximum
    wide = torch.zeros(20, 20); wide[2:18, 2:18] = 1          # 64%
    maps = torch.stack([peak, wide])
    assert item_eps(maps, 0.025, 0.) == 0.025
    e = item_eps(maps, 0.025, -1.)
    assert e.shape == (2,) and e[0] > 0.025 > e[1]            # g < 0: concentrated maps cut at a larger ε (a tighter box)
    assert torch.allclose(e, torch.tensor([min(0.45, 0.025*(0.01/0.05)**-1), 0.025*(0.64/0.05)**-1], dtype=e.dtype))
    with pytest.raises(ValueError, match='`adapt`'): item_eps(maps, 0.025, float('inf'))
