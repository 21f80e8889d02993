"""The FROC table of one model group of an ablation, pooled over every ablated fold's validation cases and seeds.

The ablation keeps, per case, the lesion counts at every candidate tumour operating point (voxel threshold, lesion
confidence, minimum lesion volume; ``ablation/cases/<group>_seed<s>_fold<k>.json``). This pools them over all folds
and seeds (each case-seed pair counts as one case) and prints the FROC curve: lesion sensitivity, overall and by
reference lesion volume, against false-positive lesions per case, as the upper envelope of all candidates; plus the
argmax row and how often the ablation's cross-fitted choice picked each point.

    python bench/froc_table.py <results>/Dataset900_SyntheticLiver/ablation [--group liver+tumor_deepsup]
        [--variant full] [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter
from pathlib import Path

from smoothseg.inference.operating_point import froc_table
from smoothseg.workflows.ablation import load_cache

BINS = (("lt1ml", "< 1 ml"), ("1to10ml", "1-10 ml"), ("ge10ml", ">= 10 ml"))


def pooled_cases(folder: Path, group: str) -> tuple[dict[str, dict], list[str]]:
    """Every case-seed pair's candidate counts, keyed ``case@seed``, and the files they came from (files of an older
    cache format, which the ablation would compute again, are left out with a message)."""
    pattern = re.compile(re.escape(group) + r"_seed(\d+)_fold(\w+)\.json$")
    per_case: dict[str, dict] = {}
    files = []
    for path in sorted((folder / "cases").glob(f"{group}_seed*_fold*.json")):
        match = pattern.match(path.name)
        if not match:
            continue
        cases = load_cache(path)
        if cases is None:
            print(f"{path.name}: an older cache format, left out (smoothseg_ablate computes it again)")
            continue
        files.append(path.name)
        for case_id, entry in cases.items():
            per_case[f"{case_id}@{match.group(1)}"] = entry["operating_point"]
    return per_case, files


def frontier(rows: list[dict]) -> list[dict]:
    """The candidates no other beats (as few or fewer false positives per case with a higher sensitivity): the FROC
    curve of everything the operating point can choose, in order of false positives."""
    candidates = sorted(rows, key=lambda r: (r["fp_per_case"], -r["sensitivity"], -r["f1"]))
    out, best = [], -math.inf
    for row in candidates:
        if row["sensitivity"] > best:
            out.append(row)
            best = row["sensitivity"]
    return out


def chosen_counts(folder: Path, variant: str) -> Counter:
    """How often the ablation's cross-fitted operating point was each candidate (over seeds and folds)."""
    report = folder / "ablation.json"
    if not report.exists():
        return Counter()
    points = json.loads(report.read_text()).get("settings", {}).get("operating_points", {}).get(variant, {})
    return Counter(fold["key"] for seed in points.values() for fold in seed.values())


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def markdown(rows: list[dict], by_key: dict[str, dict], chosen: Counter, n_cases: int, n_files: int) -> str:
    """The FROC rows, then the argmax row and the chosen points where they are not on the curve."""
    lines = [f"{n_cases} case-seed pairs from {n_files} fold-seed files. Candidates as `threshold|confidence|min ml`; "
             "the first rows form the FROC curve (no other candidate finds more lesions with as few false positives), "
             "then the argmax and the chosen points that are not on it.", "",
             "| operating point | FP lesions per case | FP per tumour-free liver | sensitivity | "
             + " | ".join(label for _, label in BINS) + " | lesion F1 | chosen (fold-seeds) |",
             "|---|---|---|---|" + "---|" * len(BINS) + "---|---|"]
    shown = list(rows)
    for key in ("argmax|0|0", *chosen):
        if key in by_key and by_key[key] not in shown:
            shown.append(by_key[key])
    for row in shown:
        name = row["key"].replace("|", "\\|") + (" (argmax, every lesion)" if row["key"] == "argmax|0|0" else "")
        lines.append(f"| {name} | {_fmt(row['fp_per_case'])} | {_fmt(row['fp_per_tumour_free'])} | "
                     f"{_fmt(row['sensitivity'])} | "
                     + " | ".join(_fmt(row.get(f"sensitivity_{b}")) for b, _ in BINS)
                     + f" | {_fmt(row['f1'])} | {chosen.get(row['key'], 0) or ''} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="<results>/<dataset>/ablation")
    parser.add_argument("--group", default="liver+tumor_deepsup", help="model group (the cases/ file prefix)")
    parser.add_argument("--variant", default="full", help="whose chosen operating points to count")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    per_case, files = pooled_cases(args.folder, args.group)
    if not per_case:
        parser.error(f"no {args.group}_seed*_fold*.json under {args.folder / 'cases'}")
    table = froc_table(per_case)
    text = markdown(frontier(table), {row["key"]: row for row in table}, chosen_counts(args.folder, args.variant),
                    len(per_case), len(files))
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
