"""Turn a trained fastai image classifier into a weakly-supervised object localizer: saliency maps, boxes, crops, re-fit

Modules:

- `fastai_attncrop.saliency`: Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, CAM, vanilla gradients, guided backprop and SmoothGrad for any fastai vision Learner or plain `nn.Module`, batched, at about the cost of inference."""

__version__ = "0.0.1"
