"""Property tests (hypothesis) of issue #8: box and metric functions over random maps, shapes and eps, and the image
loader over random bytes, modes, sizes and EXIF orientations. Only the documented exceptions, outputs always inside
the image, never NaN."""
import io, math, tempfile, warnings
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from hypothesis import given, settings, assume, HealthCheck, strategies as st
from hypothesis.extra.numpy import arrays
from fastai.vision.augment import Resize, RandomResizedCrop, CropPad
from fastai_attncrop.boxes import mass_box, threshold_box, component_boxes, adjust_boxes, fallback_maps, InputFrame, threshold_masks
from fastai_attncrop.metrics import box_scores, box_iou, union_area, box_area
from fastai_attncrop.crop import crop_box, check_margins, margin_eps
from fastai_attncrop.data import shown_image, shown_size, UnreadableImageError

warnings.filterwarnings('ignore')
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

def _inside(boxes, W, H, tol=1e-6):
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    assert torch.isfinite(b).all(), b
    x0, y0, x1, y1 = b.unbind(1)
    assert ((x0 >= -tol) & (x0 <= x1 + tol) & (x1 <= W + tol) & (y0 >= -tol) & (y0 <= y1 + tol) & (y1 <= H + tol)).all(), (b, W, H)

values = st.one_of(st.floats(-1, 1e6, allow_nan=False, width=32), st.sampled_from([0., float('nan'), float('inf'), -float('inf')]))
maps = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda s: arrays(np.float32, s, elements=values))
eps = st.floats(0, 0.5, exclude_max=True)
sizes = st.none() | st.tuples(st.integers(1, 700), st.integers(1, 700))

@SETTINGS
@given(maps, eps, sizes, st.sampled_from(['bilinear', 'scale']))
def test_mass_box_inside_the_image(m, e, size, upsample):
    b = mass_box(torch.from_numpy(m), e, size=size, upsample=upsample)
    W, H = size or (m.shape[2], m.shape[1])
    _inside(b, W, H)
    fb = fallback_maps(torch.from_numpy(m))
    assert (b[fb] == torch.tensor([0., 0, W, H])).all()               # degenerate maps: exactly the whole image

@SETTINGS
@given(maps, st.floats(-1, 2) | st.sampled_from([float('nan'), 0.5]))
def test_mass_box_eps_outside_its_range_is_refused(m, e):
    if 0 <= e < 0.5: _inside(mass_box(torch.from_numpy(m), e), m.shape[2], m.shape[1])
    else:
        with pytest.raises(ValueError, match=r'`eps` must be in \[0, 0.5\)'): mass_box(torch.from_numpy(m), e)

@SETTINGS
@given(maps, st.floats(0, 1, exclude_max=True), st.sampled_from(['largest', 'all']))
def test_threshold_and_component_boxes_inside(m, tau, component):
    t = torch.from_numpy(m)
    _inside(threshold_box(t, tau, component), m.shape[2], m.shape[1])
    for mp in m: _inside(component_boxes(mp, tau), m.shape[2], m.shape[1])
    masks = threshold_masks(t, tau)
    assert masks.shape == t.shape and not masks[fallback_maps(t) & ~(t > 0).flatten(1).any(1)].any()

boxes4 = st.tuples(*[st.floats(-50, 250, allow_nan=False)]*4).map(lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))
img_wh = st.tuples(st.integers(1, 200), st.integers(1, 200))

@SETTINGS
@given(boxes4, img_wh, st.floats(0, 20), st.floats(0, 2), st.floats(0, 300))
def test_adjusted_boxes_inside(b, wh, pad, pad_rel, min_size):
    _inside(adjust_boxes(b, wh, pad, pad_rel, min_size), *wh)

@SETTINGS
@given(boxes4, img_wh, st.floats(0.1, 10))
def test_aspect_boxes_inside_holding_the_box_with_the_shape(b, wh, aspect):
    "A box grown to `aspect`: inside the image, holding the (clipped) box, of that shape unless the image caps a side."
    W, H = wh
    x0, y0, x1, y1 = adjust_boxes(b, wh, aspect=aspect).tolist()
    _inside(torch.tensor([x0, y0, x1, y1]), W, H)
    c = adjust_boxes(b, wh).tolist()
    assert x0 <= c[0] + 1e-3 and y0 <= c[1] + 1e-3 and x1 >= c[2] - 1e-3 and y1 >= c[3] - 1e-3
    w, h = x1 - x0, y1 - y0
    assert (w >= W - 1e-3 or h >= H - 1e-3 or h < 1e-3) or w == pytest.approx(aspect*h, rel=1e-3, abs=1e-3)

@SETTINGS
@given(st.tuples(*[st.floats(-1e4, 1e4, allow_nan=False)]*4), img_wh, st.floats(0, 1))
def test_crop_box_whole_pixels_inside(b, wh, pad_rel):
    x0, y0, x1, y1 = crop_box(b, wh, pad_rel)
    assert all(isinstance(v, int) for v in (x0, y0, x1, y1))
    assert 0 <= x0 < x1 <= wh[0] and 0 <= y0 < y1 <= wh[1]

tfms = st.one_of(st.builds(Resize, st.integers(8, 96) | st.tuples(st.integers(8, 96), st.integers(8, 96)),
                           method=st.sampled_from(['squish', 'crop', 'pad'])),
                 st.builds(RandomResizedCrop, st.integers(8, 96)), st.builds(CropPad, st.integers(8, 96)))

@SETTINGS
@given(tfms, img_wh, boxes4)
def test_input_boxes_map_inside_the_original_image(tfm, wh, b):
    fr = InputFrame.from_tfms(tfm, wh)
    _inside(fr.to_image(b), *wh)
    _inside(fr.to_input((0, 0, *wh)), *fr.input_wh)

@SETTINGS
@given(boxes4, st.lists(boxes4, min_size=1, max_size=4), img_wh)
def test_box_scores_in_unit_range(pred, gts, wh):
    s = box_scores(pred, gts, wh)
    for k in ('recall', 'precision', 'iou', 'area_reduction'):
        assert math.isfinite(s[k]) and -1e-9 <= s[k] <= 1 + 1e-9, (k, s)
    ious = box_iou([pred], gts)
    assert np.isfinite(ious).all() and ((ious >= 0) & (ious <= 1 + 1e-9)).all()
    u = union_area(gts)
    assert max(box_area(gts)) - 1e-6 <= u <= box_area(gts).sum() + 1e-6

@SETTINGS
@given(st.floats(-1, 2) | st.sampled_from([float('nan'), 1.0, 0., 5e-324]))
def test_margins_in_unit_interval_or_refused(m):
    if 0 < m <= 1:
        assert 0 <= margin_eps(m) < 0.5
        _inside(mass_box(torch.rand(2, 3, 4), margin_eps(m)), 4, 3)
    else:
        with pytest.raises(ValueError, match=r'`margins`.*\(0, 1\]'): check_margins(m)

# --- the image loader ----------------------------------------------------------------------------------------------

_FORMATS = {'PNG': ('1', 'L', 'LA', 'P', 'RGB', 'RGBA', 'I;16', 'I'), 'TIFF': ('1', 'L', 'LA', 'P', 'RGB', 'RGBA', 'CMYK', 'I;16', 'I', 'F'),
            'JPEG': ('L', 'RGB', 'CMYK'), 'BMP': ('1', 'L', 'P', 'RGB'), 'WEBP': ('RGB', 'RGBA'), 'GIF': ('L', 'P')}
_EXT = {'PNG': '.png', 'TIFF': '.tif', 'JPEG': '.jpg', 'BMP': '.bmp', 'WEBP': '.webp', 'GIF': '.gif'}
_DTYPE = {'1': np.bool_, 'I;16': np.uint16, 'I': np.int32, 'F': np.float32}

def _random_image(draw_bytes, mode, w, h):
    n = {'LA': 2, 'RGB': 3, 'RGBA': 4, 'CMYK': 4}.get(mode, 1)
    raw = np.frombuffer(draw_bytes.ljust(w*h*n*4, b'\0'), np.uint8)
    if mode in _DTYPE:
        a = raw[:w*h*4].view(np.uint32).reshape(h, w)
        a = (a % 65536).astype(_DTYPE[mode]) if mode in ('I;16', 'I') else (a > 2**31) if mode == '1' else (a / 2**32).astype(np.float32)
        return Image.fromarray(a) if mode != 'I;16' else Image.fromarray(a.astype(np.uint16))
    a = raw[:w*h*n].reshape(h, w, n) if n > 1 else raw[:w*h].reshape(h, w)
    return Image.fromarray(a, mode) if mode != 'P' else Image.fromarray(a, 'L').convert('P')

@st.composite
def image_files(draw):
    fmt = draw(st.sampled_from(sorted(_FORMATS)))
    mode = draw(st.sampled_from(_FORMATS[fmt]))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    im = _random_image(draw(st.binary(min_size=0, max_size=64)), mode, w, h)
    orient = draw(st.integers(1, 8)) if fmt in ('PNG', 'TIFF', 'JPEG', 'WEBP') else 1
    buf = io.BytesIO()
    kw = {}
    if orient != 1: ex = Image.Exif(); ex[0x0112] = orient; kw['exif'] = ex
    try: im.save(buf, format=fmt, **kw)
    except (OSError, ValueError, KeyError, TypeError): assume(False)
    return buf.getvalue(), _EXT[fmt], (h, w) if orient in (5, 6, 7, 8) else (w, h), orient

def _write(data, suffix):
    d = Path(tempfile.mkdtemp())
    p = d/f'img{suffix}'; p.write_bytes(data)
    return p

@SETTINGS
@given(image_files(), st.sampled_from(['RGB', 'L', None]))
def test_loader_random_modes_sizes_orientations(f, mode):
    data, suffix, wh, orient = f
    p = _write(data, suffix)
    try: im = shown_image(p, mode)
    except UnreadableImageError as e:   # Pillow turns some TIFFs on load and garbles them: refused, not silently wrong
        assert suffix == '.tif' and orient in (5, 6, 7, 8) and 'differs from the header' in e.reason; return
    assert im.size == shown_size(p) == wh
    if mode: assert im.mode == mode
    if mode == 'RGB': assert np.asarray(im).shape == (wh[1], wh[0], 3)

@SETTINGS
@given(image_files(), st.data())
def test_loader_truncated_files(f, data):
    raw, suffix, wh, _ = f
    cut = data.draw(st.integers(0, len(raw)))
    p = _write(raw[:cut], suffix)
    try: im = shown_image(p)
    except UnreadableImageError as e: assert e.path == str(p) and e.reason; return
    assert im.mode == 'RGB' and im.size == shown_size(p)

@SETTINGS
@given(st.binary(max_size=2000), st.sampled_from(['.png', '.jpg', '.gif', '.tif', '.txt', '']))
def test_loader_random_bytes(raw, suffix):
    p = _write(raw, suffix)
    for f in (shown_image, shown_size):
        try: out = f(p)
        except UnreadableImageError as e: assert str(p) in str(e) and e.reason
        else: assert (out.size if f is shown_image else out) == shown_size(p)
