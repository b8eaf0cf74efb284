"""The benchmarks' numbers as the docs show them, read from `bench/results/*.json` (the one source of every number).

The benchmarks page (nbs/95_benchmarks.ipynb) and the README's results table (nbs/index.ipynb, rendered into README.md by
tools/make_readme.py) call these functions in cells whose output is the table or sentence: no number is typed by hand.
Each function returns markdown; a results file that is missing gives a note instead of an error.

    import sys; sys.path.insert(0, 'tools'); import bench_report as B
    print(B.readme_table())
"""
import json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT/'bench'/'results'

# The goals the benchmarks are measured against (from the project's issues; not measured values)
GOALS = dict(demo_recall=0.90, demo_area=0.75, demo_iou=0.35, small_area=0.80, zoom_cut=0.25, saliency_vs_inference=0.95,
             saliency_vs_pgc=3.5, saliency_vs_torchcam=1.1, crop_pass=0.9, maxboxacc_over_centre=0.12)

def load(name:str) -> dict:
    "`bench/results/<name>.json` (the harness's layout: stamp, settings, result, tables; `demo.json` is the demo's flat file)."
    return json.loads((RESULTS/f'{name}.json').read_text())

def result(name:str) -> dict:
    d = load(name)
    return d['result'] if 'result' in d else d

def when(name:str) -> str:
    "The date of a results file's run, and whether it was transcribed from an older file."
    d = load(name)
    s = d.get('stamp', d)
    return f"{s.get('date', '?')}" + (' (transcribed)' if s.get('transcribed_from') else '')

def source(name:str) -> str:
    "Where a number comes from: the results file and the date of its run."
    return f"`bench/results/{name}.md`, {when(name)}"

def _missing(name):
    return not (RESULTS/f'{name}.json').exists()

def _note(name): return f"*(no results file bench/results/{name}.json yet: run its script)*"

def pct(v, d=0): return '–' if v is None else f"{v:.{d}%}"
def f2(v): return '–' if v is None else f"{v:.2f}"
def f3(v): return '–' if v is None else f"{v:.3f}"
def met(ok:bool) -> str: return 'met' if ok else '**not met**'
def pm(g, se): return '–' if g is None else f"{g:+.3f} ± " + ('–' if se is None else f"{se:.3f}")
def ge(a, b): return a is not None and b is not None and a >= b

def md_table(head:list, rows:list) -> str:
    return '\n'.join(['| ' + ' | '.join(head) + ' |', '|' + '---|'*len(head)] + ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows])

def _cut(r, p):
    "The share of the plain model's error look-then-zoom cuts (`p`: the key prefix of a setting)."
    g, b = r.get(p + 'zoom_gain'), r.get(p + 'baseline_error')
    return '–' if g is None or not b else f"{g/b:.0%}"

def rows_of(name, table) -> list: return load(name).get('tables', {}).get(table, [])

# --------------------------------------------------------------------------------------------------- the page's pieces
def demo_goals() -> str:
    "The demo's boxes against the tight-box goal, and its errors."
    if _missing('demo'): return _note('demo')
    r = result('demo')
    return (f"Against the tight-box goal (recall ≥ {GOALS['demo_recall']:.2f} with area reduction ≥ {GOALS['demo_area']:.2f} and IoU ≥ "
            f"{GOALS['demo_iou']:.2f} at the default margin): recall {f3(r['gradcam_recall'])} ({met(r['gradcam_recall'] >= GOALS['demo_recall'])}), "
            f"area reduction {f3(r['gradcam_area_reduction'])} ({met(r['gradcam_area_reduction'] >= GOALS['demo_area'])}), IoU "
            f"{f3(r['gradcam_iou'])} ({met(r['gradcam_iou'] >= GOALS['demo_iou'])}); the classic rule: recall {f3(r['classic_recall'])}, area "
            f"reduction {f3(r['classic_area_reduction'])}, IoU {f3(r['classic_iou'])}. Validation error: the first model {f2(r['val_error_before'])}, "
            f"{f2(r['val_error_zoom_before'])} with look-then-zoom; after `attention_crop` {f2(r['val_error_after'])} ({f2(r['val_error_zoom'])} with "
            f"look-then-zoom); the same budget of plain epochs {f2(r['baseline_val_error'])} ({f2(r['baseline_val_error_zoom'])}). "
            f"One run: an image is 0.01. Source: {source('demo')}.")

def small_objects_summary() -> str:
    "The box rule on small objects: the headline numbers of `bench/results/small_objects.json` against the goals."
    if _missing('small_objects'): return _note('small_objects')
    r = result('small_objects')
    t = load('small_objects').get('tables', {})
    def row(set_, group, rule, col):
        try: return t[set_][group][rule][col]
        except KeyError: return None
    native = row('photos_small_label', 'all', 'native=True', 'area_at_recall90')
    no_fine = row('photos_small_label', 'all', 'chosen default, upsample=1', 'area_at_recall90')
    lines = [
        f"- photographs made small, true class, margin 0.95: recall {f3(r['small_recall'])}, area reduction {f3(r['small_area_reduction'])}, "
        f"IoU {f3(r['small_iou'])}; the largest area reduction at recall ≥ 0.90 **{f3(r['small_area_at_recall90'])}** (the classic rule "
        f"{f3(r['small_today_area_at_recall90'])}, the true box {f3(r['small_oracle_area_reduction'])}); `native=True` alone "
        f"{f3(native)}; without the finer cut (`upsample=1`) {f3(no_fine)};",
        f"- shapes, predicted class: area at recall ≥ 0.90 {f3(r['shapes_area_at_recall90'])}; by object-area bin: "
        + ', '.join(f"{b} {f3(v)}" for b, v in r['shapes_bins_area_at_recall90'].items()) + ';',
        f"- full-size photographs: recall {f3(r['full_recall'])}, MaxBoxAccV2 {f3(r['full_maxboxacc_v2'])} (classic "
        f"{f3(r['full_today_maxboxacc_v2'])}, centre map {f3(r['full_centre_maxboxacc_v2'])});",
        f"- predicted class on the photographs made small: recall {f3(r['small_pred_recall'])}, area at recall ≥ 0.90 "
        f"{f3(r['small_pred_area_at_recall90'])};",
        f"- cost against the classic pass: " + ', '.join(f"{k} {v:.1f}x" for k, v in r['cost_by_set'].items()) + '.',
        "",
        f"Against the goals: recall ≥ 0.90 at area reduction ≥ {GOALS['small_area']:.2f} "
        f"{met(ge(r['small_area_at_recall90'], GOALS['small_area']))}; recall ≥ 0.90 at the default "
        f"margin on the true class {met(ge(r['small_recall'], 0.9))}; full-size MaxBoxAccV2 against the classic rule "
        + ('–' if r['full_maxboxacc_v2'] is None or r['full_today_maxboxacc_v2'] is None else f"{r['full_maxboxacc_v2'] - r['full_today_maxboxacc_v2']:+.3f}")
        + f". Source: {source('small_objects')}."]
    return '\n'.join(lines)

def saliency_table(model='resnet34', bs=64) -> str:
    "images/s (peak MiB) of each method at one model and batch size, then our ratios against the targets."
    if _missing('saliency'): return _note('saliency')
    speed = rows_of('saliency', 'speed')
    if not any(r['model'] == model and int(r['bs']) == bs for r in speed) and speed:   # a smaller run: its last model, largest batch
        model, bs = speed[-1]['model'], max(int(r['bs']) for r in speed)
    rows = [r for r in speed if r['model'] == model and int(r['bs']) == bs]
    r = result('saliency')
    t = md_table([r_['method'] for r_ in rows], [[f"{r_['images_per_s']:.1f} ({r_['peak_mib']:.0f} MiB)" for r_ in rows]])
    return (f"{model}, batch {bs}, images/s (peak memory above the start):\n\n{t}\n\n"
            f"Ours: Grad-CAM {f2(r['gradcam_vs_inference'])}x inference (Grad-CAM++ {f2(r['gradcampp_vs_inference'])}x), "
            f"{f2(r['gradcam_vs_pytorch_grad_cam'])}x pytorch-grad-cam, {f2(r['gradcam_vs_torchcam'])}x TorchCAM (targets "
            f"{GOALS['saliency_vs_inference']}x: {met(r['gradcam_vs_inference'] >= GOALS['saliency_vs_inference'])}, {GOALS['saliency_vs_pgc']}x: "
            f"{met(r['gradcam_vs_pytorch_grad_cam'] >= GOALS['saliency_vs_pgc'])}, {GOALS['saliency_vs_torchcam']}x: "
            f"{met(r['gradcam_vs_torchcam'] >= GOALS['saliency_vs_torchcam'])}). Batch 1, ours / inference: "
            + ', '.join(f"{m} {_ratio('saliency', m, 1)}" for m in ('resnet18', 'resnet34')) + f". Source: {source('saliency')}.")

def _ratio(name, model, bs):
    rows = {r['method']: r['images_per_s'] for r in rows_of(name, 'speed') if r['model'] == model and int(r['bs']) == bs}
    return f2(rows['ours gradcam']/rows['inference']) if {'ours gradcam', 'inference'} <= set(rows) else '–'

def transformers_table() -> str:
    "Ours against inference and pytorch-grad-cam on timm backbones (`--transformers`)."
    if _missing('saliency_transformers'): return _note('saliency_transformers')
    r = result('saliency_transformers')
    rows = []
    for k, (inf, pgc) in r.items():
        m = re.match(r'(.+)_bs(\d+)_(\w+)$', k)
        rows.append([f"{m[1]}, {m[2]}", m[3], f2(inf), f"{pgc:.1f}"])
    return md_table(['model, batch', 'method', 'ours / inference', 'ours / pytorch-grad-cam'], rows) + f"\n\nSource: {source('saliency_transformers')}."

def box_pass_summary() -> str:
    "The box pass against get_preds, its memory, the trust columns' cost, the soak run and two processes."
    out = []
    if not _missing('crop_pass'):
        r = result('crop_pass')
        out.append(f"The box pass runs at **{f2(r['crop_pass_vs_get_preds'])}x** the speed of `get_preds` (target {GOALS['crop_pass']}: "
                   f"{met(r['crop_pass_vs_get_preds'] >= GOALS['crop_pass'])}; the classic rule {f2(r.get('crop_pass_vs_get_preds_classic'))}x, "
                   f"the default costs {f2(r.get('cost_vs_classic'))}x the classic pass), with peak memory {r['peak_rss_mb_1k']:.0f} MB at "
                   f"1,000 items and {r['peak_rss_mb_10k']:.0f} MB at 10,000. Source: {source('crop_pass')}.")
    if not _missing('crop_pass_trust'):
        r = result('crop_pass_trust')
        out.append(f"The label-free trust columns (`trust=True`) cost {r['trust_cost']:+.0%} (source: {source('crop_pass_trust')}).")
    if not _missing('soak'):
        r = result('soak')
        out.append(f"**Bad input and long runs** (`bench/soak.py`): over {r['items']:,} files with {r['planted_corrupt']} corrupt ones planted, "
                   f"the pass reported {r['failed_reported']} (path and reason in the `error` column) and boxed every other one; peak memory "
                   f"{r['rss_mb_2k']:.0f} MB at 2,000 items and {r['rss_mb_20k']:.0f} MB at {r['items']:,}. Source: {source('soak')}.")
    if not _missing('distributed'):
        r = result('distributed')
        out.append(f"**Several processes** (`bench/distributed.py`): {r['items']:,} items, the pass alone takes {r['seconds_1proc']:.2f} s in 1 "
                   f"process with {r['cores']} threads and {r['seconds_2proc']:.2f} s in 2 processes (gloo): {f2(r['speedup_2proc'])}x, the table "
                   f"identical to one process's. Starting the processes costs {r['launch_seconds_2proc']:.0f} s. Source: {source('distributed')}.")
    return '\n\n'.join(out)

def refit_table() -> str:
    "Errors of the first model and both arms, plain and look-then-zoom, and the paired gains ± SE, per setting."
    if _missing('refit'): return _note('refit')
    r = result('refit')
    rows = []
    for name, p in (('shapes', ''), ('photos', 'photo_')):
        if not r.get(p + 'seeds_done'): continue
        g = lambda k: r[p + k]
        cut = g('zoom_gain')/g('baseline_error') if g('baseline_error') else 0
        rows.append([name, f3(g('first_error')), f"{f3(g('baseline_error'))} → {f3(g('zoom_baseline_error'))}",
                     f"{f3(g('attncrop_error'))} → **{f3(g('zoom_attncrop_error'))}**",
                     f"{pm(g('zoom_gain'), g('zoom_gain_se'))} ({cut:.0%}): {met(cut >= GOALS['zoom_cut'] and ge(g('zoom_gain'), 2*(g('zoom_gain_se') or float('inf'))))}",
                     f"{pm(g('combined_gain'), g('combined_gain_se'))}: {met(ge(g('combined_gain'), 2*(g('combined_gain_se') or float('inf'))))}",
                     pm(g('paired_gain'), g('paired_gain_se')), f"{f2(g('baseline_recall'))} / {f2(g('baseline_kept'))}"])
    return (md_table(['setting', 'first model', 'plain epochs: plain → zoom', '`attention_crop`: plain → zoom', 'zoom gain (goal: 25% cut, 2 SE)',
                      'combined gain (goal: 2 SE)', 're-fit alone', 'box recall / kept'], rows)
            + f"\n\n{r['seeds']} seeds, {r['n_valid']} validation images a setting. Source: {source('refit')}.")

def batched_table() -> str:
    "Each frame of the box pass, all images: localization and images/s."
    if _missing('batched'): return _note('batched')
    rows = [x for x in rows_of('batched', 'localization_and_speed') if x['set'] == 'all']
    r = result('batched')
    body = md_table(['box pass', 'recall', 'precision', 'IoU', 'area reduction', 'MaxBoxAccV2', 'images/s'],
                    [[x['mode'], f3(x['Recall']), f3(x['Precision']), f3(x['IoU']), f3(x['Image Area Reduction']), f3(x['MaxBoxAccV2']),
                      f"{x['images/s']:.1f}"] for x in rows])
    return (body + f"\n\nThe default squash against native: IoU {r['batched_iou'] - r['native_iou']:+.3f}, recall {r['batched_recall'] - r['native_recall']:+.3f}, "
            f"MaxBoxAccV2 {r['batched_maxboxacc_v2'] - r['native_maxboxacc_v2']:+.3f} at {r['speedup']:.1f}x native's speed (target: within 0.02 "
            f"IoU at 5x or more: {met(r['batched_iou'] >= r['native_iou'] - 0.02 and r['speedup'] >= 5)}); the best batched frame "
            f"(`{r['best_batched']}`) IoU {f3(r['best_batched_iou'])} at {r['best_batched_speedup']:.1f}x; native one image at a time: the "
            f"default is {r['speedup_vs_one_at_a_time']:.1f}x faster. {r['n_images']} images. Source: {source('batched')}.")

LOC_ROWS = ['ImageNet head · Grad-CAM · pred', 'ImageNet head · Grad-CAM++ · pred', 'ImageNet head · Grad-CAM, dilated + flip · pred',
            'ImageNet head · DDT · pred', 'ImageNet head · pytorch-grad-cam Grad-CAM · pred', 'full · Grad-CAM · pred',
            'full · Grad-CAM, dilated + flip · pred', 'small · Grad-CAM, dilated + flip · pred', 'scratch · Grad-CAM · pred', 'whole image',
            'centred box', 'centre map', 'ground-truth enclosing box (oracle)']

def localization_table() -> str:
    "The seed paper's table at eps 2.5% (predicted class), the baselines and the oracle; then the operating point."
    if _missing('localization'): return _note('localization')
    rows = {x['method']: x for x in rows_of('localization', 'at_eps')}
    out = []
    for want in LOC_ROWS:
        k = next((k for k in rows if k == want or (want in ('centred box', 'centre map') and k.startswith(want))), None)
        if k is None: continue
        x = rows[k]
        out.append([k] + [f3(x.get(c)) for c in ('Recall', 'Precision', 'IoU', 'mAP', 'Image Area Reduction', 'BoxAcc', 'MaxBoxAccV2')])
    r = result('localization')
    oracle = rows.get('ground-truth enclosing box (oracle)', {}).get('Image Area Reduction')
    gain = r['maxboxacc_v2'] - r['center_maxboxacc_v2']
    anchors = '; '.join(f"{x['method']}: " + ', '.join(f"{n} {x[c]:.3f}" for c, n in (('Recall', 'recall'), ('Precision', 'precision'), ('IoU', 'IoU'),
                                                        ('Image Area Reduction', 'area reduction'), ('MaxBoxAccV2', 'MaxBoxAccV2')) if x.get(c) is not None) for x in rows_of('localization', 'anchors'))
    return (md_table(['model · method', 'recall', 'precision', 'IoU', 'mAP', 'area reduction', 'BoxAcc@0.5', 'MaxBoxAccV2'], out)
            + f"\n\nThe default row ({r['model']} · {r['method']}) at the operating point chosen on the dev set (ε = {r['eps']:g}, the largest "
            f"area reduction with recall ≥ 0.90): recall {f3(r['recall'])}, precision {f3(r['precision'])}, IoU {f3(r['iou'])}, area reduction "
            f"{f3(r['area_reduction'])} (the oracle box cuts {f3(oracle)}); MaxBoxAccV2 {f3(r['maxboxacc_v2'])} against the centre map's "
            f"{f3(r['center_maxboxacc_v2'])}: {gain:+.3f} (goal +{GOALS['maxboxacc_over_centre']}: {met(gain >= GOALS['maxboxacc_over_centre'] - 5e-4)}); "
            f"classifier accuracy {f3(r['val_accuracy'])} (Imagenette valid), {f3(r['boxset_accuracy'])} on the box set. Source: {source('localization')}."
            + (f"\n\nAnchors (other data, the papers' numbers; the seed is Pascal VOC, WSOL evaluation all of ImageNet): {anchors}." if anchors else ''))

def trust_summary() -> str:
    if _missing('trust'): return _note('trust')
    r = result('trust')
    best = r['best_fixed_margin']
    chosen = {k: v for k, v in r['mean_iou_chosen'].items() if k.startswith('trust_margin')}
    return (f"Spearman correlation with the true IoU at margin 0.95: " + ', '.join(f"`{k}` {v:.2f}" for k, v in r['spearman_iou_at_95'].items())
            + f". The best fixed margin ({best}) gives mean IoU {f3(r['mean_iou_fixed'][best])}; margins chosen per image by `trust_margin` "
            f"{f3(min(chosen.values()))}-{f3(max(chosen.values()))}, `adaptive_margin` {f3(r['mean_iou_chosen']['adaptive_margin(area_ratio)'])}, "
            f"the per-image oracle {f3(r['mean_iou_chosen']['oracle (best margin per image)'])} ({r['n_boxes']} boxes, classifier accuracy "
            f"{pct(r['accuracy'])}). `trust_margin` beats the best fixed margin: {'yes' if r['trust_margin_beats_best_fixed'] else 'no'}. "
            f"Source: {source('trust')}.")

def spg_summary() -> str:
    if _missing('spg'): return _note('spg')
    r = result('spg')
    acc = {x['method']: x['acc'] for x in rows_of('spg', '(a) Synthetic small objects (2)')}
    return (f"Synthetic small objects: MaxBoxAccV2 {f3(r['synthetic_maxboxacc_v2_plain'])} → {f3(r['synthetic_maxboxacc_v2_spg'])}"
            + (f", accuracy {f3(acc.get('plain'))} → {f3(acc.get('spg'))}" if acc else '')
            + (f". Imagenette from scratch: accuracy {f3(r['real_acc_plain'])} → {f3(r['real_acc_spg'])}, MaxBoxAccV2 "
               f"{f3(r['real_maxboxacc_v2_plain'])} → {f3(r['real_maxboxacc_v2_spg'])}" if 'real_acc_plain' in r else '')
            + f" (without → with `SPGCallback`). Source: {source('spg')}.")

# --------------------------------------------------------------------------------------------------- the README's table
def readme_table() -> str:
    "The README's results table: one row a claim, its numbers from the results files, the command and the run's date."
    rows = []
    def add(name, claim, text, cmd):
        rows.append([claim, _note(name) if _missing(name) else text(), f"`{cmd}`", '–' if _missing(name) else when(name)])
    def demo():
        r = result('demo')
        return (f"default rule: Grad-CAM keeps {pct(r['gradcam_recall'])} of the object while cutting {pct(r['gradcam_area_reduction'])} of the "
                f"image (IoU {f2(r['gradcam_iou'])}; the classic rule: {pct(r['classic_recall'])}, {pct(r['classic_area_reduction'])}, "
                f"{f2(r['classic_iou'])}); validation error {f2(r['val_error_before'])} → {f2(r['val_error_after'])} after `attention_crop` "
                f"({f2(r['baseline_val_error'])} with the same budget of plain epochs), {f2(r['val_error_zoom'])} with look-then-zoom prediction (one run)")
    def small():
        r = result('small_objects')
        return (f"at recall ≥ 0.90 the default rule cuts {pct(r['small_area_at_recall90'])} of the image (the classic rule "
                f"{pct(r['small_today_area_at_recall90'])}, the true box {pct(r['small_oracle_area_reduction'])}); the {GOALS['small_area']:.2f} goal "
                f"{met(ge(r['small_area_at_recall90'], GOALS['small_area']))}; full-size photographs: recall {f3(r['full_recall'])}, MaxBoxAccV2 "
                f"{f3(r['full_maxboxacc_v2'])} (classic {f3(r['full_today_maxboxacc_v2'])}); {r['cost_by_set']['photos_small_label']:.1f}x the "
                "classic pass on 448 px images")
    def sal():
        r = result('saliency')
        return (f"Grad-CAM on resnet34, batch 64: {f2(r['gradcam_vs_inference'])}x inference, {r['gradcam_vs_pytorch_grad_cam']:.1f}x "
                f"pytorch-grad-cam, {r['gradcam_vs_torchcam']:.1f}x TorchCAM")
    def crop():
        r = result('crop_pass')
        s = result('soak') if not _missing('soak') else None
        return (f"the whole box pass of `attention_crop` at {f2(r['crop_pass_vs_get_preds'])}x `learn.get_preds`; peak memory "
                f"{r['peak_rss_mb_1k']:.0f} MB at 1,000 items, {r['peak_rss_mb_10k']:.0f} MB at 10,000"
                + (f", {s['rss_mb_20k']:.0f} MB at {s['items']:,} (`bench/soak.py`)" if s else ''))
    def refit():
        r = result('refit')
        return (f"`attention_crop` + look-then-zoom prediction against plain epochs + plain prediction: error {f3(r['baseline_error'])} → "
                f"{f3(r['zoom_attncrop_error'])} on shapes ({pm(r['combined_gain'], r['combined_gain_se'])}), {f3(r['photo_baseline_error'])} → "
                f"{f3(r['photo_zoom_attncrop_error'])} on photographs ({pm(r['photo_combined_gain'], r['photo_combined_gain_se'])}); look-then-zoom "
                f"alone cuts the plain model's error by {_cut(r, '')} on shapes, by {_cut(r, 'photo_')} on photographs (goal {GOALS['zoom_cut']:.0%})")
    def loc():
        r = result('localization')
        rows_ = {x['method']: x for x in rows_of('localization', 'at_eps')}
        oracle = rows_.get('ground-truth enclosing box (oracle)', {}).get('Image Area Reduction')
        return (f"EfficientNet-Lite0 fine-tuned on Imagenette, {r['method']}: MaxBoxAccV2 {f3(r['maxboxacc_v2'])} against the centre map's "
                f"{f3(r['center_maxboxacc_v2'])} (dev set); recall {f3(r['recall'])} with {pct(r['area_reduction'])} of the image cut away; "
                f"the oracle box cuts {pct(oracle)}")
    add('demo', 'the main job: a pretrained backbone\'s boxes on small objects', demo, 'make demo')
    add('small_objects', 'the box rule on small objects (dev photographs pasted at 1-16% of a 448 px scene)', small, 'python bench/small_objects.py')
    add('saliency', 'saliency speed against the reference libraries', sal, 'python bench/saliency.py')
    add('crop_pass', 'box-pass speed and memory', crop, 'python bench/crop_pass.py')
    add('refit', 'the classifier gains from the zoom (small objects in 384 px scenes at 192 px, 400 validation images, 5 seeds)', refit, 'python bench/refit.py')
    add('localization', 'real photographs (250 ImageNet-val photos with boxes) against the centre and oracle baselines', loc, 'python bench/localization.py')
    return md_table(['claim', 'result', 'command', 'run'], rows)

if __name__ == '__main__':
    print(readme_table())
