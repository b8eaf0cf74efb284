"""Issue #8, bad input, faults and long runs: unreadable files are reported and the pass goes on; every image mode and
EXIF orientation; tiny and huge images; degenerate maps; models, learners and transforms that cannot give boxes;
wrong arguments; nothing lost after an exception or Ctrl-C; deterministic results. CPU, tiny images, seconds each."""
import copy, hashlib, json, os, shutil, signal, subprocess, sys, time, warnings
from functools import partial
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image
from fastai.vision.all import (ImageDataLoaders, Resize, vision_learner, accuracy, set_seed, Learner, DataLoaders, Datasets,
                               noop, aug_transforms)
from fasttransform import Transform
import fastai_attncrop.learner as L, fastai_attncrop.boxpass as BP
import fastai_attncrop.crop as crop_mod
from fastai_attncrop.data import make_shapes, shown_image, shown_size, UnreadableImageError, atomic_write
from fastai_attncrop.models import small_cnn
from fastai_attncrop.boxes import mass_box, threshold_box, fallback_maps
from fastai_attncrop.saliency import saliency_maps, SmoothGrad, frozen_eval
from fastai_attncrop.crop import check_margins, margin_cols, export_crops, mixed_items
from fastai_attncrop.boxpass import box_pass, box_chunk, learner_items
from conftest import exif_shown_box, shapes_settings

warnings.filterwarnings('ignore')

class Interrupted(Exception): "Stands for a crash in the middle of a pass."

@pytest.fixture(scope='module')
def setup(tmp_path_factory, fit_shapes):
    tmp = tmp_path_factory.mktemp('faults')
    root, learn = fit_shapes(tmp, n_train=40, bs=8, widths=(16, 32, 32, 32), epochs=4)   # `_SIGINT_SCRIPT` rebuilds it
    return tmp, root, learn

def _valid(learn): return learner_items(learn).query("split=='valid'").item.tolist()

def _count_saliency(monkeypatch, fail_at=None, exc=Interrupted):
    real, n = BP.saliency_maps, [0]
    def wrapped(*a, **k):
        n[0] += 1
        if fail_at is not None and n[0] == fail_at: raise exc('interrupted')
        return real(*a, **k)
    monkeypatch.setattr(BP, 'saliency_maps', wrapped)
    return n

def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob('*')) if p.is_file()}

def _inside(df, margins=(0.95,)):
    for m in margins:
        x0, y0, x1, y1 = (df[c].to_numpy(float) for c in margin_cols(m))
        assert np.isfinite([x0, y0, x1, y1]).all()
        assert ((0 <= x0) & (x0 <= x1) & (x1 <= df.width) & (0 <= y0) & (y0 <= y1) & (y1 <= df.height)).all()

def _plant_bad_files(folder, good_png):
    "Unreadable files of every kind; returns {path: kind}."
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(good_png).read_bytes()
    bad = {'zero.png': b'', 'text.png': b'not an image at all\n', 'random.jpg': np.random.default_rng(0).bytes(500),
           'header_only.png': data[:40], 'truncated.png': data[:len(data)//2]}
    for name, b in bad.items(): (folder/name).write_bytes(b)
    return {str(folder/n): n for n in bad} | {str(folder/'missing.png'): 'missing'}

# --- Inputs: unreadable files ------------------------------------------------------------------------------------

def test_unreadable_files_reported_pass_goes_on(setup, tmp_path):
    tmp, root, learn = setup
    good = _valid(learn)
    bad = _plant_bad_files(tmp_path/'bad', good[0])
    items = good[:3] + list(bad)[:3] + good[3:6] + list(bad)[3:] + good[6:]   # broken files inside batches
    ref = box_pass(learn, good, margins=(0.95, 0.6), cache=False, progress=False)
    with pytest.warns(UserWarning, match=f'{len(bad)} of {len(items)} images could not be read'):
        res = box_pass(learn, items, margins=(0.95, 0.6), cache=tmp_path/'c', progress=False)
    assert res.item.tolist() == items                                          # no silent drop, same order
    failed = res[res.error.notna()]
    assert sorted(failed.item) == sorted(bad)                                  # every broken file, and only those
    assert all(isinstance(r, str) and ':' in r for r in failed.error)           # exception and message
    assert failed[margin_cols(0.95)].isna().all().all() and not failed.correct.any()
    assert 'FileNotFoundError' in failed.set_index('item').error[str(tmp_path/'bad'/'missing.png')]
    ok = res[res.error.isna()].reset_index(drop=True)
    cols = ['target', 'width', 'height', 'zero', *margin_cols(0.95), *margin_cols(0.6)]
    pd.testing.assert_frame_equal(ok[cols], ref[cols], atol=1e-4, check_dtype=False)   # the others boxed as without them
    again = box_pass(learn, items, margins=(0.95, 0.6), cache=tmp_path/'c', progress=False)  # cached, failures included
    pd.testing.assert_frame_equal(again, res)
    assert [o.path for o in mixed_items(res.assign(label='circle', split='train'), crop_share=0)] == ok.item.tolist()

def test_unreadable_files_reported_from_worker_processes(setup, tmp_path):
    "With DataLoader workers the loader's exception comes back re-wrapped: the failing batch is then loaded item by item."
    tmp, root, learn = setup
    good = _valid(learn)
    bad = _plant_bad_files(tmp_path/'bad', good[0])
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(48), bs=8, num_workers=2)
    workers = Learner(dls, learn.model, loss_func=learn.loss_func)
    items = good[:5] + list(bad) + good[5:]
    res = box_pass(workers, items, margins=(0.95,), cache=False, progress=False)
    ref = box_pass(learn, items, margins=(0.95,), cache=False, progress=False)
    assert sorted(res[res.error.notna()].item) == sorted(bad)
    pd.testing.assert_frame_equal(res.drop(columns='error'), ref.drop(columns='error'), atol=1e-4)

def test_unreadable_files_raise_on_request(setup, tmp_path):
    tmp, root, learn = setup
    good = _valid(learn)
    bad = _plant_bad_files(tmp_path/'bad', good[0])
    for name in ('zero.png', 'truncated.png'):     # one fails at the header, one only while decoding
        with pytest.raises(UnreadableImageError, match=name) as e:
            box_pass(learn, good[:4] + [str(tmp_path/'bad'/name)] + good[4:], cache=False, progress=False, on_error='raise')
        assert e.value.path.endswith(name) and e.value.reason
    with pytest.raises(ValueError, match="`on_error` must be 'report' or 'raise'"): box_pass(learn, good, on_error='skip')

# --- Inputs: modes, orientation, sizes ---------------------------------------------------------------------------

def _mode_files(folder, src):
    "The same picture in every mode Pillow writes; returns paths."
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(src).convert('RGB')
    g16 = (np.asarray(rgb.convert('L'), np.uint16) * 257)
    out = {'L.png': rgb.convert('L'), 'LA.png': rgb.convert('LA'), 'RGBA.png': rgb.convert('RGBA'), 'P.png': rgb.convert('P'),
           'P_transparent.png': rgb.convert('P'), '1.png': rgb.convert('1'), 'I16.png': Image.fromarray(g16),
           'I32.tif': Image.fromarray(g16.astype(np.int32)), 'F.tif': Image.fromarray(g16.astype(np.float32) / 65535),
           'CMYK.jpg': rgb.convert('CMYK'), 'RGB.jpg': rgb, 'gray.jpg': rgb.convert('L'), 'RGB.webp': rgb, 'RGB.bmp': rgb,
           'P.gif': rgb.convert('P')}
    paths = []
    for name, im in out.items():
        kw = {'transparency': 0} if name == 'P_transparent.png' else {}
        im.save(folder/name, **kw); paths.append(str(folder/name))
    return paths

def test_every_mode_loads_and_is_boxed(setup, tmp_path):
    tmp, root, learn = setup
    src = _valid(learn)[0]
    paths = _mode_files(tmp_path/'modes', src)
    grey = np.asarray(Image.open(src).convert('L'), float)
    for p in paths:
        im = shown_image(p)
        assert im.mode == 'RGB' and im.size == shown_size(p) == (48, 48), p
        if any(k in p for k in ('I16', 'I32', 'F.tif')):    # 16-bit and float: scaled to 8 bits, not clipped to white
            assert np.abs(np.asarray(im, float)[..., 0] - grey).max() <= 1, p
    res = box_pass(learn, paths, margins=(0.95,), cache=False, progress=False)
    assert res.error.isna().all()
    _inside(res)

def _orient(displayed:Image.Image, o:int) -> Image.Image:
    "The raw pixels a camera stores so that a viewer applying EXIF orientation `o` shows `displayed`."
    T = Image.Transpose
    inv = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}
    return displayed.transpose(inv[o])

def test_exif_rotated_boxes_land_where_the_user_sees_the_object(setup, tmp_path):
    tmp, root, learn = setup
    src = [p for p in learner_items(learn).item if '_00003' in p][0]
    shown = Image.open(src).convert('RGB').crop((0, 0, 48, 40))      # not square: a rotation swaps width and height
    (tmp_path/'src').mkdir(); shown.save(tmp_path/'src'/'shown.png')
    paths, raws = [str(tmp_path/'src'/'shown.png')], []
    for o in range(2, 9):
        ex = Image.Exif(); ex[0x0112] = o
        _orient(shown, o).save(tmp_path/'src'/f'o{o}.png', exif=ex); paths.append(str(tmp_path/'src'/f'o{o}.png'))
        _orient(shown, o).save(tmp_path/f'raw{o}.png'); raws.append(str(tmp_path/f'raw{o}.png'))   # the same pixels, no EXIF
        assert shown_size(paths[-1]) == (48, 40) and np.array_equal(np.asarray(shown_image(paths[-1])), np.asarray(shown))
    res = box_pass(learn, paths, margins=(0.95, 0.6), cache=False, progress=False)
    assert (res.width == 48).all() and (res.height == 40).all()
    # the model is given the stored pixels, as fastai's loader gives them (issue #30); the boxes are turned to where a viewer sees them
    raw = box_pass(learn, raws, margins=(0.95, 0.6), cache=False, progress=False)
    for o in range(2, 9):
        w, h = (48, 40) if o < 5 else (40, 48)
        for m in (0.95, 0.6):
            want = exif_shown_box(raw.loc[o-2, margin_cols(m)].to_numpy(float), o, w, h)
            assert np.allclose(res.loc[o-1, margin_cols(m)].to_numpy(float), want, atol=1e-4), (o, m)
    up = res.iloc[[0]*len(paths)].reset_index(drop=True).assign(item=paths)   # the upright file's box on every file
    ex = export_crops(up, tmp_path/'crops', margin=0.95, root=tmp_path/'src', progress=False)
    first = np.asarray(Image.open(ex.dest[0]))
    assert all(np.array_equal(np.asarray(Image.open(d)), first) for d in ex.dest)    # the crop the user expects

def test_tiny_and_huge_images(setup, tmp_path, monkeypatch):
    tmp, root, learn = setup
    rng = np.random.default_rng(0)
    for name, (w, h) in {'tiny.png': (5, 3), 'pixel.png': (1, 1), 'thin.png': (200, 2)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path/name)
    big = np.zeros((4000, 6000, 3), np.uint8); big[1500:2500, 4000:5200] = (255, 200, 0)
    Image.fromarray(big).save(tmp_path/'big.jpg', quality=80); del big
    sizes = []
    real = F.interpolate
    def spy(*a, **k):
        out = real(*a, **k); sizes.append(out[0, 0].numel()); return out
    monkeypatch.setattr(F, 'interpolate', spy)
    paths = [str(tmp_path/n) for n in ('tiny.png', 'pixel.png', 'thin.png', 'big.jpg')]
    res = box_pass(learn, paths, margins=(1, 0.95, 0.6), cache=False, progress=False)
    assert res.error.isna().all() and res[['width', 'height']].values.tolist() == [[5, 3], [1, 1], [200, 2], [6000, 4000]]
    _inside(res, (1, 0.95, 0.6))
    assert max(sizes, default=0) <= 48*48                       # no map is ever built at the original resolution

# --- Inputs: degenerate maps ------------------------------------------------------------------------------------

def test_degenerate_maps_fall_back_to_the_whole_image(setup, monkeypatch):
    tmp, root, learn = setup
    maps = torch.rand(5, 6, 6)
    maps[1] = 0; maps[2] = 0.3; maps[3, 2, 2] = float('nan'); maps[4, 0, 1] = float('inf')
    for f in (mass_box, threshold_box):
        b = f(maps)
        assert not torch.isnan(b).any() and b[1:].tolist() == [[0, 0, 6, 6]]*4
    assert fallback_maps(maps).tolist() == [False, True, True, True, True]
    real = BP.saliency_maps
    def degenerate(*a, **k):                                   # the engine's maps replaced by degenerate ones
        sm = real(*a, **k)
        kinds = [torch.zeros_like(sm.maps[0]), torch.full_like(sm.maps[0], 2.), torch.full_like(sm.maps[0], float('nan'))]
        sm.maps = torch.stack([kinds[i % 3] for i in range(len(sm.maps))])
        return sm
    monkeypatch.setattr(BP, 'saliency_maps', degenerate)
    res = box_pass(learn, _valid(learn), margins=(0.95, 0.6), cache=False, progress=False)
    assert res.zero.all() and not res.isna()[margin_cols(0.95) + margin_cols(0.6) + ['area_ratio']].any().any()
    assert (res.x0_60 == 0).all() and (res.x1_60 == res.width).all() and (res.y1_95 == res.height).all()

# --- Inputs: models, learners and transforms that cannot give boxes ----------------------------------------------

def test_models_that_cannot_give_a_map(setup):
    tmp, root, learn = setup
    xb = learn.dls.valid.one_batch()[0]
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3*48*48, 3))
    with pytest.raises(ValueError, match=r'no layer with a spatial.*pass `layers`'): saliency_maps(mlp, xb)
    with pytest.raises(ValueError, match=r'not a \(N, C, h, w\) feature map.*pass `layers=`'): saliency_maps(mlp, xb, layers='1')
    class Detached(nn.Module):
        def __init__(self): super().__init__(); self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)
        def forward(self, x): return self.fc(self.conv(x).detach().mean((2, 3)))
    with pytest.raises(ValueError, match=r'get no gradient from the target layer.*pass `layers=`'): saliency_maps(Detached(), xb)
    class Unused(nn.Module):
        def __init__(self): super().__init__(); self.conv, self.unused, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.Linear(4, 3)
        def forward(self, x): return self.fc(self.conv(x).mean((2, 3)))   # `unused` never runs
    with pytest.raises(ValueError, match='not run by the model'): saliency_maps(Unused(), xb, layers='unused')
    with pytest.raises(ValueError, match=r'concat_pool=False, lin_ftrs=\[\]'): saliency_maps(learn, xb, 'cam')

def test_non_vision_learners_are_refused(setup):
    ds = Datasets(list(range(8)), tfms=[[noop], [noop]])
    tab = Learner(DataLoaders.from_dsets(ds, ds, bs=4), nn.Linear(1, 1), loss_func=nn.MSELoss())
    for call in (lambda: box_pass(tab), lambda: tab.attention_crop(epochs=1), lambda: box_chunk(tab, pd.DataFrame({'item': ['a'], 'split': [None], 'label': [None]}))):
        with pytest.raises(TypeError, match=r'needs a vision Learner.*ImageDataLoaders'): call()

class Mystery(Transform):
    "An item transform the box mapping knows nothing about."
    order = 5
    def encodes(self, x): return x

def test_unknown_transforms_fail_before_any_work(setup, monkeypatch):
    tmp, root, learn = setup
    calls = _count_saliency(monkeypatch)
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=[Resize(48), Mystery()], bs=8, num_workers=0)
    odd = Learner(dls, learn.model, loss_func=learn.loss_func)
    with pytest.raises(TypeError, match=r'valid-time item transform Mystery.*item_tfms=Resize'): box_pass(odd, cache=False, progress=False)
    assert calls[0] == 0
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(48), batch_tfms=aug_transforms(size=32), bs=8, num_workers=0)
    odd = Learner(dls, learn.model, loss_func=learn.loss_func)
    with pytest.raises(ValueError, match=r'batch transforms change the input size \(48x48.*32x32'): box_pass(odd, cache=False, progress=False)
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(48), batch_tfms=aug_transforms(), bs=8, num_workers=0)
    ok = box_pass(Learner(dls, learn.model, loss_func=learn.loss_func), _valid(learn), cache=False, progress=False)
    _inside(ok)                                               # train-only augmentations are fine

# --- Inputs: wrong arguments --------------------------------------------------------------------------------------

def test_wrong_arguments_name_the_argument_and_what_is_allowed(setup, monkeypatch):
    tmp, root, learn = setup
    maps = torch.rand(2, 4, 4)
    for eps in (-0.1, 0.5, 0.7, float('nan')):
        with pytest.raises(ValueError, match=r'`eps` must be in \[0, 0.5\)'): mass_box(maps, eps=eps)
    for m in (0, -0.2, 1.01, float('nan'), 'wide', [], [0.9, 2]):
        with pytest.raises(ValueError, match=r'`margins` must .*\(0, 1\]'): check_margins(m)
    calls = _count_saliency(monkeypatch)
    xb = learn.dls.valid.one_batch()[0]
    with pytest.raises(ValueError, match=r"unknown `method` 'gradcam2'; available: \[.*'gradcam'"): saliency_maps(learn, xb, 'gradcam2')
    with pytest.raises(ValueError, match=r"class name\(s\) \['zebra'\] not in the vocab \['circle'"): saliency_maps(learn, xb, target='zebra')
    bad_calls = {"unknown `method` 'gradcam2'": dict(method='gradcam2'), '`margins` must': dict(margins=[0.9, 0]),
                 r"`target` must be None .*'label', or a class name of the vocab \['circle'": dict(target='zebra'),
                 '`area_tau` must be in': dict(area_tau=1), '`bs` must be an integer >= 1': dict(bs=0),
                 '`chunk_batches` must be an integer >= 1': dict(chunk_batches=0), "`on_error` must be": dict(on_error='ignore')}
    for msg, kw in bad_calls.items():
        with pytest.raises(ValueError, match=msg): box_pass(learn, **kw)
    fit_calls = {r'`crop_share` must be in \[0, 1\]': dict(crop_share=1.5), r'`margins` must .*\(0, 1\]': dict(margins=[0.9, 1.5]),
                 r'`fit` must name a fitting method of the Learner \(fit_one_cycle': dict(fit='fit_one_cylce'),
                 r'`margins` must .*\(0, 1\]|valid_margin': dict(valid_margin=0)}
    for msg, kw in fit_calls.items():
        with pytest.raises(ValueError, match=msg): learn.attention_crop(epochs=1, **kw)
    assert calls[0] == 0                                      # all refused before any work

# --- Nothing lost ---------------------------------------------------------------------------------------------------

def test_originals_never_modified(setup, tmp_path):
    tmp, root, learn = setup
    before = _digest(root)
    bx = box_pass(learn, cache=tmp_path/'c', progress=False)
    export_crops(bx, tmp_path/'crops', margin=0.95, root=root, progress=False)
    learn.attention_crop(epochs=1, lr=1e-4, fresh=True, cache=tmp_path/'c', progress=False)
    with pytest.raises(ValueError, match='inside the source tree'): export_crops(bx, root/'out', root=root, progress=False)
    assert _digest(root) == before

def test_writes_are_atomic(setup, tmp_path, monkeypatch):
    tmp, root, learn = setup
    def torn(self, path, *a, **k):                            # the process dies half way through writing the file
        Path(path).write_bytes(b'half a pickle'); raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, 'to_pickle', torn)
        with pytest.raises(KeyboardInterrupt): box_pass(learn, _valid(learn), cache=tmp_path/'c', progress=False)
    assert [p for p in (tmp_path/'c').rglob('*') if p.is_file()] == []
    bx = box_pass(learn, _valid(learn), cache=tmp_path/'c', progress=False)
    def torn_save(self, fp, *a, **k): Path(fp).write_bytes(b'\x89PNG half'); raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(Image.Image, 'save', torn_save)
        with pytest.raises(KeyboardInterrupt): export_crops(bx, tmp_path/'crops', root=root, progress=False)
    assert [p for p in (tmp_path/'crops').rglob('*') if p.is_file()] == []

_SIGINT_SCRIPT = '''
import json, signal, sys, time, torch
signal.signal(signal.SIGINT, signal.default_int_handler)   # a shell's background job starts with Ctrl-C ignored
from functools import partial
import fastai_attncrop.learner as L, fastai_attncrop.boxpass as BP
from fastai_attncrop.models import small_cnn, shapes_learner
root, weights, cache, settings = sys.argv[1:5]             # the set's folder is reused: made with the same settings
learn = shapes_learner(partial(small_cnn, widths=(16, 32, 32, 32)), root, bs=8, **json.loads(settings))
learn.model.load_state_dict(torch.load(weights))
real = BP.saliency_maps
def slow(*a, **k): time.sleep(0.25); return real(*a, **k)
BP.saliency_maps = slow
print('start', flush=True)
BP.box_pass(learn, margins=(0.95, 0.6), cache=cache, chunk_batches=1, progress=False)
print('finished', flush=True)
'''

def test_sigint_mid_box_pass_resumes_to_the_same_result(setup, tmp_path, monkeypatch):
    tmp, root, learn = setup
    torch.save(learn.model.state_dict(), tmp_path/'w.pt')
    (tmp_path/'run.py').write_text(_SIGINT_SCRIPT)
    env = {**os.environ, 'PYTHONPATH': str(Path(L.__file__).parents[1]), 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen([sys.executable, str(tmp_path/'run.py'), str(root), str(tmp_path/'w.pt'), str(tmp_path/'c'),
                             json.dumps(shapes_settings(40))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # finished chunk files only: `atomic_write`'s temporary file (.00000.pkl.XXXX.pkl) matches '*.pkl' while it is written,
    # and a Ctrl-C then rightly removes it, leaving no chunk (the CI run of stop 14 failed on that race)
    def parts(): return list((tmp_path/'c').glob('*.parts/[0-9]*.pkl'))
    t0 = time.time()
    while not parts():
        assert proc.poll() is None and time.time() - t0 < 180, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)                          # Ctrl-C after the first chunk
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and 'finished' not in out and 'KeyboardInterrupt' in err
    n_parts = len(parts())
    assert n_parts >= 1 and not list((tmp_path/'c').glob('*.pkl'))      # no final table
    assert not list((tmp_path/'c').rglob('.*.pkl.*'))                      # no temporary file left behind
    ref = box_pass(learn, margins=(0.95, 0.6), cache=False, chunk_batches=1, progress=False)
    calls = _count_saliency(monkeypatch)
    res = box_pass(learn, margins=(0.95, 0.6), cache=tmp_path/'c', chunk_batches=1, progress=False)
    assert calls[0] == -(-len(ref)//8) - n_parts            # the finished chunks were kept
    pd.testing.assert_frame_equal(res, ref)

def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [type(m).__name__ for m in model.modules()])

def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
               for m in model.modules())

class _BoomFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x.clone()
    @staticmethod
    def backward(ctx, g): raise Interrupted('backward')

class Boom(nn.Module):
    "Raises in the forward or the backward pass when told to."
    when = None
    def forward(self, x):
        if self.when == 'forward': raise Interrupted('forward')
        return _BoomFn.apply(x) if self.when == 'backward' else x

@pytest.mark.parametrize('method', ['gradcam', 'layercam', 'gradient', 'guided_backprop', SmoothGrad('gradcam', n=2)])
@pytest.mark.parametrize('when', ['forward', 'backward', 'keyboard'])
def test_after_an_exception_the_model_is_as_before(method, when):
    torch.manual_seed(0)
    boom = Boom()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          boom, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(), nn.Linear(8, 3))
    model.train(); model[1].eval(); model[0].bias.requires_grad_(False)     # mixed modes and flags
    before = _state(model)
    xb = torch.randn(4, 3, 16, 16)
    if when == 'keyboard':
        model[3].register_forward_hook(lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        n0, exc = _n_hooks(model), KeyboardInterrupt
    else: boom.when, n0, exc = when, 0, Interrupted
    with pytest.raises(exc): saliency_maps(model, xb, method, layers='3' if method not in ('gradient', 'guided_backprop') else None)
    assert _n_hooks(model) == n0 and _state(model) == before
    assert all(p.grad is None for p in model.parameters()) and xb.grad is None

def test_after_an_exception_in_a_box_pass_the_learner_is_as_before(setup):
    tmp, root, learn = setup
    boom = Boom()
    model = copy.deepcopy(learn.model)
    model[1] = nn.Sequential(boom, *model[1])
    other = Learner(learn.dls, model, loss_func=learn.loss_func)
    model.train(); model[0][0].eval()
    before = _state(model)
    for when in ('forward', 'backward'):
        boom.when = when
        with pytest.raises(Interrupted): box_pass(other, cache=False, progress=False)
        assert _n_hooks(model) == 0 and _state(model) == before and all(p.grad is None for p in model.parameters())

def test_interrupted_attention_crop_resumes_to_the_same_result(setup, tmp_path, monkeypatch):
    tmp, root, learn = setup
    w0 = copy.deepcopy(learn.model.state_dict())
    dls0, opt0 = learn.dls, learn.opt
    def run(): return learn.attention_crop(epochs=2, lr=1e-3, margins=(0.95, 0.8), cache=tmp_path/'c', progress=False)
    opt_state = copy.deepcopy(opt0.state_dict())
    def reset(): learn.model.load_state_dict(w0); opt0.load_state_dict(copy.deepcopy(opt_state)); learn.dls, learn.opt = dls0, opt0
    ref = run(); w_ref = copy.deepcopy(learn.model.state_dict()); reset()
    shutil.rmtree(tmp_path/'c')                               # the interrupted runs start from nothing
    # 1. interrupted in the box pass: the finished chunks are kept, the learner was not touched yet
    _count_saliency(monkeypatch, fail_at=12, exc=KeyboardInterrupt)    # chunks of 8 batches: one finished
    with pytest.raises(KeyboardInterrupt): run()
    monkeypatch.undo()
    assert list((tmp_path/'c').glob('*.parts/*.pkl'))
    # 2. interrupted in the re-fit (fresh=False): weights, optimizer and DataLoaders are put back
    from fastai.optimizer import Optimizer
    real, n = Optimizer.step, [0]
    def step(self, *a, **k):
        n[0] += 1
        if n[0] == 7: raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(Optimizer, 'step', step)
    with pytest.raises(KeyboardInterrupt): run()
    monkeypatch.undo()
    assert n[0] == 7 and learn.dls is dls0 and learn.opt is opt0
    assert all(torch.equal(v, w0[k]) for k, v in learn.model.state_dict().items())
    assert str(opt0.state_dict()) == str(opt_state)
    res = run()
    pd.testing.assert_frame_equal(res.boxes, ref.boxes)
    assert all(torch.equal(v, w_ref[k]) for k, v in learn.model.state_dict().items())
    assert res.metrics_after == ref.metrics_after
    reset()

def test_interrupted_export_resumes_to_the_same_files(setup, tmp_path, monkeypatch):
    tmp, root, learn = setup
    bx = box_pass(learn, cache=tmp_path/'c', progress=False)
    ref = export_crops(bx, tmp_path/'ref', root=root, progress=False)
    real, n = crop_mod.save_image_atomic, [0]
    def flaky(*a, **k):
        n[0] += 1
        if n[0] == 17: os.kill(os.getpid(), signal.SIGINT)   # a real Ctrl-C, delivered in the middle of the export
        return real(*a, **k)
    monkeypatch.setattr(crop_mod, 'save_image_atomic', flaky)
    # Python's own Ctrl-C handler, also when pytest runs as a shell's background job (which starts with SIGINT ignored)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt): export_crops(bx, tmp_path/'out', root=root, progress=False)
    finally: signal.signal(signal.SIGINT, old)
    monkeypatch.undo()
    assert 0 < len(_digest(tmp_path/'out')) < len(bx)
    again = export_crops(bx, tmp_path/'out', root=root, progress=False)
    assert _digest(tmp_path/'out') == _digest(tmp_path/'ref') and again.written.sum() < len(bx)

def test_results_are_deterministic(setup, tmp_path):
    tmp, root, learn = setup
    a = box_pass(learn, margins=(0.95, 0.6), cache=False, progress=False)
    b = box_pass(learn, margins=(0.95, 0.6), cache=False, progress=False)
    pd.testing.assert_frame_equal(a, b)
    r1 = learn.attention_crop(epochs=1, lr=1e-3, fresh=True, cache=tmp_path/'c', progress=False)
    r2 = learn.attention_crop(epochs=1, lr=1e-3, fresh=True, cache=tmp_path/'c', progress=False)
    assert all(torch.equal(v, r2.learn.model.state_dict()[k]) for k, v in r1.learn.model.state_dict().items())
    assert [o for o in r1.dls.train_ds.items] == [o for o in r2.dls.train_ds.items]

def test_box_chunk_rows_concatenate_to_the_box_pass(setup):
    "The per-chunk function that a wrapper (sharding, other machines) can call: its rows make the box pass's table."
    tmp, root, learn = setup
    items = learner_items(learn)
    rows = pd.concat([box_chunk(learn, items.iloc[s:s+40], margins=(0.95, 0.6), bs=8) for s in range(0, len(items), 40)],
                     ignore_index=True)
    pd.testing.assert_frame_equal(rows, box_pass(learn, items, margins=(0.95, 0.6), bs=8, cache=False, progress=False))
