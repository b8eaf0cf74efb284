"""The saliency API after its split into `layers`, `methods`, `engine` and `saliency`: every name that
`fastai_attncrop.saliency` promised before the split still comes from it, the registry alone says how a method
makes its map, there is one lookup, and the method lists written by hand (README, the module's docstring) are the
registry's."""
import importlib, re
from pathlib import Path
import pytest, torch
from fastai_attncrop import saliency as S
from fastai_attncrop.methods import (METHODS, MAKERS, Method, MapMaker, get_method, method_for, methods_table, channel_sum,
                                     channel_max, register_method)
from fastai_attncrop.engine import combine_maps

ROOT = Path(__file__).resolve().parents[1]

# `fastai_attncrop.saliency.__all__` before the split (main at b12af80): the promised API, typed here on purpose.
PROMISED = ['NEEDS', 'METHODS', 'MAKERS', 'frozen_eval', 'ActivationCut', 'MapLayout', 'is_fastai_vision', 'find_target_layer',
            'resolve_layers', 'select_targets', 'Method', 'register_method', 'register_maker', 'gradcam_weights',
            'gradcampp_weights', 'xgradcam_weights', 'hirescam_weights', 'layercam_weights', 'gradient_weights',
            'guided_backprop_weights', 'eigencam_weights', 'scorecam_weights', 'ablationcam_weights', 'cam_head_weights',
            'cam_weights', 'GuidedReLU', 'guided_relus', 'normalize_maps', 'upsample_maps', 'SaliencyMaps',
            'combine_maps', 'get_method', 'MapMaker', 'model_input', 'replaced_output', 'Rescore', 'model_fingerprint',
            'method_for', 'saliency_maps', 'SmoothGrad', 'DDT', 'fit_ddt', 'maps_by_item', 'show_saliency',
            'dilate_last_stage', 'dilated_last_stage']

@pytest.mark.parametrize('name', PROMISED)
def test_promised_name_imports_from_saliency(name):
    ns = {}
    exec(f"from fastai_attncrop.saliency import {name}", ns)
    assert ns[name] is not None and name in S.__all__

def test_star_import_gives_the_promised_api():
    ns = {}
    exec("from fastai_attncrop.saliency import *", ns)
    assert set(PROMISED) <= set(ns), sorted(set(PROMISED) - set(ns))
    assert len(S.__all__) == len(set(S.__all__))          # no name twice

def test_all_imports_every_module_of_the_split():
    ns = {}
    exec("from fastai_attncrop.all import *", ns)
    for mod in ('layers', 'methods', 'engine', 'saliency'):
        m = importlib.import_module(f'fastai_attncrop.{mod}')
        assert set(m.__all__) <= set(ns), (mod, sorted(set(m.__all__) - set(ns)))

def test_one_registry_whatever_the_module():
    assert S.METHODS is METHODS and S.MAKERS is MAKERS and S.get_method is get_method

def test_no_weight_function_hands_on_its_input():
    "Every registered method does its own work: its weights are not the gradients it was handed (issue 33 item 3)."
    acts, grads = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for name, m in METHODS.items():
        if m.needs != 'grads' or name == 'hirescam': continue      # HiResCAM's weights are the gradients, by definition
        w = m.weigh(acts, grads)
        assert not (isinstance(w, torch.Tensor) and w.shape == grads.shape and torch.equal(w, grads)), name

def test_the_entry_says_how_the_map_is_made():
    "`combine_maps` is the entry's `combine` of its `weigh`: a method registered with its own combine step gets it."
    calls = []
    def combine(w, a): calls.append(w.shape); return w.sum(1)
    try:
        register_method('_sum_grads', combine=combine)(lambda acts, grads: grads)
        m = combine_maps(METHODS['_sum_grads'], torch.ones(1, 2, 3, 3), torch.full((1, 2, 3, 3), 2.))
        assert calls == [(1, 2, 3, 3)] and torch.equal(m, torch.full((1, 3, 3), 4.))
    finally: del METHODS['_sum_grads']
    assert [METHODS[n].combine for n in ('gradcam', 'eigencam', 'cam', 'gradient', 'guided_backprop')] == [channel_sum]*3 + [channel_max]*2
    assert Method('x', on_input=True).combine is channel_max and Method('y').combine is channel_sum   # the defaults, by `on_input`

def test_one_lookup():
    assert method_for('gradcam') is get_method('gradcam') is METHODS['gradcam']
    maker = S.SmoothGrad('gradcam', n=1)
    assert get_method(maker) is maker and isinstance(maker, MapMaker)
    with pytest.raises(ValueError, match="fitted on training data"): get_method('ddt')
    with pytest.raises(ValueError, match="has none"): get_method('ddt', torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown `method`.*SmoothGrad"): S.SmoothGrad(maker)

def test_methods_table_is_the_registry():
    tbl = methods_table()
    assert list(tbl.name) == list(METHODS) + list(MAKERS)
    assert set(tbl.kind) == {'layer', 'input', 'fitted'} and tbl.cost.str.len().min() > 0
    assert dict(zip(tbl.name, tbl.title))['gradcampp'] == 'Grad-CAM++'

def _listed(text):
    "The method names of a list written as 'A, B, C and D'."
    return {s.strip().lower() for s in re.split(r',\s*|\s+and\s+', text) if s.strip()}

def _registry_titles():
    return {t.lower() for t in methods_table().title} | {'smoothgrad'}     # SmoothGrad wraps a method: not an entry

def test_readme_lists_the_registry():
    row = next(l for l in (ROOT/'README.md').read_text().splitlines() if l.startswith('| `saliency` |'))
    listed = re.match(r'\| `saliency` \| (.+?), for fastai Learners', row).group(1)
    assert _listed(listed) == _registry_titles()

def test_module_docstring_lists_the_registry():
    listed = re.match(r'(.+?) for any fastai vision Learner', ' '.join(S.__doc__.split())).group(1)
    assert _listed(listed) == _registry_titles()
