"""Issue 29's table: where the TLVR term helps, from ``smoothseg_ablate`` runs with the variants ``full`` (term on) and
``no_tlvr`` (term off), on clean labels and on each training arm, plus the unlabelled-cases arms.

Reads ``<ablation>/ablation.json`` (clean labels) and every ``<ablation>/arms/<arm>/ablation.json``, and prints one
markdown table: per arm, tumour Dice (per case, mean over seeds of the per-seed means), lesion F1 and ECE with the
term and without it, the paired per-case difference of tumour Dice (no_tlvr - full, each case's seed mean; the case is
the unit) and its two-sided Wilcoxon p. A second table sets each ``<arm>_unlabelled-rest`` arm (the same labelled
cases plus the rest of the fold unlabelled) against ``<arm>`` (the labelled cases alone), both ``full``, paired by
case. Nothing is recomputed: the numbers are the ablation's own.

Usage::

    python bench/tlvr_table.py $SMOOTHSEG_RESULTS/Dataset900_SyntheticLiver/ablation [--out table.md]

The runs behind it (demo dataset, all five folds; one command per arm, as in documentation/benchmarks.md)::

    smoothseg_ablate -d 900 -f 0 1 2 3 4 --seeds 2 --variants full no_tlvr [--label-noise KIND:LEVEL]
        [--train-fraction F [--unlabelled-rest]] --liver-epochs 6 --tumor-epochs 16 --iters-per-epoch 25 --val-iters 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from smoothseg.workflows.ablation import paired_test


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _mean(report: dict, variant: str, key: str) -> float:
    entry = report["summary"].get(variant)
    return entry["over_seeds"][key]["mean"] if entry else math.nan


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2g}"


def term_row(name: str, report: dict) -> str:
    """One arm: the term on (full) against off (no_tlvr)."""
    cells = [name]
    for key, digits in (("tumor_dice", 3), ("lesion_f1", 3), ("ece", 4)):
        cells += [_fmt(_mean(report, "full", key), digits), _fmt(_mean(report, "no_tlvr", key), digits)]
    cases = report.get("cases", {})
    if "no_tlvr" in cases and "full" in cases:
        test = paired_test(cases["no_tlvr"], cases["full"])
        cells += [f"{test['mean_difference']:+.3f} (n={test['n_cases']})", _p(test["wilcoxon_p"])]
    else:
        cells += ["–", "–"]
    return "| " + " | ".join(cells) + " |"


def unlabelled_row(name: str, with_unlabelled: dict, labelled_only: dict) -> str:
    """``full`` of an arm with the rest unlabelled against ``full`` of the same labelled cases alone."""
    test = paired_test(with_unlabelled["cases"]["full"], labelled_only["cases"]["full"])
    cells = [name, _fmt(_mean(with_unlabelled, "full", "tumor_dice")), _fmt(_mean(labelled_only, "full", "tumor_dice")),
             _fmt(_mean(with_unlabelled, "full", "lesion_f1")), _fmt(_mean(labelled_only, "full", "lesion_f1")),
             _fmt(_mean(with_unlabelled, "full", "ece"), 4), _fmt(_mean(labelled_only, "full", "ece"), 4),
             f"{test['mean_difference']:+.3f} (n={test['n_cases']})", _p(test["wilcoxon_p"])]
    return "| " + " | ".join(cells) + " |"


def build(folder: Path) -> str:
    arms = {"clean labels": _load(folder / "ablation.json")}
    for path in sorted((folder / "arms").glob("*/ablation.json")):
        arms[path.parent.name] = _load(path)
    arms = {k: v for k, v in arms.items() if v is not None}
    lines = ["| training labels | tumour Dice, term on | off | lesion F1, on | off | ECE, on | off | "
             "Δ tumour Dice off − on (per case) | Wilcoxon p |", "|---" * 9 + "|"]
    lines += [term_row(name, report) for name, report in arms.items() if not name.endswith("_unlabelled-rest")]
    pairs = [(name, name[:-len("_unlabelled-rest")]) for name in arms if name.endswith("_unlabelled-rest")]
    if pairs:
        lines += ["", "| labelled cases | tumour Dice, + unlabelled | alone | lesion F1, + unlabelled | alone | "
                  "ECE, + unlabelled | alone | Δ tumour Dice (per case) | Wilcoxon p |", "|---" * 9 + "|"]
        lines += [unlabelled_row(base, arms[name], arms[base]) for name, base in pairs if base in arms]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ablation", type=Path, help="the ablation folder (<results>/<dataset>/ablation)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if not (args.ablation / "ablation.json").is_file() and not (args.ablation / "arms").is_dir():
        print(f"{args.ablation}: no ablation.json and no arms/ folder", file=sys.stderr)
        return 2
    table = build(args.ablation)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
