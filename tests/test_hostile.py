"""Issue #30, a hostile user's cases of the box pass and `attention_crop` (the export cases are in the export tests):
the tensor the model is given, boxes in displayed pixels, fallbacks of the whole original image, unsupported learners
refused at the start, every kind of `items`, special files, a `load_learner` learner, a cache shared by two processes,
and the docs' "what happens when" table checked against these tests. CPU, tiny images, seconds each."""
import ast, json, os, re, shutil, threading, time, warnings
from functools import partial
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch, torch.nn as nn
from PIL import Image
from fastai.vision.all import (ImageDataLoaders, Resize, Learner, DataBlock, ImageBlock, RegressionBlock, MaskBlock, PointBlock,
                               get_image_files, parent_label, RandomResizedCropGPU, vision_learner, load_learner, MSELossFlat,
                               CrossEntropyLossFlat)
import fastai_attncrop.boxpass as BP, fastai_attncrop.learner   # the latter patches `Learner.attention_crop`
from fastai_attncrop.models import small_cnn
from fastai_attncrop.crop import margin_cols
from fastai_attncrop.saliency import saliency_maps
from fastai_attncrop.boxpass import box_pass, learner_items, BoxPlan
from conftest import exif_shown_box

warnings.filterwarnings('ignore')
ROOT = Path(__file__).parent.parent

@pytest.fixture(scope='module')
def setup(tmp_path_factory, fit_shapes):
    tmp = tmp_path_factory.mktemp('hostile')
    root, learn = fit_shapes(tmp, n_train=16, bs=8, widths=(16, 32, 32, 32), epochs=2)
    return tmp, root, learn

def _valid(learn): return learner_items(learn).query("split=='valid'").item.tolist()

def _preds(learn, paths):
    "Class probabilities of `paths` from fastai's own loader (`get_preds` on a `test_dl`)."
    with learn.no_bar(): return learn.get_preds(dl=learn.dls.test_dl(paths, bs=8))[0]

def _same_as_get_preds(learn, paths, res):
    "Whether the box pass explained the class `get_preds` predicts, with the probability it gives."
    p = _preds(learn, paths)
    vocab = [str(v) for v in learn.dls.vocab]
    tgt = torch.tensor([vocab.index(t) for t in res.target])
    return torch.allclose(p[torch.arange(len(p)), tgt], torch.tensor(res.prob.to_numpy(), dtype=p.dtype), atol=1e-4)

# --- The tensor the model is given ---------------------------------------------------------------------------------

def test_exif_rotated_files_seen_as_fastai_loads_them_boxes_where_the_viewer_sees(setup, tmp_path):
    tmp, root, learn = setup
    rng = np.random.default_rng(0)
    files, raws = [], []
    for i, src in enumerate(_valid(learn)[:8]):
        stored = Image.open(src).convert('RGB').crop((0, 0, 48, 36))     # not square: a rotation swaps width and height
        o = [6, 8, 3, 5, 6, 7, 2, 8][i]
        ex = Image.Exif(); ex[0x0112] = o
        stored.save(tmp_path/f'r{i}.jpg', exif=ex, quality=95); files.append(str(tmp_path/f'r{i}.jpg'))
        stored.save(tmp_path/f'raw{i}.jpg', quality=95); raws.append(str(tmp_path/f'raw{i}.jpg'))   # the same pixels, no EXIF
    res = box_pass(learn, files, margins=(0.95, 0.6), cache=False, progress=False)
    assert _same_as_get_preds(learn, files, res)                          # the model saw what fastai's loader gives it
    raw = box_pass(learn, raws, margins=(0.95, 0.6), cache=False, progress=False)
    for i, r in res.iterrows():
        o = [6, 8, 3, 5, 6, 7, 2, 8][i]
        assert (r.width, r.height) == ((36, 48) if o in (5, 6, 7, 8) else (48, 36))   # sizes as a viewer shows the file
        for m in (0.95, 0.6):
            want = exif_shown_box(raw.loc[i, margin_cols(m)].to_numpy(float), o, 48, 36)
            assert np.allclose(r[margin_cols(m)].to_numpy(float), want, atol=1e-4), (i, o, m)

def test_16_and_12_bit_pngs_seen_as_fastai_loads_them(setup, tmp_path):
    tmp, root, learn = setup
    files = []
    for i, src in enumerate(_valid(learn)[:6]):
        a = np.asarray(Image.open(src).convert('L'), np.uint16) * (16 if i % 2 else 257)   # 12-bit and 16-bit data
        Image.fromarray(a).save(tmp_path/f'd{i}.png'); files.append(str(tmp_path/f'd{i}.png'))
    assert Image.open(files[0]).mode.startswith('I')
    res = box_pass(learn, files, margins=(0.95,), cache=False, progress=False)
    assert res.error.isna().all() and _same_as_get_preds(learn, files, res)

def test_boxpass_notebook_says_which_tensor_the_model_sees():
    nb = json.loads((ROOT/'nbs'/'05b_boxpass.ipynb').read_text())
    md = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    assert re.search(r'same tensor.*`get_preds`', md, re.S) and 'EXIF' in md and '16-bit' in md

# --- Boxes mapped back: batch transforms, fallbacks ----------------------------------------------------------------

def test_a_valid_time_crop_among_the_batch_transforms_is_refused(setup):
    tmp, root, learn = setup
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(48), bs=8, num_workers=0,
                                       batch_tfms=RandomResizedCropGPU(48, valid_scale=0.5))
    odd = Learner(dls, learn.model, loss_func=learn.loss_func)
    with pytest.raises(ValueError, match=r'batch transform RandomResizedCropGPU.*validation.*item_tfms'):
        box_pass(odd, _valid(learn)[:4], cache=False, progress=False)
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(48), bs=8, num_workers=0,
                                       batch_tfms=RandomResizedCropGPU(48))       # valid_scale=1: the whole image, fine
    ok = box_pass(Learner(dls, learn.model, loss_func=learn.loss_func), _valid(learn)[:4], cache=False, progress=False)
    assert ok.error.isna().all()

def _zero_maps(monkeypatch):
    real = BP.saliency_maps
    def zero(*a, **k):
        sm = real(*a, **k); sm.maps = torch.zeros_like(sm.maps); return sm
    monkeypatch.setattr(BP, 'saliency_maps', zero)

def test_zero_map_fallback_is_the_whole_original_image(setup, tmp_path, monkeypatch):
    tmp, root, learn = setup
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 40, 3), dtype=np.uint8)).save(tmp_path/'tall.png')
    _zero_maps(monkeypatch)
    for frame in (None, Resize(48, method='squish')):       # the learner's Resize(48) crops the middle 40x40; a squash
        res = box_pass(learn, [str(tmp_path/'tall.png')], margins=(0.95, 0.6), cache=False, progress=False, frame=frame)
        assert res.zero.all() and res.fallback.tolist() == ['zero_map']
        for m in (0.95, 0.6): assert res[margin_cols(m)].to_numpy(float).tolist() == [[0, 0, 40, 200]]

def test_docs_say_what_happens_to_an_unreadable_file():
    for text in ((ROOT/'README.md').read_text(), json.dumps(json.loads((ROOT/'nbs'/'index.ipynb').read_text()))):
        assert 'boxed as the whole image' not in text
        assert re.search(r'unreadable file.*`error` column.*no box', text, re.S)

# --- Learners that are not image classifiers ----------------------------------------------------------------------

def _block_learner(root, blocks, get_y, model, loss, **kw):
    dblock = DataBlock(blocks=blocks, get_items=get_image_files, get_y=get_y, item_tfms=Resize(32), **kw)
    dls = dblock.dataloaders(root/'valid', bs=4, num_workers=0)
    return Learner(dls, model, loss_func=loss)

class _Dense(nn.Module):
    "A per-pixel model (segmentation-like): (N, 3, H, W) -> (N, 2, H, W)."
    def __init__(self): super().__init__(); self.conv = nn.Conv2d(3, 2, 3, padding=1)
    def forward(self, x): return self.conv(x)

def test_regression_segmentation_keypoint_learners_refused_naming_the_task(setup, tmp_path, monkeypatch):
    tmp, root, learn = setup
    (tmp_path/'masks').mkdir()
    for p in get_image_files(root/'valid'): Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path/'masks'/f'{p.stem}.png')
    cnn = lambda n: small_cnn(widths=(8, 8), strides=(2, 2), n_out=n)
    learners = {
        'regression': _block_learner(root, (ImageBlock, RegressionBlock(n_out=2)), lambda p: [0.5, 0.5], cnn(2), MSELossFlat()),
        'segmentation': _block_learner(root, (ImageBlock, MaskBlock(['bg', 'fg'])), lambda p: tmp_path/'masks'/f'{p.stem}.png',
                                       _Dense(), CrossEntropyLossFlat(axis=1)),
        'keypoint': _block_learner(root, (ImageBlock, PointBlock), lambda p: [[10., 12.]], cnn(2), MSELossFlat()),
    }
    calls = [0]
    real = BP.saliency_maps
    monkeypatch.setattr(BP, 'saliency_maps', lambda *a, **k: (calls.__setitem__(0, calls[0]+1), real(*a, **k))[1])
    files = _valid(learn)[:2]
    for task, l in learners.items():
        for call in (lambda: box_pass(l, files, cache=False, progress=False), lambda: l.attention_crop(epochs=1, progress=False)):
            with pytest.raises(TypeError, match=rf'{task} learner.*single- or multi-label') as e: call()
            assert 'item transform' not in str(e.value)
    assert calls[0] == 0                                            # refused before any work
    assert len(box_pass(learn, files, cache=False, progress=False)) == 2   # a single-label classifier still works

# --- attention_crop with boxes of a few items ---------------------------------------------------------------------

def test_attention_crop_with_boxes_of_only_some_items_is_an_error(setup):
    tmp, root, learn = setup
    few = box_pass(learn, _valid(learn)[:3], cache=False, progress=False)
    n = len(learner_items(learn))
    with pytest.raises(ValueError, match=rf'`boxes` has rows for 3 of the learner\'s {n} items.*box_pass'):
        learn.attention_crop(epochs=1, boxes=few, progress=False)
    from fastcore.docments import docments
    assert 'missing items are an error' in docments(Learner.attention_crop)['boxes']

# --- Models with only an attention tensor ---------------------------------------------------------------------------

class _Attn(nn.Module):
    "A toy transformer whose only 4-D activation is its attention weights (batch, heads, tokens, tokens), in `scores`."
    def __init__(self, d=16, heads=2, n=3):
        super().__init__()
        self.embed, self.qk, self.heads, self.scores, self.head = nn.Linear(3*12*12, d), nn.Linear(d, 2*d), heads, nn.Softmax(-1), nn.Linear(d, n)
    def forward(self, x):
        t = self.embed(nn.functional.unfold(x, 12, stride=12).transpose(1, 2))   # 16 patches of 12 x 12 pixels: (B, 16, d)
        B, T, D = t.shape
        q, k = (z.view(B, T, self.heads, D//self.heads).transpose(1, 2) for z in self.qk(t).chunk(2, -1))
        a = self.scores(q @ k.transpose(-1, -2))                        # (B, heads, T, T)
        v = t.view(B, T, self.heads, D//self.heads).transpose(1, 2)
        return self.head((a @ v).transpose(1, 2).reshape(B, T, D).mean(1))

def test_attention_weights_are_not_taken_for_a_feature_map():
    xb = torch.rand(2, 3, 48, 48)
    m = _Attn()
    assert m(xb).shape == (2, 3)
    with pytest.raises(ValueError, match=r'attention|transformer'): saliency_maps(m, xb)
    with pytest.raises(ValueError, match=r'attention|transformer'): saliency_maps(m, xb, layers='scores')

# --- Special files, symlink loops ---------------------------------------------------------------------------------

def test_a_fifo_among_the_items_is_refused_before_it_is_opened(setup, tmp_path):
    tmp, root, learn = setup
    fifo = tmp_path/'pipe.png'; os.mkfifo(fifo)
    def unblock():                                      # if the pass opens the FIFO, this frees it after a while
        time.sleep(30)
        try: open(fifo, 'wb').close()
        except OSError: pass
    threading.Thread(target=unblock, daemon=True).start()
    items = _valid(learn)[:2] + [str(fifo)]
    t0 = time.time()
    res = box_pass(learn, items, cache=False, progress=False)
    assert time.time() - t0 < 20
    assert res.item.tolist() == items and res.error.iloc[:2].isna().all()
    assert re.search(r'not a regular file.*FIFO', res.error.iloc[2])

def test_a_symlink_loop_row_is_reported_not_fatal(setup, tmp_path):
    tmp, root, learn = setup
    os.symlink(tmp_path/'b.png', tmp_path/'a.png'); os.symlink(tmp_path/'a.png', tmp_path/'b.png')
    items = [str(tmp_path/'a.png')] + _valid(learn)[:2]
    res = box_pass(learn, items, margins=(0.95,), cache=tmp_path/'c', progress=False)
    assert res.item.tolist() == items and res.error.iloc[1:].isna().all()
    assert 'symbolic links' in res.error.iloc[0] and res[margin_cols(0.95)].iloc[0].isna().all()

# --- A load_learner learner ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def exported(setup, tmp_path_factory):
    tmp, root, learn = setup
    d = tmp_path_factory.mktemp('export')
    learn.export(d/'model.pkl')
    prod = load_learner(d/'model.pkl')
    return root, prod

def test_load_learner_box_pass_of_files(setup, exported):
    tmp, root, learn = setup
    _, prod = exported
    files = _valid(learn)
    res = box_pass(prod, files, margins=(0.95,), cache=False, progress=False)
    ref = box_pass(learn, files, margins=(0.95,), cache=False, progress=False)
    assert res.item.tolist() == files and res.error.isna().all()
    pd.testing.assert_frame_equal(res[['target', *margin_cols(0.95)]], ref[['target', *margin_cols(0.95)]], atol=1e-4)
    with pytest.raises(ValueError, match=r'no training or validation items.*items='): box_pass(prod, cache=False, progress=False)

def test_load_learner_attention_crop_says_there_is_no_training_set(exported):
    root, prod = exported
    with pytest.raises(ValueError, match=r'no training set.*load_learner'): prod.attention_crop(epochs=1, progress=False)

def test_default_cache_in_the_user_cache_folder_when_learn_path_is_not_writable(setup, exported, tmp_path, monkeypatch):
    tmp, root, learn = setup
    _, prod = exported
    (tmp_path/'file').write_text('x')
    prod.path = tmp_path/'file'/'trainer'          # the trainer's folder from the pickle: cannot be made here
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path/'xdg'))
    files = _valid(learn)[:4]
    plan = BoxPlan.make(prod, files, bs=2, chunk_batches=1)
    assert plan.final.parent == tmp_path/'xdg'/'fastai_attncrop'
    res = box_pass(prod, files, bs=2, chunk_batches=1, progress=False)
    assert len(res) == 4 and plan.final.exists()

# --- Items as a user means them -------------------------------------------------------------------------------------

def test_items_of_every_kind(setup, tmp_path):
    tmp, root, learn = setup
    files = _valid(learn)[:3]
    d = tmp_path/'folder'; (d/'sub').mkdir(parents=True)
    for i, f in enumerate(files): shutil.copy(f, d/('sub' if i else '.')/Path(f).name)
    (d/'notes.txt').write_text('not an image')
    kw = dict(margins=(0.95,), cache=False, progress=False)
    assert box_pass(learn, files[0], **kw).item.tolist() == [files[0]]                      # a string: one file
    assert box_pass(learn, Path(files[0]), **kw).item.tolist() == [files[0]]                # a Path: one file
    got = box_pass(learn, d, **kw)                                                          # a folder: its images
    assert sorted(got.item) == sorted(str(p) for p in get_image_files(d)) and len(got) == 3
    assert box_pass(learn, [Path(f) for f in files], **kw).item.tolist() == files          # a list
    assert box_pass(learn, pd.DataFrame({'item': files}), **kw).item.tolist() == files     # a DataFrame
    for empty in ([], tmp_path/'empty_dir'):
        if isinstance(empty, Path): empty.mkdir()
        with pytest.raises(ValueError, match=r'`items`.*no image'): box_pass(learn, empty, **kw)
    with pytest.raises(ValueError, match=r'`items`.*int'): box_pass(learn, 3, **kw)

# --- A cache shared by two processes --------------------------------------------------------------------------------

def test_cache_shared_with_a_second_process_that_finishes_first(setup, tmp_path, monkeypatch):
    tmp, root, learn = setup
    files = _valid(learn)[:8]
    ref = box_pass(learn, files, bs=2, chunk_batches=1, cache=False, progress=False)
    real = BP._write_pickle
    def other_process_finishes(df, path):       # right after each chunk is written, the other process removes the chunks
        out = real(df, path)
        if Path(path).parent.name.endswith('.parts'): shutil.rmtree(Path(path).parent, ignore_errors=True)
        return out
    monkeypatch.setattr(BP, '_write_pickle', other_process_finishes)
    res = box_pass(learn, files, bs=2, chunk_batches=1, cache=tmp_path/'c', progress=False)
    pd.testing.assert_frame_equal(res, ref)
    plan = BoxPlan.make(learn, files, bs=2, chunk_batches=1, cache=tmp_path/'c2')
    plan.parts.mkdir(parents=True)
    (plan.parts/'00000.pkl').write_bytes(b'')    # a chunk file another process is writing (or one cut off): recomputed
    monkeypatch.setattr(BP, '_write_pickle', real)
    pd.testing.assert_frame_equal(box_pass(learn, files, bs=2, chunk_batches=1, cache=tmp_path/'c2', progress=False), ref)

# --- The docs' "what happens when" table ----------------------------------------------------------------------------

def _what_happens_rows():
    nb = json.loads((ROOT/'nbs'/'05b_boxpass.ipynb').read_text())
    md = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    sec = md.split('### What happens when', 1)
    assert len(sec) == 2, 'the box pass notebook has a "What happens when" section'
    return [l for l in sec[1].splitlines() if l.startswith('|') and not set(l) <= set('|- ')][1:]

def test_what_happens_when_table_names_existing_tests():
    rows = _what_happens_rows()
    tests = {}
    for f in (ROOT/'tests').glob('test_*.py'):
        tests[f.name] = {n.name for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.FunctionDef) and n.name.startswith('test_')}
    cases = ' '.join(r.split('|')[1].lower() for r in rows)
    for case in ('bad image', 'interrupted', 'second export', 'name clash', 'unsupported learner'):
        assert case in cases, case
    for r in rows:
        refs = re.findall(r'`(test_\w+\.py)::(test_\w+)`', r)
        assert refs, r
        for f, fn in refs: assert fn in tests.get(f, ()), (f, fn)

def test_name_clashes_stay_distinct_rows(setup, tmp_path):
    tmp, root, learn = setup
    src = _valid(learn)[:4]
    (tmp_path/'a').mkdir()
    names = ['x.png', 'x.jpg', 'a/b.png', 'a__b.png']
    for s, n in zip(src, names): Image.open(s).convert('RGB').save(tmp_path/n)
    items = [str(tmp_path/n) for n in names]
    res = box_pass(learn, items, margins=(0.95,), cache=tmp_path/'c', progress=False)
    assert res.item.tolist() == items and res.instance.nunique() == 4 and res.error.isna().all()
    ref = box_pass(learn, src, margins=(0.95,), cache=False, progress=False)
    assert np.allclose(res[margin_cols(0.95)].to_numpy(float)[[0, 2, 3]], ref[margin_cols(0.95)].to_numpy(float)[[0, 2, 3]], atol=1e-4)

def test_mixed_dls_open_files_as_the_learner_and_crop_exif_files_where_the_box_is(setup, tmp_path):
    from fastai.vision.all import PILImage
    from fastai_attncrop.crop import CropImage, CropItem, AttentionCrop
    from fastai_attncrop.data import shown_image
    tmp, root, learn = setup
    src = _valid(learn)[0]
    a = np.asarray(Image.open(src).convert('RGB').crop((0, 0, 48, 36))).copy(); a[5:9, 30:40] = (255, 0, 0)   # a red mark
    files = []
    for o in (1, 3, 6, 8):
        ex = Image.Exif(); ex[0x0112] = o
        Image.fromarray(a).save(tmp_path/f'o{o}.png', exif=ex); files.append(str(tmp_path/f'o{o}.png'))
    d16 = tmp_path/'d16.png'; Image.fromarray(np.asarray(Image.open(src).convert('L'), np.uint16)*16).save(d16)
    for f in files + [str(d16)]:     # uncropped: the very pixels fastai's loader gives the learner
        assert np.array_equal(np.asarray(CropImage.create(CropItem(f, 'x'))), np.asarray(PILImage.create(f)))
    for f in files:                  # a box in shown pixels around the mark crops the mark, in the stored orientation
        shown = np.asarray(shown_image(f))
        ys, xs = np.nonzero((shown == (255, 0, 0)).all(-1))
        box = [xs.min(), ys.min(), xs.max()+1, ys.max()+1]
        bx = pd.DataFrame({'item': [f], 'instance': [f + '#x'], 'area_ratio': [0.1], **dict(zip(margin_cols(0.95), box))})
        crop = AttentionCrop(bx, [0.95])(CropImage.create(CropItem(f, 'x', crop=True, key=f + '#x')), split_idx=1)
        assert (np.asarray(crop) == (255, 0, 0)).all(-1).all(), f
