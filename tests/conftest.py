"Settings shared by every test module."
import pytest, torch

@pytest.fixture(scope='session', autouse=True)
def one_thread():
    "The tests use tiny models and inputs: one intra-op thread is faster, and immune to OpenMP stalls when another process holds a core."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def shapes_settings(n_train, size=48, classes=3):
    "`make_shapes`'s settings of `fit_shapes`'s sets (a script run apart rebuilds the same learner with `models.shapes_learner`)."
    return dict(n_train=n_train, n_valid=8, classes=classes, size=size, obj_frac=(0.2, 0.4), background='plain')

@pytest.fixture(scope='session')
def fit_shapes():
    "A factory: `fit_shapes(tmp, n_train, bs, widths, epochs)` -> (root, learner) fitted on a small synthetic set (`models.shapes_learner`)."
    from functools import partial
    from fastai_attncrop.models import small_cnn, shapes_learner
    def make(tmp, n_train, bs, widths, epochs, size=48, classes=3):
        learn = shapes_learner(partial(small_cnn, widths=widths), tmp/'shapes', bs=bs, epochs=epochs, **shapes_settings(n_train, size, classes))
        return learn.dls.path, learn
    return make

def exif_shown_box(box, o, w, h):
    "Box (x0, y0, x1, y1) in the stored pixels (w x h) of a file of EXIF orientation `o`, in the pixels a viewer shows (the tests' own reference, written apart from `data.turn_box`)."
    x0, y0, x1, y1 = box
    pt = {2: lambda x, y: (w-x, y), 3: lambda x, y: (w-x, h-y), 4: lambda x, y: (x, h-y), 5: lambda x, y: (y, x),
          6: lambda x, y: (h-y, x), 7: lambda x, y: (h-y, w-x), 8: lambda x, y: (y, w-x)}[o]
    (a, b), (c, d) = pt(x0, y0), pt(x1, y1)
    return [min(a, c), min(b, d), max(a, c), max(b, d)]
