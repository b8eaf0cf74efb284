"""Tests of fastai_attncrop.spg on a tiny synthetic set (CPU, seconds): the tri-state mask, the masked loss, training
with SPGCallback (recorder columns, losses that reach the body, frozen/fine_tune/fp16), export without auxiliary heads."""
import math, warnings
from functools import partial
import pytest, torch, torch.nn.functional as F
from fastai.vision.all import load_learner
from fastai_attncrop.models import small_cnn, shapes_learner
from fastai_attncrop.saliency import saliency_maps
from fastai_attncrop.spg import (SPGCallback, SPGHeads, tri_state_mask, masked_bce, spg_losses, head_attention,
                                 FG, BG, IGNORE)

warnings.filterwarnings('ignore')
ARCH = partial(small_cnn, widths=(16, 32, 64, 128))

SHAPES = dict(n_train=40, n_valid=8, classes=3, size=40, obj_frac=(0.15, 0.35), background='plain')

def learner_at(path, **kwargs):
    "A fresh `ARCH` learner on fresh DataLoaders of the set at `path` (`shapes_learner`: images, shuffling and weights seeded)."
    return shapes_learner(ARCH, path, bs=16, **SHAPES, **kwargs)

@pytest.fixture(scope='module')
def root(tmp_path_factory): return learner_at(tmp_path_factory.mktemp('spg')/'shapes').dls.path

@pytest.fixture
def dls(root): return learner_at(root).dls

def new_learner(dls, **kwargs):
    "A fresh learner on fresh DataLoaders of `dls`'s set."
    return learner_at(dls.path, **kwargs)

def fit(learn, epochs, cb=None, lr=3e-3):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr, cbs=[cb] if cb else [])

def n_hooks(model): return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

def test_tri_state_mask_three_values_and_thresholds():
    maps = torch.tensor([[0., 0.05, 0.0999, 0.1, 0.4, 0.7, 0.7001, 1.]])
    m = tri_state_mask(maps, 0.7, 0.1)
    assert sorted(m.unique().tolist()) == [IGNORE, BG, FG]
    assert m.tolist() == [[BG, BG, BG, IGNORE, IGNORE, IGNORE, FG, FG]]   # strictly above delta_h, strictly below delta_l
    rnd = torch.rand(4, 9, 9)
    m = tri_state_mask(rnd, 0.5, 0.05)
    assert ((m == FG) == (rnd > 0.5)).all() and ((m == BG) == (rnd < 0.05)).all()
    assert set(m.unique().tolist()) <= {FG, BG, IGNORE}
    with pytest.raises(ValueError, match='delta_l <= delta_h'): tri_state_mask(rnd, 0.1, 0.5)

def test_ignored_pixels_contribute_nothing():
    mask = tri_state_mask(torch.rand(2, 6, 6), 0.7, 0.1)
    logits = torch.randn(2, 6, 6, requires_grad=True)
    masked_bce(logits, mask).backward()
    ign = mask == IGNORE
    assert ign.any() and (~ign).any()
    assert (logits.grad[ign] == 0).all() and (logits.grad[~ign] != 0).all()
    # changing the logits of ignored pixels leaves the loss as it is; changing any other one does not
    moved = logits.detach().clone(); moved[ign] += 5
    assert torch.equal(masked_bce(moved, mask), masked_bce(logits.detach(), mask))
    moved[~ign] += 5
    assert not torch.equal(masked_bce(moved, mask), masked_bce(logits.detach(), mask))
    ref = F.binary_cross_entropy_with_logits(logits.detach()[~ign], mask[~ign])
    assert torch.allclose(masked_bce(logits.detach(), mask), ref)

def test_spg_losses_masks():
    att = torch.zeros(2, 3, 3); att[0, 1, 1] = 2.; att[0, 0, 0] = 1.     # image 1 has no positive attention
    heads = [torch.randn(2, 1, 6, 6, requires_grad=True) for _ in range(3)]
    losses, masks = spg_losses(att, *heads)
    assert (masks['deep'][1] == IGNORE).all()                          # no guidance from an all-zero map
    assert (masks['deep'][0] == FG).any() and (masks['deep'][0] == BG).any()
    sum(losses.values()).backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads)

def test_trains_an_epoch_and_records(dls):
    learn = new_learner(dls)
    cb = SPGCallback()
    fit(learn, 1, cb)
    assert learn.recorder.metric_names[-4:] == ['spg_shallow', 'spg_deep', 'spg_final', 'time']
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][-3:])
    # after the fit: the model is untouched, the heads left the optimizer, the columns left the metrics, no hooks
    assert [m.name for m in learn.metrics] == ['accuracy']
    assert n_hooks(learn.model) == 0
    head_ids = {id(p) for p in cb.heads.parameters()}
    assert not any(id(p) in head_ids for pl in learn.opt.param_lists for p in pl)
    assert not any(isinstance(m, SPGHeads) for m in learn.model.modules())
    assert len(learn.validate()) == 2

def test_aux_losses_decrease(dls):
    "With the classifier fixed (so is its attention), all three auxiliary losses in the recorder go down."
    learn = new_learner(dls)
    fit(learn, 4)
    learn.freeze_to(2)        # every group of the model frozen: only the auxiliary heads (and body batch norms) train
    fit(learn, 8, SPGCallback(), lr=1e-2)
    vals = torch.tensor([r[-3:] for r in learn.recorder.values])        # (epochs, 3)
    assert torch.isfinite(vals).all()
    assert (vals[-1] < vals[0]).all(), vals

def test_guidance_reaches_the_body_and_nothing_else_changes(dls):
    "With zero weights a fit is bit-identical to a plain one (same data order, same draws); with SPG it is not."
    def run(cb):   # each fit right after its set_seed: the head's dropout draws from the global generator
        learn = new_learner(dls); fit(learn, 1, cb); return learn
    plain, zero, spg = run(None), run(SPGCallback(weights=(0., 0., 0.))), run(SPGCallback())
    p0, pz, ps = (l.model[0][0][0].weight for l in (plain, zero, spg))
    assert torch.equal(p0, pz)
    assert not torch.allclose(p0, ps)

def test_export_has_no_aux_heads_and_same_predictions(dls, tmp_path):
    learn = new_learner(dls)
    keys = list(learn.model.state_dict())
    cb = SPGCallback()
    learn.add_cb(cb)                                                   # kept in learn.cbs: it is exported too
    fit(learn, 2)
    learn.export(tmp_path/'spg.pkl')
    loaded = load_learner(tmp_path/'spg.pkl')
    assert list(loaded.model.state_dict()) == keys
    assert not any(isinstance(m, SPGHeads) for m in loaded.model.modules())
    assert loaded.spg.heads is None and n_hooks(loaded.model) == 0
    items = dls.valid_ds.items
    p1 = learn.get_preds(dl=dls.test_dl(items))[0]
    p2 = loaded.get_preds(dl=loaded.dls.test_dl(items))[0]
    assert torch.allclose(p1, p2, atol=1e-6)
    xb = dls.test_dl(items).one_batch()[0]
    assert torch.allclose(saliency_maps(learn, xb).maps, saliency_maps(loaded, xb).maps, atol=1e-5)

def test_frozen_fine_tune_fp16_and_cam(dls):
    learn = new_learner(dls)
    cb = SPGCallback()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, 1e-3, freeze_epochs=1, cbs=cb)
    assert cb.heads is not None and math.isfinite(learn.recorder.values[-1][-1])
    # to_fp16: on a CPU-only machine fastai's MixedPrecision disables autocast and its scaler with a warning
    learn16 = new_learner(dls).to_fp16()
    fit(learn16, 1, SPGCallback())
    assert math.isfinite(learn16.recorder.values[-1][-1])
    # CAM straight from the head's weights needs a GAP -> Linear head
    cam = new_learner(dls, concat_pool=False, lin_ftrs=[])
    fit(cam, 1, SPGCallback(attention='cam'))
    assert math.isfinite(cam.recorder.values[-1][-1])

def test_head_attention_matches_saliency_maps(dls):
    learn = new_learner(dls)
    xb, yb = dls.valid.one_batch()
    with torch.no_grad(): feats = learn.model.eval()[0](xb)
    att = head_attention(learn.model[1], feats, yb)
    assert torch.allclose(att, saliency_maps(learn, xb, 'gradcam', target=yb.tolist()).maps, atol=1e-5)

def test_rejects_bad_settings(dls):
    with pytest.raises(ValueError, match='weights'): SPGCallback(weights=(1, 1))
    with pytest.raises(ValueError, match='`deep_th` must be .* delta_l <= delta_h'): SPGCallback(deep_th=(0.1, 0.7))
    with pytest.raises(ValueError, match='`fused_th` must be a pair'): SPGCallback(fused_th=(0.7, 0.1, 0.))
    with pytest.raises(ValueError, match='`attention`: unknown'): SPGCallback(attention='nope')
    with pytest.raises(ValueError, match='layer method'): SPGCallback(attention='gradient')
    with pytest.raises(ValueError, match='layer method with gradients'): SPGCallback(attention='scorecam')   # gradient-free
    learn = new_learner(dls)
    with pytest.raises(ValueError, match=r'layers'): fit(learn, 1, SPGCallback(layers=(1,)))

def test_fits_after_export(dls, tmp_path):
    "`learn.export` reloads the optimizer's state as a plain dict: a new callback's heads still join it and train."
    learn = new_learner(dls)
    fit(learn, 1)
    learn.export(tmp_path/'plain.pkl')
    cb = SPGCallback()
    fit(learn, 1, cb)
    assert math.isfinite(learn.recorder.values[-1][-1]) and cb.heads is not None

def test_validation_inside_a_fit_leaves_the_fit_alone(dls):
    "`learn.validate` sends before_fit / after_fit too; run by a callback mid-fit, it must not end the callback's fit."
    from fastai.callback.core import Callback
    class ValidateMidFit(Callback):
        order, done = 60, False
        def after_epoch(self):                 # validate's own end sends after_epoch too: once is enough
            if self.epoch or self.done: return
            self.done = True
            self.valid = self.learn.validate()
            ids = {id(p) for p in self.learn.spg.heads.parameters()}
            self.heads_in_opt = any(id(p) in ids for pl in self.learn.opt.param_lists for p in pl)
            self.columns = [m.name for m in self.learn.metrics]
    learn, cb, mid = new_learner(dls), SPGCallback(), ValidateMidFit()
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3, cbs=[cb, mid])
    assert mid.heads_in_opt and mid.columns == ['accuracy', 'spg_shallow', 'spg_deep', 'spg_final']
    assert math.isfinite(cb.epoch_loss('deep'))                        # the second epoch still trained the heads
    assert [m.name for m in learn.metrics] == ['accuracy'] and n_hooks(learn.model) == 0
    head_ids = {id(p) for p in cb.heads.parameters()}
    assert not any(id(p) in head_ids for pl in learn.opt.param_lists for p in pl)
