"""The demo over several training seeds: does every seed's tumour model take off, and does every run meet the bar?

Runs ``smoothseg_demo --device cpu --seed S`` for each seed in one work folder (the synthetic dataset and its
preprocessing are shared; each seed trains its own models), and after each run reads:

* the **take-off epoch**: the first epoch whose validation pseudo-Dice of the tumour class (from the tumour
  checkpoint's progress log, batches of the fold's validation cases) reaches 0.1; "never" when it does not;
* the fold validation's **sliding-window tumour Dice**: the whole cascade on the fold's validation cases
  (``validation/metrics.json``, mean per case), which a collapsed model cannot fake on batches;
* the demo's test-case Dice (liver, tumour; per-case means), the bar, and the wall time;
* a second table, lesion detection on the test cases (the evaluation's criterion): sensitivity for reference lesions
  under 1 ml, 1-10 ml and 10 ml or more (found / present), false-positive lesions per tumour-free liver, lesion F1,
  and the operating point the fold validation chose (tumour threshold | minimum lesion volume).

Prints a markdown table and writes it, with every run's ``demo.json``, to ``--out``. Usage:
``python bench/demo_seeds.py --seeds 0 1 2 3 4 --workdir /tmp/seeds --out /tmp/seeds/table.md [demo flags...]``;
flags after ``--`` are passed to ``smoothseg_demo`` (e.g. ``-- --tumor-epochs 30``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

TAKE_OFF = 0.1


def _take_off(progress: dict) -> str:
    for epoch, value in enumerate(progress.get("pseudo_dice_tumor", [])):
        if value is not None and not math.isnan(value) and value >= TAKE_OFF:
            return str(epoch)
    return "never"


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


DETECTION_HEADER = ("| seed | test lesions < 1 ml found | 1-10 ml | >= 10 ml | FP lesions per tumour-free liver | "
                    "lesion F1 | operating point (threshold \\| min ml) |\n|---|---|---|---|---|---|---|")


def _found(entry: dict) -> str:
    return f"{entry['n_detected']}/{entry['n_reference']}"


def detection_row(seed: int, evaluation: Path, postprocessing: Path) -> str:
    """The detection row of one run: from the test evaluation's summary and the validation's choice."""
    det = json.loads(evaluation.read_text())["lesion_detection"]
    post = json.loads(postprocessing.read_text())
    by_size = det["by_size"]
    return (f"| {seed} | {_found(by_size['lt1ml'])} | {_found(by_size['1to10ml'])} | {_found(by_size['ge10ml'])} | "
            f"{_fmt(det['fp_lesions_per_tumour_free_case'])} | {_fmt(det['f1'])} | "
            f"{post.get('tumor_threshold', 'argmax')} \\| {post['min_lesion_volume_ml']:g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("demo_args", nargs="*", help="extra smoothseg_demo flags (after --)")
    args = parser.parse_args()

    import torch

    from smoothseg.models.checkpoint import load_checkpoint

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows, detection = [], []
    for seed in args.seeds:
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "smoothseg.cli.demo", "--device", "cpu", "--seed", str(seed),
                              "--workdir", str(args.workdir), *args.demo_args], capture_output=True, text=True)
        minutes = (time.perf_counter() - started) / 60
        (args.out.parent / f"seed{seed}_stdout.txt").write_text(run.stdout)
        (args.out.parent / f"seed{seed}_stderr.txt").write_text(run.stderr)
        if run.returncode != 0:
            rows.append(f"| {seed} | failed (exit {run.returncode}) | | | | | | {minutes:.1f} |")
            continue
        demo = json.loads((args.workdir / "cpu" / "demo.json").read_text())
        shutil.copy(args.workdir / "cpu" / "demo.json", args.out.parent / f"seed{seed}_demo.json")
        tumour_fold = Path(demo["paths"]["tumor_model"])
        # kept per seed: the per-case test metrics and the validation's post-processing choice
        shutil.copy(Path(demo["paths"]["per_case"]), args.out.parent / f"seed{seed}_cases.csv")
        shutil.copy(tumour_fold / "postprocessing.json", args.out.parent / f"seed{seed}_postprocessing.json")
        progress = load_checkpoint(tumour_fold / "checkpoint_final.pth", torch.device("cpu"))["progress"]
        validation = json.loads((tumour_fold / "validation" / "metrics.json").read_text())
        val_tumour = validation["metrics"]["tumor_dice"]["mean_per_case"]
        m = demo["metrics"]
        rows.append(f"| {seed} | {_take_off(progress)} | {_fmt(val_tumour)} | {_fmt(m['liver_dice'])} | "
                    f"{_fmt(m['tumor_dice'])} | {_fmt(m['tumor_dice_global'])} | "
                    f"{'met' if demo['meets_quality_bar'] else 'NOT met'} | {minutes:.1f} |")
        print(rows[-1], flush=True)
        detection.append(detection_row(seed, Path(demo["paths"]["evaluation"]), tumour_fold / "postprocessing.json"))
        print(detection[-1], flush=True)
    header = ("| seed | tumour take-off epoch (val. pseudo-Dice >= 0.1) | fold-validation tumour Dice (cascade) | "
              "test liver Dice | test tumour Dice | test tumour Dice pooled | bar | minutes |\n"
              "|---|---|---|---|---|---|---|---|")
    table = header + "\n" + "\n".join(rows) + "\n\n" + DETECTION_HEADER + "\n" + "\n".join(detection) + "\n"
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
