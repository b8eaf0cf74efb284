"Maps shared by the tries scripts (bench/tries/ is neither packaged nor rendered)."
import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastai_attncrop.saliency import saliency_maps
from fastai_attncrop.boxpass import native_batches

def photo_maps(s, bs=32):
    "Grad-CAM maps of the true class at each scene's own size (448 px) of a bench/small_objects.py set, in `s.items` order."
    paths, labels, vocab = s.items.item.tolist(), s.items.label.tolist(), list(s.learn.dls.vocab)
    maps = [None]*len(paths)
    for pos, xb in native_batches(s.learn, paths, bs=bs, max_side=448):
        sm = saliency_maps(s.learn, xb, 'gradcam', target=[vocab.index(labels[p]) for p in pos])
        for r in range(len(sm)): maps[pos[int(sm.img_idx[r])]] = sm.maps[r].detach().cpu()
    return torch.stack(maps).double()
