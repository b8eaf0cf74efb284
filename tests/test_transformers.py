"""Saliency on transformers and timm backbones (issue 22), and the gradient-free methods (Eigen-, Score-, Ablation-CAM).

Maps are checked against pytorch-grad-cam (test-only reference, dev extra) with its standard reshape transforms and
the same layer, on tiny random-init timm models (`pretrained=False`, 32 px inputs: seconds on one core)."""
import numpy as np, pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastai.vision.all import ImageDataLoaders, Resize, Learner, vision_learner, accuracy, set_seed, CrossEntropyLossFlat
from functools import partial
from fastai_attncrop.data import make_shapes
from fastai_attncrop.models import small_cnn, shapes_learner
from fastai_attncrop.saliency import saliency_maps, find_target_layer, MapLayout, SmoothGrad, DDT, Method, METHODS
from fastai_attncrop.layers import _layout_or_reason
from test_saliency import _minmax, _as_pgc, _perturb_head, nontrivial, n_hooks, _state, Boom

timm = pytest.importorskip('timm')
SIZE = 32

def vit(seed=0, **kw):
    "A 2-block ViT on a 4x4 grid of 8 px patches (class token; `deit_tiny_distilled...`: two prefix tokens)."
    torch.manual_seed(seed)
    kw = {'img_size': SIZE, 'patch_size': 8, 'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'num_classes': 3, **kw}
    return _perturb_head(timm.create_model(kw.pop('name', 'vit_tiny_patch16_224'), pretrained=False, **kw)).eval()

def deit(seed=0): return vit(seed, name='deit_tiny_distilled_patch16_224')

def swin(seed=0):
    torch.manual_seed(seed)
    return _perturb_head(timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, num_classes=3, img_size=SIZE,
                                           window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2))).eval()

def tokens_to_map(prefix, grid):
    "pytorch-grad-cam's reshape transform for ViTs (its tutorial's), with `prefix` tokens dropped."
    def f(t):
        r = t[:, prefix:, :].reshape(t.size(0), grid[0], grid[1], t.size(2))
        return r.transpose(2, 3).transpose(1, 2)
    return f

def nhwc_to_map(t): return t.permute(0, 3, 1, 2)   # pytorch-grad-cam's transform for timm's NHWC Swin stages

FAMILIES = {'vit': (vit, lambda m: m.blocks[-1].norm1, tokens_to_map(1, (4, 4))),
            'deit': (deit, lambda m: m.blocks[-1].norm1, tokens_to_map(2, (4, 4))),
            'swin': (swin, lambda m: m.layers[-1], nhwc_to_map)}

@pytest.fixture(scope='module')
def x():
    torch.manual_seed(1)
    return torch.randn(3, 3, SIZE, SIZE)

def _pgc(cls_name, model, layer, x, targets, reshape, **kw):
    pgc = pytest.importorskip('pytorch_grad_cam')
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    with getattr(pgc, cls_name)(model=model, target_layers=[layer], reshape_transform=reshape, **kw) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))

# ------------------------------------------------------------------------------------ against pytorch-grad-cam
@pytest.mark.parametrize('family', list(FAMILIES))
def test_default_layer_and_pytorch_grad_cam(family, x):
    make, layer_of, reshape = FAMILIES[family]
    model = make()
    assert find_target_layer(model) is layer_of(model)          # no probe needed: the model says
    for method, cls in [('gradcam', 'GradCAM'), ('hirescam', 'HiResCAM'), ('scorecam', 'ScoreCAM')]:
        sm = saliency_maps(model, x, method)
        assert sm.maps.shape == (3, 4, 4) and nontrivial(sm.maps), (family, method)
        theirs = _pgc(cls, model, layer_of(model), x, sm.target, reshape)
        torch.testing.assert_close(_as_pgc(sm.maps, x.shape[-2:]), theirs, atol=1e-4, rtol=0, msg=f"{family} {method}")

def test_avg_pooled_vit_maps_its_final_norm(x):
    "A ViT pooling the average of its tokens (no class token) maps its final per-token layer, `norm`."
    model = vit(global_pool='avg', class_token=False)
    assert model.num_prefix_tokens == 0 and find_target_layer(model) is model.norm
    sm = saliency_maps(model, x, 'gradcam')
    assert sm.maps.shape == (3, 4, 4) and nontrivial(sm.maps)
    theirs = _pgc('GradCAM', model, model.norm, x, sm.target, tokens_to_map(0, (4, 4)))
    torch.testing.assert_close(_as_pgc(sm.maps, x.shape[-2:]), theirs, atol=1e-4, rtol=0)

def test_token_grid_from_the_model(x):
    "DeiT's two prefix tokens come from timm's `num_prefix_tokens`; a token count that is not prefix + grid is refused."
    model = deit()
    assert model.num_prefix_tokens == 2
    lay, _ = _layout_or_reason(torch.zeros(1, 18, 32), ('', None, model), (SIZE, SIZE))
    assert lay == MapLayout('tokens', 2, (4, 4))
    assert _layout_or_reason(torch.zeros(1, 17, 32), ('', None, model), (SIZE, SIZE)) == (MapLayout('tokens', 1, (4, 4)), '')
    lay, why = _layout_or_reason(torch.zeros(1, 45, 32), ('', None, None), (SIZE, SIZE))
    assert lay is None and '45 tokens' in why

def test_class_token_layer_refused_after_last_attention(x):
    "At the last block's output the patch tokens get no gradient (class-token pooling): refused, not zero maps."
    model = vit()
    with pytest.raises(ValueError, match=r"'blocks.1'.*prefix \(class\) token\(s\) only"):
        saliency_maps(model, x, 'gradcam', layers='blocks.1')
    sm = saliency_maps(model, x, 'gradcam', layers='blocks.1.norm1')
    assert not sm.zero.any()

# --------------------------------------------------------------------------------------- the finder's refusals
class TinyAttention(nn.Module):
    def __init__(self, c=8, heads=2):
        super().__init__()
        self.num_heads, self.qkv, self.softmax = heads, nn.Linear(c, 3*c), nn.Softmax(-1)
    def forward(self, t):
        B, T, C = t.shape
        q, k, v = self.qkv(t).view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return (self.softmax(q @ k.transpose(-1, -2)) @ v).transpose(1, 2).reshape(B, T, C)

class TokenNet(nn.Module):
    "8x8 patches of a 48x64 image as 48 tokens (no square grid), one attention: its scores are the only 4-D tensors."
    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(192, 8), TinyAttention(), nn.Linear(8, 3)
    def forward(self, x): return self.head(self.attn(self.embed(F.unfold(x, 8, stride=8).transpose(1, 2))).mean(1))

def test_finder_refuses_attention_tensors():
    model, xb = TokenNet(), torch.rand(2, 3, 48, 64)
    with pytest.raises(ValueError, match=r"rejected 'attn.softmax' \(Softmax, output \(1, 2, 48, 48\)\).*2 heads.*`layers=`.*`reshape=`"):
        saliency_maps(model, xb)
    assert n_hooks(model) == 0
    # the case: a ViT the finder knows nothing about (no timm attributes), whose last 4-D tensors are queries
    v = vit(img_size=(24, 40))                      # 3x5 patches: 15 tokens, no square
    plain = nn.Sequential()
    plain.pe, plain.blocks, plain.head = v.patch_embed, v.blocks, nn.Sequential(v.norm, Pick0(), v.head)
    with pytest.raises(ValueError, match=r"rejected 'blocks.1.attn.*inside the attention module 'blocks.1.attn'"):
        find_target_layer(plain, torch.rand(1, 3, 24, 40))

class Pick0(nn.Module):
    def forward(self, t): return t[:, 0] if t.ndim == 3 else t.flatten(1)

def test_custom_reshape():
    model, xb = TokenNet(), torch.rand(2, 3, 48, 64)
    to_map = lambda t: t.transpose(1, 2).reshape(len(t), t.shape[2], 6, 8)
    sm = saliency_maps(model, xb, 'gradcam', layers='embed', reshape=to_map)
    # reference: the gradient of the target logits at the embedding tokens, by hand
    store = {}
    h = model.embed.register_forward_hook(lambda m, i, o: store.setdefault('a', o))
    try:
        out = model(xb)
        a = store['a']
        g, = torch.autograd.grad(out[torch.arange(2), sm.target].sum(), a)
    finally: h.remove()
    A, G = to_map(a.detach()), to_map(g)
    ref = (G.mean((2, 3), keepdim=True) * A).sum(1).relu()
    assert sm.maps.shape == (2, 6, 8) and nontrivial(sm.maps)
    torch.testing.assert_close(sm.maps, ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"'embed'.*`reshape` turns it into"):
        saliency_maps(model, xb, layers='embed', reshape=lambda t: t.flatten(1))
    with pytest.raises(ValueError, match='cannot be undone'):
        saliency_maps(model, xb, 'ablationcam', layers='embed', reshape=to_map)

class ToNHWC(nn.Module):
    def forward(self, x): return x.permute(0, 2, 3, 1)

def test_nhwc_detected_without_model_hints():
    "A channels-last output is read as (N, h, w, C) from its shape alone; the same map as the NCHW layer before it."
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.ReLU())
    model = nn.Sequential(body, ToNHWC(), Mean12(), nn.Linear(16, 3))
    xb = torch.rand(2, 3, 32, 32)
    assert find_target_layer(model, xb) is model[1]
    assert _layout_or_reason(model[1](body(xb)), None, (32, 32))[0] == MapLayout('nhwc')
    a, b = saliency_maps(model, xb, 'gradcam'), saliency_maps(model, xb, 'gradcam', layers='0')
    assert a.maps.shape == (2, 8, 8) and nontrivial(a.maps)
    torch.testing.assert_close(a.maps, b.maps)

class Mean12(nn.Module):
    def forward(self, x): return x.mean((1, 2))

# ---------------------------------------------------------------------------- hygiene after failures, per family
FAIL_FAMILIES = {**{k: v[0] for k, v in FAMILIES.items()}, 'convnext': lambda: _perturb_head(
    timm.create_model('convnext_atto', pretrained=False, num_classes=3)).eval()}

@pytest.mark.parametrize('family', list(FAIL_FAMILIES))
def test_state_restored_after_failures(family, x):
    model = FAIL_FAMILIES[family]()
    model.train()
    for p in list(model.parameters())[::3]: p.requires_grad_(False)
    before, hooks = _state(model), n_hooks(model)
    with pytest.raises(ValueError, match=r'\[0, 3\)'): saliency_maps(model, x, target=3)
    assert _state(model) == before and n_hooks(model) == hooks
    with pytest.raises(ValueError, match=r'\[0, 3\)'): saliency_maps(model, x, 'ablationcam', target=3)
    assert _state(model) == before and n_hooks(model) == hooks
    head_name = 'head' if family != 'convnext' else 'head.fc'
    head = model.get_submodule(head_name)
    parent, attr = (model, 'head') if family != 'convnext' else (model.head, 'fc')
    setattr(parent, attr, nn.Sequential(head, Boom()))
    before = _state(model)
    try:
        for method in ['gradcam', 'eigencam', 'scorecam']:
            with pytest.raises(RuntimeError, match='boom'): saliency_maps(model, x, method)
            assert _state(model) == before and n_hooks(model) == hooks
    finally: setattr(parent, attr, head)

# ------------------------------------------------------------------------------------- gradient-free methods
@pytest.fixture(scope='module')
def cnn_learner(tmp_path_factory):
    learn = shapes_learner(partial(small_cnn, widths=(8, 16), strides=(4, 4)), tmp_path_factory.mktemp('tf')/'shapes', bs=4, seed=1,
                           n_train=4, n_valid=4, classes=3, size=64, metrics=[])   # a 4x4 ReLU'd map
    _perturb_head(learn.model)
    return learn

def test_gradient_free_match_pytorch_grad_cam(cnn_learner):
    "Score- and Ablation-CAM to 1e-4 on a ReLU'd body; Eigen-CAM to pytorch-grad-cam's projection, sign-corrected."
    pgc = pytest.importorskip('pytorch_grad_cam')
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction, get_2d_projection
    model = cnn_learner.model.eval()
    xb = torch.Tensor(cnn_learner.dls.valid.one_batch()[0]).clone()
    for method, cls in [('scorecam', 'ScoreCAM'), ('ablationcam', 'AblationCAM')]:
        sm = saliency_maps(model, xb, method)
        assert nontrivial(sm.maps), method
        theirs = _pgc(cls, model, model[0], xb, sm.target, None)
        torch.testing.assert_close(_as_pgc(sm.maps, xb.shape[-2:]), theirs, atol=1e-4, rtol=0, msg=method)
    ev = saliency_maps(model, xb, 'eigencam')
    with torch.no_grad(): A = model[0](xb).numpy()
    ref = torch.from_numpy(get_2d_projection_with_sign_correction(A)).clamp(min=0)
    torch.testing.assert_close(_minmax(ev.maps, 1e-7), _minmax(ref, 1e-7), atol=1e-4, rtol=0)
    theirs = _pgc('EigenCAM', model, model[0], xb, ev.target, None)
    raw = get_2d_projection(A).reshape(len(A), -1)
    same = np.abs(raw.min(1)) <= np.abs(raw.max(1))        # where pytorch-grad-cam's SVD sign is already ours
    assert same.any()
    torch.testing.assert_close(_as_pgc(ev.maps, xb.shape[-2:])[same], theirs[same], atol=1e-4, rtol=0)

def test_gradient_free_no_backward_and_batched(cnn_learner):
    model = cnn_learner.model
    xb = torch.Tensor(cnn_learner.dls.valid.one_batch()[0]).clone()
    for p in model.parameters(): p.grad = None
    calls = []
    h = model.register_forward_hook(lambda m, i, o: calls.append((len(i[0]), o.requires_grad)))
    try:
        ev = saliency_maps(model, xb, 'eigencam', k=2)
        assert calls == [(4, False)]                      # one forward, no graph
        calls.clear()
        a = saliency_maps(model, xb, 'scorecam', batch_size=100)
        assert calls == [(4, False), (64, False)]         # 4 images x 16 channels in one forward
        calls.clear()
        b = saliency_maps(model, xb, 'scorecam', batch_size=7)
        assert [n for n, _ in calls] == [4] + [7]*9 + [1] # at most 7 masked images a forward
    finally: h.remove()
    torch.testing.assert_close(a.maps, b.maps, atol=1e-6, rtol=1e-5)
    assert torch.equal(ev.maps[ev.rank == 0], ev.maps[ev.rank == 1])      # class-agnostic
    assert all(p.grad is None for p in model.parameters()) and n_hooks(model) == 0
    assert METHODS['scorecam'].needs == 'scores' and METHODS['eigencam'].needs == 'acts' and METHODS['gradcam'].needs == 'grads'
    with pytest.raises(ValueError, match="`needs` must be"): Method('x', needs='labels')

# -------------------------------------------------------------------------------------- a ViT Learner, end to end
@pytest.fixture(scope='module')
def vit_learner(tmp_path_factory):
    root = make_shapes(tmp_path_factory.mktemp('vitl')/'shapes', n_train=12, n_valid=6, classes=3, size=SIZE, seed=0,
                       obj_frac=(0.3, 0.5), background='plain')
    set_seed(0)
    dls = ImageDataLoaders.from_folder(root, valid='valid', item_tfms=Resize(SIZE), bs=8, num_workers=0)
    learn = Learner(dls, vit(), loss_func=CrossEntropyLossFlat(), metrics=accuracy)   # as users build transformers
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    return learn

def test_vit_learner_attention_crop_end_to_end(vit_learner, tmp_path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import fastai_attncrop.boxpass as BP, fastai_attncrop.learner  # noqa: F401 (adds attention_crop, show_attention)
    learn = vit_learner
    sm = saliency_maps(learn, learn.dls.valid.one_batch()[0], 'gradcam')
    assert sm.maps.shape[1:] == (4, 4)
    bx = BP.box_pass(learn, cache=False, progress=False)
    assert len(bx) == 54 and bx.error.isna().all() and not bx.zero.all()
    assert ((bx.x1_95 - bx.x0_95) < bx.width).any()          # the boxes do crop something
    res = learn.attention_crop(epochs=1, lr=1e-4, margins=(0.95, 0.8), fresh=True, cache=False, progress=False)
    assert sum(o.crop for o in res.dls.train_ds.items) == 36 and set(res.metrics_after) == {'valid_loss', 'accuracy'}
    learn.show_attention(n=2); plt.close('all')
    dm = saliency_maps(learn, learn.dls.valid.one_batch()[0], DDT().fit(learn))
    assert dm.maps.shape[1:] == (4, 4)
    sg = saliency_maps(learn, learn.dls.valid.one_batch()[0][:2], SmoothGrad('gradcam', n=2))
    assert sg.maps.shape == (2, 4, 4)
    assert n_hooks(learn.model) == 0

def test_vision_learner_vit_and_convnext(tmp_path):
    "fastai's `vision_learner` wraps timm ViTs (class-token pooled inside the body) and ConvNeXts: both map."
    path = make_shapes(tmp_path/'shapes', n_train=2, n_valid=2, classes=3, size=64, seed=1)
    dls = ImageDataLoaders.from_folder(path, valid='valid', item_tfms=Resize(224), bs=2, num_workers=0)
    xb = torch.Tensor(dls.valid.one_batch()[0]).clone()
    torch.manual_seed(0)
    learn = vision_learner(dls, 'vit_tiny_patch16_224', pretrained=False)   # fastai passes no img_size: 224 px
    assert find_target_layer(learn.model, xb) is learn.model[0].model.blocks[-1].norm1
    sm = saliency_maps(learn, xb, 'gradcam')
    assert sm.maps.shape[1:] == (14, 14) and not sm.zero.any()
    learn = vision_learner(dls, 'convnext_atto', pretrained=False)
    assert find_target_layer(learn.model, xb) is learn.model[0]
    assert saliency_maps(learn, xb, 'gradcam').maps.shape[1:] == (7, 7)
