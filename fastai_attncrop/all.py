"""One import for notebooks, as fastai's `from fastai.vision.all import *`: every public name of the package's
modules, and the `Learner` methods they patch (`attention_crop`, `show_attention`, `show_projection`).

Not generated: this file is written by hand (nbdev exports the modules it imports). The distributed module, which
needs Accelerate, and the demo are imported by name. Imported after `fastai.vision.all`, the package's `load_image`
and `image_size` (EXIF orientation applied, `UnreadableImageError` naming the file) stand in for fastai's."""
from .data import *
from .layers import *
from .methods import *
from .engine import *
from .saliency import *
from .boxes import *
from .metrics import *
from .models import *
from .boxtable import *
from .crop import *
from .boxpass import *
from .learner import *
from .spg import *
from .export import *
