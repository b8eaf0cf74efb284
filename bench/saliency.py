"""Saliency benchmark (issue 3): images/s and peak memory of our Grad-CAM / Grad-CAM++ against plain inference,
pytorch-grad-cam, TorchCAM, Captum and the fastbook hook recipe, on CPU, fastai resnet18/resnet34 learners
(`pretrained=False`) at 224 px, batch sizes 1, 16, 64.

    PYTHONPATH=. python bench/saliency.py [--out bench/results] [--threads N] [--others-format contiguous]
    PYTHONPATH=. python bench/saliency.py --transformers     # only the timm rows (issue 22): results/saliency_transformers.*
    PYTHONPATH=. python bench/saliency.py --quick            # a smoke run: resnet18, batch 2 (bench/out/saliency.*)

`--transformers` runs only the rows of issue 22: timm `tf_efficientnet_lite0`, `convnext_atto` and
`vit_tiny_patch16_224` built as users build them for transformers (`timm.create_model(name, num_classes=4)`,
`pretrained=False`), 224 px, batch 64: inference, ours (Grad-CAM, Eigen-CAM) and pytorch-grad-cam's on the same
layer (ours' default: the last feature map for the CNNs, `blocks[-1].norm1` for the ViT, with the standard reshape
transform), interleaved as above (2 warm-up rounds, median of 5 timed: the first rounds of a fresh process run slow); then the costly gradient-free methods (Score-CAM, Ablation-CAM: one forward per
channel) at batch 1 on convnext_atto and the ViT, ours against pytorch-grad-cam's. No memory column for these rows.
Its results are their own file, results/saliency_transformers.json and .md.

Memory format, as issue 3 asks: the models are built as fastai builds them (contiguous) and the batches come as
a DataLoader gives them (contiguous). Ours runs with the engine's defaults, which hand the model a channels_last
input on the CPU; "inference" gets that same channels_last input, so that ratio compares like with like. The
reference libraries get the model and batch as their users would (`--others-format contiguous`, the default), or
a channels_last model and input (`--others-format channels_last`) to see what they would gain from it.

Speed: methods are interleaved within every round (order rotated each round) so drift hits all alike; one warm-up
round, then the median of a few timed rounds (fewer at batch 64 to fit 10 minutes on 2 cores). Every method makes
maps at the input size for the predicted class of every image: ours include `normalize_maps(sm.upsampled())`,
pytorch-grad-cam resizes and normalizes itself, TorchCAM, Captum and fastbook stop at the feature map.
Memory: after the speed rounds, one more call of each method with glibc told to return freed memory to the OS
(`mallopt`), the resident set sampled every ms by a thread; reported is the peak minus the RSS before the call.
Writes results/saliency.json and .md with the harness's stamp. The last line printed is one JSON object: the batch-64
resnet34 ratios (our images/s / theirs; `--quick`: of its one model and batch size)."""
import argparse, copy, ctypes, gc, datetime, json, os, platform, statistics, sys, tempfile, threading, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
import psutil, torch, torch.nn as nn
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H   # noqa: E402
from fastai.vision.all import resnet18, resnet34
from fastai_attncrop.saliency import saliency_maps, normalize_maps, find_target_layer
from fastai_attncrop.engine import _use_channels_last

REPS = {1: (1, 5), 16: (1, 3), 64: (1, 2)}   # (warm-up rounds, timed rounds) per batch size

# ------------------------------------------------------------------------------------------------------------ methods
def m_inference(model, x):
    "Plain inference, in the memory format our engine uses for this model (see `_use_channels_last`)."
    p = next(model.parameters())
    if _use_channels_last(None, p.device, p.dtype): x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(): return model(x)

def m_ours(method):
    def f(model, x):
        sm = saliency_maps(model, x, method)
        return normalize_maps(sm.upsampled())
    return f

def m_pytorch_grad_cam(model, x):
    from pytorch_grad_cam import GradCAM
    with GradCAM(model=model, target_layers=[model[0]]) as cam: return cam(input_tensor=x, targets=None)

def m_torchcam(model, x):
    from torchcam.methods import GradCAM
    with GradCAM(model, target_layer=model[0]) as ext:
        out = model(x)
        return ext(class_idx=out.argmax(1).tolist(), scores=out)[0]

def m_captum(model, x):
    from captum.attr import LayerGradCam
    with torch.no_grad(): pred = model(x).argmax(1)       # Captum needs the target classes up front
    return LayerGradCam(model, model[0]).attribute(x, target=pred, relu_attributions=True)

class _Hook:
    "fastbook chapter 18: forward hook storing the activations."
    def __init__(self, m): self.hook = m.register_forward_hook(self.hook_func)
    def hook_func(self, m, i, o): self.stored = o.detach().clone()
    def __enter__(self, *args): return self
    def __exit__(self, *args): self.hook.remove()

class _HookBwd:
    "fastbook chapter 18: backward hook storing the gradients (full backward hook: the book's one is deprecated)."
    def __init__(self, m): self.hook = m.register_full_backward_hook(self.hook_func)
    def hook_func(self, m, gi, go): self.stored = go[0].detach().clone()
    def __enter__(self, *args): return self
    def __exit__(self, *args): self.hook.remove()

def m_fastbook(model, x):
    with _HookBwd(model[0]) as hookg:
        with _Hook(model[0]) as hook:
            output = model(x)
            act = hook.stored
        model.zero_grad()
        output[torch.arange(len(x)), output.argmax(1)].sum().backward()
        grad = hookg.stored
    w = grad.mean(dim=[2, 3], keepdim=True)
    return (w * act).sum(1).relu()

METHODS = {'inference': m_inference, 'ours gradcam': m_ours('gradcam'), 'ours gradcampp': m_ours('gradcampp'),
           'pytorch-grad-cam': m_pytorch_grad_cam, 'torchcam': m_torchcam, 'captum': m_captum, 'fastbook': m_fastbook}
OURS = {'inference', 'ours gradcam', 'ours gradcampp'}   # run on the model and batch as fastai makes them

# ------------------------------------------------------------------------------------------------------------ helpers
def peak_rss_delta(fn):
    "Peak resident memory (MiB) above the level before `fn()`, sampled every millisecond."
    gc.collect(); _trim()
    proc, peak, stop = psutil.Process(), [0], threading.Event()
    base = proc.memory_info().rss
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.001)
    t = threading.Thread(target=sample, daemon=True); t.start()
    try: fn()
    finally: stop.set(); t.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return (peak[0] - base) / 2**20

def _trim():
    try: ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError: pass

def release_freed_memory():
    "Ask glibc to hand freed blocks back to the OS at once (mmap for big blocks, trim the heap), for RSS sampling."
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, 128*1024)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128*1024)   # M_TRIM_THRESHOLD
        _trim()
        return True
    except OSError: return False

def make_models():
    "Untrained (seed 0) fastai resnet18 and resnet34 learners' models for 4 classes at 224 px (`harness.shapes_learner`)."
    path = Path(tempfile.mkdtemp())/'shapes'
    return {name: H.shapes_learner(path, arch, input_size=224, bs=4, n_train=4, n_valid=4, classes=4, size=64).model.eval()
            for name, arch in [('resnet18', resnet18), ('resnet34', resnet34)]}

# ------------------------------------------------------------------------------------------- timm rows (issue 22)
TF_ARCHS = ['tf_efficientnet_lite0', 'convnext_atto', 'vit_tiny_patch16_224']
TF_SECTION = '## timm backbones and transformers (`--transformers`)'

def _pgc(cls, layer, reshape=None, **kw):
    "pytorch-grad-cam's `cls` on `layer`. Its context manager swallows exceptions (and then returns None): checked here."
    def f(model, x):
        import pytorch_grad_cam
        with getattr(pytorch_grad_cam, cls)(model=model, target_layers=[layer], reshape_transform=reshape, **kw) as cam:
            out = cam(input_tensor=x, targets=None)
        assert out is not None and out.shape == (len(x),) + tuple(x.shape[-2:]), f"pytorch-grad-cam {cls} failed"
        return out
    return f

def _vit_reshape(model):
    p, (h, w) = model.num_prefix_tokens, model.patch_embed.grid_size
    return lambda t: t[:, p:].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

def timed(fns, x, warm, timed_rounds):
    "Images/s of each of `fns` (name -> f(x)) on `x`, interleaved, order rotated every round; median of the timed rounds."
    times, names = {m: [] for m in fns}, list(fns)
    for r in range(warm + timed_rounds):
        for m in names[r % len(names):] + names[:r % len(names)]:
            s = time.perf_counter(); fns[m](x); dt = time.perf_counter() - s
            if r >= warm: times[m].append(dt)
    return {m: len(x) / statistics.median(times[m]) for m in names}

def transformer_rows(bs=64, rounds=5, costly=True, warm=2):
    "The issue-22 rows: {(arch, bs): {method: images/s}} and the target layer of each arch; `costly=False` skips Score/Ablation-CAM."
    import timm
    speed, layers = {}, {}
    for arch in TF_ARCHS:
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False, num_classes=4).eval()
        x = torch.randn(bs, 3, 224, 224)
        layer = find_target_layer(model, x)
        layers[arch] = next(n for n, m in model.named_modules() if m is layer)
        rs = _vit_reshape(model) if 'vit' in arch else None
        fns = {'inference': lambda x: m_inference(model, x), 'ours gradcam': lambda x: m_ours('gradcam')(model, x),
               'ours eigencam': lambda x: m_ours('eigencam')(model, x),
               'pytorch-grad-cam gradcam': lambda x: _pgc('GradCAM', layer, rs)(model, x),
               'pytorch-grad-cam eigencam': lambda x: _pgc('EigenCAM', layer, rs)(model, x)}
        speed[arch, bs] = timed(fns, x, warm, rounds)
        print(f"{arch} bs {bs} ({layers[arch]}): " + ', '.join(f"{m} {v:.1f}" for m, v in speed[arch, bs].items()), flush=True)
        if not costly or arch == 'tf_efficientnet_lite0': continue   # 1280 channels: a forward per channel is too long here
        x1 = x[:1]
        from pytorch_grad_cam.ablation_layer import AblationLayerVit
        abl = {'ablation_layer': AblationLayerVit()} if 'vit' in arch else {}   # its default ablation layer fails on tokens
        fns = {'inference': lambda x: m_inference(model, x),
               'ours scorecam': lambda x: m_ours('scorecam')(model, x), 'ours ablationcam': lambda x: m_ours('ablationcam')(model, x),
               'pytorch-grad-cam scorecam': lambda x: _pgc('ScoreCAM', layer, rs)(model, x),
               'pytorch-grad-cam ablationcam': lambda x: _pgc('AblationCAM', layer, rs, **abl)(model, x)}
        speed[arch, 1] = timed(fns, x1, 1, 1)
        print(f"{arch} bs 1: " + ', '.join(f"{m} {v:.2f}" for m, v in speed[arch, 1].items()), flush=True)
    return speed, layers

def transformer_report(speed, layers, total, load0, load1, costly=True):
    lines = ["# Saliency speed: timm backbones and transformers (`--transformers`)", "",
             f"`timm.create_model(name, num_classes=4, pretrained=False)` at 224 px, random input, ours with the engine's defaults, "
             f"pytorch-grad-cam on the same layer (the ViT with its standard reshape transform). Load average before/after: "
             f"{load0[0]:.2f} / {load1[0]:.2f}." + ("" if costly else " Score-CAM and Ablation-CAM (batch-1 rows) not run (`--no-costly`)."), "",
             "Target layers (ours' default, given to pytorch-grad-cam too): " + ', '.join(f"{a}: `{l}`" for a, l in layers.items()) + ".", "",
             "images/s (median of the timed rounds; higher is better):", ""]
    for bs in sorted({b for _, b in speed}, reverse=True):
        keys = [k for k in speed if k[1] == bs]
        cols = list(speed[keys[0]])
        lines += [f"| model | bs | " + " | ".join(cols) + " |", "|---|---|" + "---|"*len(cols)]
        lines += [f"| {a} | {b} | " + " | ".join(f"{speed[a, b][c]:.2f}" for c in cols) + " |" for a, b in keys]
        lines.append("")
    lines += ["Ratios (ours images/s / theirs):", "", "| model | bs | method | ours/inference | ours/pytorch-grad-cam |", "|---|---|---|---|---|"]
    res = {}
    for (a, b), row in speed.items():
        for m in [c[5:] for c in row if c.startswith('ours ')]:
            r_inf, r_pgc = row['ours ' + m] / row['inference'], row['ours ' + m] / row['pytorch-grad-cam ' + m]
            lines.append(f"| {a} | {b} | {m} | {r_inf:.2f} | {r_pgc:.2f} |")
            res[f"{a}_bs{b}_{m}"] = [round(r_inf, 3), round(r_pgc, 3)]
    return "\n".join(lines) + "\n", res

def main_transformers(a):
    t0, load0 = time.time(), os.getloadavg()
    speed, layers = transformer_rows(bs=2 if a.quick else 64, rounds=1 if a.quick else 5, costly=a.costly and not a.quick, warm=1 if a.quick else 2)
    report, res = transformer_report(speed, layers, time.time() - t0, load0, os.getloadavg(), a.costly)
    print(report)
    H.finish('saliency_transformers', res, report, a, settings=dict(costly=a.costly, quick=a.quick, threads=torch.get_num_threads()), t0=t0,
             tables=dict(images_per_s=[dict(model=k[0], bs=k[1], **v) for k, v in speed.items()], layers=layers))

def main():
    ap = H.parser(__doc__, 'resnet18 at batch 2, one timed round (--transformers: batch 2, no costly rows); results in bench/out/')
    ap.add_argument('--others-format', default='contiguous', choices=['contiguous', 'channels_last'],
                    help="memory format of the model and batch given to the reference libraries")
    ap.add_argument('--bs', default='1,16,64')
    ap.add_argument('--archs', default='resnet18,resnet34')
    ap.add_argument('--transformers', action='store_true', help="run only the timm rows of issue 22 (see the docstring)")
    ap.add_argument('--no-costly', dest='costly', action='store_false',
                    help="with --transformers: skip the batch-1 Score-CAM / Ablation-CAM rows (an hour on 2 cores)")
    a = ap.parse_args()
    if a.out and a.out.endswith('.md'): a.out = str(Path(a.out).parent)   # the old form: the results file itself
    H.setup(a)
    if a.quick: a.archs, a.bs = 'resnet18', '2'
    if a.transformers: return main_transformers(a)
    fmt = torch.channels_last if a.others_format == 'channels_last' else torch.contiguous_format
    t0, load0 = time.time(), os.getloadavg()
    models = make_models()
    others = {k: copy.deepcopy(m).to(memory_format=fmt) for k, m in models.items()} if fmt == torch.channels_last else models
    def run(m, arch, x): return METHODS[m](models[arch], x) if m in OURS else METHODS[m](others[arch], x.contiguous(memory_format=fmt))
    bss, archs = [int(b) for b in a.bs.split(',')], a.archs.split(',')
    speed, mem = {}, {}
    for arch in archs:
        for bs in bss:
            torch.manual_seed(bs)
            x = torch.randn(bs, 3, 224, 224)
            warm, timed = REPS.get(bs, (1, 2))
            times = {m: [] for m in METHODS}
            names = list(METHODS)
            for r in range(warm + timed):
                order = names[r % len(names):] + names[:r % len(names)]
                for m in order:
                    s = time.perf_counter(); run(m, arch, x); dt = time.perf_counter() - s
                    if r >= warm: times[m].append(dt)
            for m in names: speed[arch, bs, m] = bs / statistics.median(times[m])
            print(f"{arch} bs {bs}: " + ', '.join(f"{m} {speed[arch, bs, m]:.1f}" for m in names) + f"  ({time.time()-t0:.0f} s)",
                  flush=True)
    released = release_freed_memory()
    for arch in archs:
        for bs in bss:
            torch.manual_seed(bs)
            x = torch.randn(bs, 3, 224, 224)
            for m in METHODS: mem[arch, bs, m] = peak_rss_delta(lambda: run(m, arch, x))
    total, load1 = time.time() - t0, os.getloadavg()

    # ------------------------------------------------------------------------------------------------------ report
    lines = [f"# Saliency benchmark", "",
             f"fastai `vision_learner(pretrained=False)` at 224 px, random input; ours with the engine's defaults "
             f"(channels_last input on CPU), inference on the same input, references with a {a.others_format} model and input. "
             f"Load average before/after: {load0[0]:.2f} / {load1[0]:.2f}.", "",
             "images/s (median of the timed rounds; higher is better) and peak RSS above the level before the call "
             f"(MiB{'' if released else ', glibc trimming unavailable: approximate'}).", "",
             "| model | bs | " + " | ".join(METHODS) + " |", "|---|---|" + "---|"*len(METHODS)]
    for arch in archs:
        for bs in bss:
            lines.append(f"| {arch} | {bs} | " + " | ".join(f"{speed[arch, bs, m]:.1f} ({mem[arch, bs, m]:.0f} MiB)" for m in METHODS) + " |")
    lines += ["", "Ratios (our images/s / theirs):", "", "| model | bs | gradcam/inference | gradcampp/inference | "
              "gradcam/pytorch-grad-cam | gradcam/torchcam | gradcam/captum | gradcam/fastbook |", "|---|---|---|---|---|---|---|---|"]
    for arch in archs:
        for bs in bss:
            g = speed[arch, bs, 'ours gradcam']
            lines.append(f"| {arch} | {bs} | {g/speed[arch, bs, 'inference']:.2f} | "
                         f"{speed[arch, bs, 'ours gradcampp']/speed[arch, bs, 'inference']:.2f} | "
                         + " | ".join(f"{g/speed[arch, bs, m]:.2f}" for m in ['pytorch-grad-cam', 'torchcam', 'captum', 'fastbook']) + " |")
    key = ('resnet34', 64) if ('resnet34', 64, 'inference') in speed else (archs[-1], max(bss))   # --quick: its one model and size
    res = {}
    if key + ('inference',) in speed:
        g, gp = speed[key + ('ours gradcam',)], speed[key + ('ours gradcampp',)]
        res = {'gradcam_vs_inference': round(g / speed[key + ('inference',)], 3),
               'gradcampp_vs_inference': round(gp / speed[key + ('inference',)], 3),
               'gradcam_vs_pytorch_grad_cam': round(g / speed[key + ('pytorch-grad-cam',)], 3),
               'gradcam_vs_torchcam': round(g / speed[key + ('torchcam',)], 3)}
        lines += ["", f"Batch-{key[1]} {key[0]} ratios (targets: >= 0.95 vs inference, >= 3.5 vs pytorch-grad-cam, >= 1.1 vs TorchCAM):",
                  "", "```json", json.dumps(res), "```"]
    report = "\n".join(lines) + "\n"
    print(report)
    rows = [dict(model=ar, bs=b, method=m, images_per_s=round(speed[ar, b, m], 2), peak_mib=round(mem[ar, b, m])) for ar in archs for b in bss for m in METHODS]
    H.finish('saliency', res, report, a, settings=dict(archs=archs, bs=bss, others_format=a.others_format, reps=REPS, quick=a.quick,
                                                       threads=torch.get_num_threads()), t0=t0, tables=dict(speed=rows))

if __name__ == '__main__': main()
