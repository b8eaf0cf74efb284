"No public name of the package shadows a fastai name: `from fastai.vision.all import *` then `from fastai_attncrop.all import *` leaves fastai's names as they were."
import fastai.vision.all as fastai_all
import fastai_attncrop.all as attncrop_all

def test_star_imports_do_not_shadow_fastai():
    ours = {k: getattr(attncrop_all, k) for k in dir(attncrop_all) if not k.startswith('_')}
    clash = sorted(k for k, v in ours.items() if hasattr(fastai_all, k) and getattr(fastai_all, k) is not v
                   and not isinstance(v, type(fastai_all)))   # a module name (e.g. `torch`) is the same module
    assert clash == [], f"these names of fastai_attncrop.all shadow fastai's under star imports: {clash}"
