"""`make bench-smoke`: run every benchmark script of bench/ with `--quick` (tiny data), one at a time, and check that each
ended its output with one JSON line holding its keys and wrote its stamped results file (bench/out/<name>.json and .md,
both from this run, the JSON's `result` equal to the printed line). Prints one line per script and the total time;
exits 1 if any script failed.

    python tools/bench_smoke.py                 # every script
    python tools/bench_smoke.py trust soak      # some of them
    python tools/bench_smoke.py --list          # the scripts, their results file and keys

Scripts that read the project's photographs (../shared/data, absent on CI and in a fresh clone) run their photo parts
only when it is there: `localization` then prints `"skipped"` with the folder it lacks (its keys null), `refit` and
`small_objects` run their synthetic parts alone. Nothing downloads.
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/'bench'/'out'

# script: (the results file's name under bench/out/, the keys its final JSON line must hold: checks outside read them)
SCRIPTS = {
    'saliency': ('saliency', ['gradcam_vs_inference', 'gradcampp_vs_inference', 'gradcam_vs_pytorch_grad_cam', 'gradcam_vs_torchcam']),
    'crop_pass': ('crop_pass', ['crop_pass_vs_get_preds', 'crop_pass_vs_get_preds_classic', 'cost_vs_classic', 'peak_rss_mb_1k', 'peak_rss_mb_10k']),
    'soak': ('soak', ['items', 'failed_reported', 'planted_corrupt', 'rss_mb_2k', 'rss_mb_20k']),
    'distributed': ('distributed', ['items', 'cores', 'seconds_1proc', 'seconds_1proc_1thread', 'seconds_2proc', 'speedup_2proc',
                                    'launch_seconds_1proc', 'launch_seconds_2proc']),
    'trust': ('trust', ['n_boxes', 'accuracy', 'spearman_iou_at_95', 'spearman_iou_pooled', 'mean_iou_fixed', 'mean_iou_chosen',
                        'best_fixed_margin', 'trust_margin_beats_best_fixed', 'average_drop', 'increase_in_confidence', 'settings']),
    'spg': ('spg', ['synthetic_maxboxacc_v2_plain', 'synthetic_maxboxacc_v2_spg']),
    'batched': ('batched', ['batched_iou', 'native_iou', 'batched_recall', 'native_recall', 'batched_precision', 'native_precision',
                            'batched_area_reduction', 'native_area_reduction', 'batched_maxboxacc_v2', 'native_maxboxacc_v2',
                            'batched_images_per_s', 'native_images_per_s', 'speedup', 'speedup_vs_one_at_a_time', 'best_batched',
                            'best_batched_iou', 'best_batched_speedup', 'n_images', 'seconds']),
    'localization': ('localization', ['model', 'pretrained', 'arch', 'method', 'eps', 'eps_from', 'recall', 'precision', 'iou', 'map',
                                      'area_reduction', 'boxacc50', 'maxboxacc_v2', 'center_maxboxacc_v2', 'val_accuracy',
                                      'boxset_accuracy', 'n_images']),
    'small_objects': ('small_objects', ['small_area_at_recall90', 'small_margin_at_recall90', 'small_iou', 'small_recall',
                                        'small_area_reduction', 'small_pred_recall', 'small_pred_area_reduction',
                                        'small_pred_area_at_recall90', 'small_today_area_at_recall90', 'small_oracle_area_reduction',
                                        'shapes_area_at_recall90', 'shapes_recall', 'shapes_area_reduction', 'shapes_iou',
                                        'shapes_bins_area_at_recall90', 'full_maxboxacc_v2', 'full_today_maxboxacc_v2',
                                        'full_centre_maxboxacc_v2', 'full_recall', 'full_area_reduction', 'cost_vs_single_pass',
                                        'cost_by_set', 'chosen_default', 'quick', 'limit', 'seconds']),
    'refit': ('refit_quick', ['seeds', 'split', 'baseline_error', 'attncrop_error', 'paired_gain', 'paired_gain_se', 'zoom_baseline_error',
                              'zoom_attncrop_error', 'zoom_gain', 'zoom_gain_se', 'combined_gain', 'combined_gain_se', 'first_error',
                              'first_zoom_error', 'attncrop_zoom_gain', 'attncrop_zoom_gain_se', 'first_recall', 'first_kept',
                              'baseline_recall', 'baseline_kept', 'n_valid', 'seeds_done', 'photo_baseline_error', 'photo_zoom_gain',
                              'photo_combined_gain', 'photo_seeds_done', 'seconds']),
}
MAY_SKIP = {'localization'}   # may print {"skipped": ...} when ../shared/data is absent

def last_json(stdout:str):
    "The last line of `stdout` parsed as a JSON object, or None."
    lines = [l for l in stdout.strip().splitlines() if l.strip()]
    if not lines: return None
    try: o = json.loads(lines[-1])
    except json.JSONDecodeError: return None
    return o if isinstance(o, dict) else None

def check(script, proc, t_start) -> list:
    "What is wrong with one script's run (an empty list: nothing)."
    name, keys = SCRIPTS[script]
    if proc.returncode: return [f"exit status {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}"]
    line = last_json(proc.stdout)
    if line is None: return [f"the last line of its output is not one JSON object: {proc.stdout.strip().splitlines()[-1:]!r}"]
    if 'skipped' in line and script not in MAY_SKIP: return [f"skipped: {line['skipped']}"]
    errs = [f"final JSON line lacks {k!r}" for k in keys if k not in line]
    j, md = OUT/f'{name}.json', OUT/f'{name}.md'
    for f in (j, md):
        if not f.exists() or f.stat().st_mtime < t_start: errs.append(f"{f.relative_to(ROOT)} was not written by this run")
    if not errs:
        data = json.loads(j.read_text())
        st = data.get('stamp', {})
        errs += [f"{j.name}: stamp lacks {k!r}" for k in ('date', 'machine', 'versions', 'commit', 'command') if k not in st]
        if data.get('result') != line: errs.append(f"{j.name}: its result differs from the printed JSON line")
    return errs

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('scripts', nargs='*', help=f"some of {', '.join(SCRIPTS)} (default: all)")
    p.add_argument('--timeout', type=int, default=600, help='seconds a script may run')
    p.add_argument('--list', action='store_true')
    a = p.parse_args(argv)
    if a.list:
        for s, (n, k) in SCRIPTS.items(): print(f"bench/{s}.py --quick -> bench/out/{n}.json: {', '.join(k)}")
        return 0
    unknown = [s for s in a.scripts if s not in SCRIPTS]
    if unknown: p.error(f"unknown script(s) {unknown}: {', '.join(SCRIPTS)}")
    missing = sorted({f.stem for f in (ROOT/'bench').glob('*.py')} - set(SCRIPTS) - {'harness'})
    if missing: print(f"bench/ has scripts the smoke run does not know: {missing} (add them to SCRIPTS)", file=sys.stderr); return 1
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), 'OMP_NUM_THREADS': '1'}
    t_all, failed = time.time(), []
    for s in a.scripts or SCRIPTS:
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, str(ROOT/'bench'/f'{s}.py'), '--quick'], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=a.timeout)
            errs = check(s, proc, t0)
        except subprocess.TimeoutExpired: errs = [f"ran past {a.timeout} s"]
        line = None if errs else last_json(proc.stdout)
        state = 'FAIL' if errs else ('skipped (no data)' if 'skipped' in line else 'ok')
        print(f"{s:<14} {state:<18} {time.time() - t0:6.0f} s" + (f"  {line['skipped']}" if state.startswith('skipped') else ''), flush=True)
        for e in errs: print(f"    {e}", flush=True)
        if errs: failed.append(s)
    print(f"bench-smoke: {len(a.scripts or SCRIPTS) - len(failed)} of {len(a.scripts or SCRIPTS)} scripts ok in {time.time() - t_all:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ''))
    return 1 if failed else 0

if __name__ == '__main__':
    sys.exit(main())
