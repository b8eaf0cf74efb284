"""The grouped options of the box pass (`Targets`, `Framing`, `BoxOptions`): checked where they are made, naming the
argument; one value and the equivalent keywords give the same table and the same cache key as before the grouping."""
import warnings
import numpy as np, pandas as pd, pytest
from fastai.vision.all import Resize
from fastai_attncrop.engine import Targets, select_targets
from fastai_attncrop.boxpass import BoxOptions, Framing, BoxPlan, box_pass, box_chunk, learner_items, frame_tfms
import fastai_attncrop, fastai_attncrop.boxpass as BP
import torch

warnings.filterwarnings('ignore')

@pytest.fixture(scope='module')
def setup(tmp_path_factory, fit_shapes):
    tmp = tmp_path_factory.mktemp('options')
    root, learn = fit_shapes(tmp, n_train=12, bs=8, widths=(8, 16, 16, 16), epochs=1, size=32)
    return tmp, learn

@pytest.mark.parametrize('kw, name', [(dict(thresh=1.5), 'thresh'), (dict(k=0), 'k'), (dict(max_k=True), 'max_k')])
def test_targets_errors_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=f'`{name}`'): Targets(**kw)
    with pytest.raises(ValueError, match=f'`{name}`'): BoxOptions(**kw)

def test_thresh_is_checked_in_one_place():
    "`select_targets` (and so `saliency_maps`) and `Targets` give the same error."
    with pytest.raises(ValueError) as a: select_targets(torch.zeros(1, 3), multi_label=True, thresh=2)
    with pytest.raises(ValueError) as b: Targets(thresh=2)
    assert str(a.value) == str(b.value)

@pytest.mark.parametrize('kw, msg', [(dict(native='yes'), '`native`'), (dict(native=True, frame=Resize(8)), 'pass one of them'),
                                     (dict(native=False, max_side=64), 'for `native=True`'), (dict(frame=Resize(8), stride=8), 'for `native=True`'),
                                     (dict(native=True, max_side=4, stride=8), '`max_side`'), (dict(stride=0), '`stride`')])
def test_framing_exclusions_checked_when_made(kw, msg):
    with pytest.raises(ValueError, match=msg): Framing(**kw)
    with pytest.raises(ValueError, match=msg): BoxOptions(**kw)

@pytest.mark.parametrize('kw, name', [(dict(margins=()), 'margins'), (dict(on_error='skip'), 'on_error'), (dict(area_tau=1), 'area_tau'),
                                      (dict(bs=0), 'bs'), (dict(chunk_batches=1.5), 'chunk_batches'), (dict(auc_steps=-1), 'auc_steps'),
                                      (dict(floor=1), 'floor'), (dict(upsample=0), 'upsample'), (dict(zoom=True), 'zoom'),
                                      (dict(zoom_pad=-1), 'zoom_pad'), (dict(dilate=1), 'dilate')])
def test_box_options_errors_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=f'`{name}`'): BoxOptions(**kw)

def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="'margin'"): BoxOptions.of(margin=0.9)
    o, rest = BoxOptions.split(k=2, wd=0.1)
    assert (o.k, rest) == (2, {'wd': 0.1})

def test_frame_implies_batched_input():
    assert Framing(frame=Resize(8)).native is False and BoxOptions(frame=Resize(8)).framing.native is False

def test_one_value_and_keywords_give_the_same_table_and_key(setup, tmp_path):
    tmp, learn = setup
    kw = dict(margins=(0.95, 0.6), k=2, floor=0, native=False, upsample=1, trust=True)
    a = box_pass(learn, cache=tmp_path/'a', progress=False, **kw)
    b = box_pass(learn, cache=tmp_path/'b', progress=False, opts=BoxOptions(**kw))
    c = box_pass(learn, cache=tmp_path/'c', progress=False, opts=BoxOptions(k=2, floor=0.5), margins=(0.95, 0.6), floor=0,
                 native=False, upsample=1, trust=True)   # keywords replace the value's options
    pd.testing.assert_frame_equal(a, b); pd.testing.assert_frame_equal(a, c)
    names = [sorted(p.name for p in (tmp_path/d).glob('*.pkl')) for d in 'abc']
    assert names[0] == names[1] == names[2] and len(names[0]) == 1
    rows = box_chunk(learn, learner_items(learn), BoxOptions(**kw))
    pd.testing.assert_frame_equal(rows, a)

def _old_params(learn, meth, margins, target=None, area_tau=0.5, bs=8, cs=64, k=1, multi_label=False, thresh=0.75, max_k=20,
                trust=False, auc_steps=0, native=None, max_side=None, stride=None, floor=0.8, zoom=0, zoom_pad=0.5,
                dilate=False, upsample=2, frame=None):
    "The cache key's parameters as `BoxPlan.make` wrote them before the options were grouped (issue 33): the reference."
    tfms = frame_tfms(learn, frame)
    return dict(method=repr(meth), margins=margins, target=target, area_tau=area_tau, bs=bs, chunk=cs, tfms=repr(tfms), k=k,
                multi_label=multi_label, thresh=thresh, max_k=max_k, trust=bool(trust), auc_steps=auc_steps,
                after_batch=repr(learn.dls.valid.after_batch), version=fastai_attncrop.__version__,
                **({'native': (max_side, stride)} if native else {}), **({'auto': (max_side, stride)} if native is None else {}),
                **{n: v for n, v in (('floor', floor), ('zoom', zoom), ('dilate', dilate)) if v},
                **({'zoom_pad': zoom_pad} if zoom else {}), **({'upsample': upsample} if upsample != 1 else {}))

@pytest.mark.parametrize('kw, old', [
    (dict(), dict(native=None, max_side=64, stride=8)),
    (dict(floor=0, native=False, upsample=1), dict(floor=0, native=False, upsample=1)),
    (dict(native=True, max_side=64), dict(native=True, max_side=64, stride=8)),
    (dict(frame=Resize(24, method='pad')), dict(native=False, frame=Resize(24, method='pad'))),
    (dict(target='label', k=1, trust=1, auc_steps=2), dict(target='label', trust=True, auc_steps=2, native=None, max_side=64, stride=8)),
    (dict(zoom=1, zoom_pad=0.3, dilate=True, native=False), dict(zoom=1, zoom_pad=0.3, dilate=True, native=False)),
])
def test_cache_key_params_unchanged(setup, kw, old):
    "The key of a pass is built from the same values as before the grouping, so a table cached before is still found."
    tmp, learn = setup
    plan = BoxPlan.make(learn, cache=False, margins=(0.95, 0.6), bs=8, **kw)
    tfms = frame_tfms(learn, plan.framing.frame)
    got = BP._pass_key_params(learn, plan.opts, plan.framing, tfms, 64)
    want = _old_params(learn, plan.opts.method, [0.95, 0.6], **old)
    assert repr(sorted(got.items())) == repr(sorted(want.items()))

def test_delegated_options_are_documented():
    "The entry points that take the options as keywords show each one's documentation (`BoxOptions`'s), as `show_doc` renders it."
    from fastcore.docments import docments
    from fastai.learner import Learner
    import fastai_attncrop.learner, fastai_attncrop.distributed
    from fastai_attncrop.distributed import distrib_box_pass
    want = docments(BoxOptions)
    for f in (box_pass, box_chunk, Learner.attention_crop, Learner.zoom_predict, Learner.show_attention, distrib_box_pass,
              Learner.distrib_attention_crop):
        d = docments(f)
        for name in ('thresh', 'floor', 'native'):
            if name in d: assert d[name] == want[name], (f.__qualname__, name)

# --- issue 29's last two levers as named options: `fuse` (the finer stage's map fused in) and `adapt` (a per-item ε)

@pytest.mark.parametrize('kw, name', [(dict(fuse=1), 'fuse'), (dict(adapt='x'), 'adapt'), (dict(adapt=float('nan')), 'adapt'),
                                      (dict(adapt=True), 'adapt')])
def test_lever_options_errors_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=f'`{name}`'): BoxOptions(**kw)

@pytest.mark.parametrize('kw, extra', [(dict(fuse=True), dict(fuse=True)), (dict(adapt=-1), dict(adapt=-1.0)),
                                       (dict(fuse=False, adapt=0), dict())])
def test_lever_options_in_cache_key(setup, kw, extra):
    "A pass with `fuse` or `adapt` set has them in its key; at their defaults the key is the old one (a cached table is found)."
    tmp, learn = setup
    plan = BoxPlan.make(learn, cache=False, margins=(0.95, 0.6), bs=8, native=False, **kw)
    got = BP._pass_key_params(learn, plan.opts, plan.framing, frame_tfms(learn), 64)
    want = {**_old_params(learn, plan.opts.method, [0.95, 0.6], native=False), **extra}
    assert repr(sorted(got.items())) == repr(sorted(want.items()))

def _manual_boxes(learn, items, layers_of, eps_of, margins=(0.95, 0.6)):
    "The boxes (n, M, 4) in the images' pixels cut the default way from `saliency_maps(layers=layers_of(model, xb))` at `eps_of(cut, eps)`: the tests' reference."
    from fastai_attncrop.boxpass import paths_dl
    from fastai_attncrop.saliency import saliency_maps
    from fastai_attncrop.boxes import cut_maps, mass_box, InputFrame
    from fastai_attncrop.boxtable import margin_eps
    from fastai_attncrop.data import shown_size
    xb = paths_dl(learn, items, len(items)).one_batch()[0]
    sm = saliency_maps(learn, xb, 'gradcam', layers=layers_of(learn.model, xb))
    H, W = sm.input_size
    cm = cut_maps(sm.maps, 0.8, 2)
    bx = torch.stack([mass_box(cm, eps_of(cm, margin_eps(m)), size=(W, H)) for m in margins], 1).double()
    tfms = frame_tfms(learn)
    return np.stack([InputFrame.from_tfms(tfms, shown_size(p)).to_image(b).numpy() for p, b in zip(items, bx)])

def _table_boxes(df, margins=(0.95, 0.6)):
    from fastai_attncrop.boxtable import margin_cols
    return np.stack([df[margin_cols(m)].to_numpy(float) for m in margins], 1)

def test_fuse_cuts_the_fused_map(setup):
    "`fuse=True`: the boxes are cut from the saliency layer's map fused with the finer stage's (`finer_stage`), as `saliency_maps(layers=[...])` fuses."
    from fastai_attncrop.saliency import find_target_layer, finer_stage
    tmp, learn = setup
    items = learner_items(learn).item.tolist()[:6]
    got = box_pass(learn, items, margins=(0.95, 0.6), fuse=True, native=False, cache=False, progress=False)
    base = box_pass(learn, items, margins=(0.95, 0.6), native=False, cache=False, progress=False)
    want = _manual_boxes(learn, items, lambda m, xb: [find_target_layer(m, xb), finer_stage(m, xb)], lambda cm, e: e)
    np.testing.assert_allclose(_table_boxes(got), want, atol=1e-6)
    assert not np.allclose(_table_boxes(base), want)   # the fused map is another map

def test_adapt_cuts_each_map_at_its_own_eps(setup):
    "`adapt=g`: each map is cut at `item_eps(cut, eps, g)`: concentrated maps tighter for g < 0."
    from fastai_attncrop.boxes import item_eps
    tmp, learn = setup
    items = learner_items(learn).item.tolist()[:6]
    got = box_pass(learn, items, margins=(0.95, 0.6), adapt=-1., native=False, cache=False, progress=False)
    want = _manual_boxes(learn, items, lambda m, xb: None, lambda cm, e: item_eps(cm, e, -1.))
    np.testing.assert_allclose(_table_boxes(got), want, atol=1e-6)
    same = _manual_boxes(learn, items, lambda m, xb: None, lambda cm, e: e)
    np.testing.assert_allclose(_table_boxes(box_pass(learn, items, margins=(0.95, 0.6), native=False, cache=False, progress=False)), same, atol=1e-6)

def test_classic_rule_is_one_argument_away(setup):
    "`BoxOptions.classic()`: the rule before issue 29 (the raw map on the learner's input), as one value; keywords still apply."
    tmp, learn = setup
    assert BoxOptions.classic() == BoxOptions(floor=0., native=False, upsample=1)
    assert BoxOptions.classic(margins=(0.9,), k=2) == BoxOptions(floor=0., native=False, upsample=1, margins=(0.9,), k=2)
    a = box_pass(learn, opts=BoxOptions.classic(), margins=(0.95,), cache=False, progress=False)
    b = box_pass(learn, margins=(0.95,), floor=0, native=False, upsample=1, cache=False, progress=False)
    pd.testing.assert_frame_equal(a, b)
