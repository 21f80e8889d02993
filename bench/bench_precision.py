"""What bfloat16 prediction changes: the same trained models predict the same cases in float32 and in bf16 (CPU).

For each precision, ``smoothseg.inference.cohort.predict`` writes the label maps (active contours and minimum lesion
volume as the models' validation chose, TTA off) and the time is taken; then per case: liver and tumour Dice of
each against the reference, and the fraction of voxels whose label differs between the two.

Usage (models and data of a demo run, e.g. ``smoothseg_demo --workdir W``)::

    SMOOTHSEG_RAW=W/raw SMOOTHSEG_PREPROCESSED=W/preprocessed SMOOTHSEG_RESULTS=W/cpu/results \\
        python bench/bench_precision.py -d 900 -i W/raw/Dataset900_SyntheticLiver/imagesTs \\
        -r W/raw/Dataset900_SyntheticLiver/labelsTs -o /tmp/precision
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    from smoothseg.dataset.io import read_image
    from smoothseg.evaluation.metrics import evaluate_case
    from smoothseg.inference.cascade import ModelOptions
    from smoothseg.inference.cohort import CohortOptions, predict

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True)
    parser.add_argument("-i", type=Path, required=True, help="test images")
    parser.add_argument("-r", type=Path, required=True, help="reference labels")
    parser.add_argument("-o", type=Path, required=True)
    args = parser.parse_args()
    options = CohortOptions(num_processes_preprocessing=0, num_processes_postprocessing=0, progress=False)
    seconds = {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        predict(args.i, args.o / precision, dataset=args.d, options=options,
                models=ModelOptions(device=torch.device("cpu"), precision=precision, tta=False))
        seconds[precision] = time.perf_counter() - t0
    print(f"time: fp32 {seconds['fp32']:.1f} s, bf16 {seconds['bf16']:.1f} s for {len(list(args.r.iterdir()))} cases")
    print("| case | liver Dice fp32 | liver Dice bf16 | tumour Dice fp32 | tumour Dice bf16 | voxels differing |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for reference_path in sorted(args.r.iterdir()):
        reference, geometry = read_image(reference_path)
        maps = {p: read_image(args.o / p / reference_path.name)[0] for p in ("fp32", "bf16")}
        scores = {p: evaluate_case(reference, maps[p], geometry.spacing_zyx) for p in maps}
        differ = float(np.mean(maps["fp32"] != maps["bf16"]))
        rows.append([scores[p][k] for k in ("liver_dice", "tumor_dice") for p in ("fp32", "bf16")] + [differ])
        r = rows[-1]
        print(f"| {reference_path.name.split('.')[0]} | {r[0]:.4f} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:.4f} | "
              f"{differ:.2e} |")
    mean = np.nanmean(np.array(rows, dtype=float), axis=0)
    print(f"| mean | {mean[0]:.4f} | {mean[1]:.4f} | {mean[2]:.4f} | {mean[3]:.4f} | {mean[4]:.2e} |")


if __name__ == "__main__":
    main()
