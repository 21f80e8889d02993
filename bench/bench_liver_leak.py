"""What the tumour stage does with a liver-stage mask that leaks into neighbouring tissue.

For each case, the trained liver stage's mask is widened by ``--leak-mm`` (every voxel within that Euclidean distance
in mm, on the case's grid), as when the liver model lets the spleen, stomach or heart into its mask, and the cascade's
tumour stage runs on it (liver refinement on, as in ``smoothseg_predict``). Prints, per case and leak, the non-liver
volume (ml, against the reference liver region) in the liver mask before and after the tumour stage's refinement, and
the tumour it predicts outside the reference liver (false-positive tumour in the leaked tissue), then the means. (The
cascade ignores a refinement that would keep less than half of the mask it was given, so a leak larger than the liver
itself is not trimmed.)

Run it once per tumour model to compare, e.g. one trained with ``--mask-leak-mm 0`` and one with the default, with
the same liver model: two results roots (``SMOOTHSEG_RESULTS``), the liver fold copied into both. The distance
transform runs on the whole image (about 0.5 GB at 512 x 512 x 100). Usage (the roots as for ``smoothseg_predict``;
the demo's test cases):
``python bench/bench_liver_leak.py -d 900 -i RAW/imagesTs -r RAW/labelsTs --leak-mm 0 5 10``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from smoothseg.dataset.cases import case_id_of
from smoothseg.dataset.io import read_image
from smoothseg.inference import CascadePredictor
from smoothseg.inference.cascade import ModelOptions
from smoothseg.models.store import select_models


def widen(mask: np.ndarray, spacing_zyx, mm: float) -> np.ndarray:
    """``mask`` plus every voxel within ``mm`` of it."""
    if mm <= 0 or not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask, sampling=spacing_zyx) <= mm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", default="900", help="dataset of the trained models (default: the demo's, 900)")
    parser.add_argument("-f", default="0", help="fold of the models (default 0)")
    parser.add_argument("-i", type=Path, required=True, help="folder of images (<case>_0000.nii.gz)")
    parser.add_argument("-r", type=Path, required=True, help="folder of reference labels (<case>.nii.gz)")
    parser.add_argument("--leak-mm", type=float, nargs="+", default=[0.0, 5.0, 10.0])
    args = parser.parse_args()

    cascade = CascadePredictor.from_models(select_models(args.d, folds=[args.f]),
                                           ModelOptions(device=torch.device("cpu"), tta=False))
    totals: dict[float, list[tuple[float, float, float]]] = {mm: [] for mm in args.leak_mm}
    print("| case | leak (mm) | non-liver in the liver stage's mask (ml) | after refinement (ml) | "
          "tumour outside the reference liver (ml) |\n|---|---:|---:|---:|---:|")
    for path in sorted(args.i.glob("*_0000.nii.gz")):
        case = case_id_of(path)
        image, geometry = read_image(path)
        reference, _ = read_image(args.r / f"{case}.nii.gz")
        liver_ref = reference > 0
        ml = float(np.prod(geometry.spacing)) / 1000.0
        liver_stage = cascade.liver_stage(image, geometry)
        for mm in args.leak_mm:
            leaking = widen(liver_stage, geometry.spacing_zyx, mm)
            refined, tumour = cascade.tumour_stage(image, geometry, leaking)
            row = (np.count_nonzero(leaking & ~liver_ref) * ml, np.count_nonzero(refined & ~liver_ref) * ml,
                   np.count_nonzero(tumour & ~liver_ref) * ml)
            totals[mm].append(row)
            print(f"| {case} | {mm:g} | {row[0]:.0f} | {row[1]:.0f} | {row[2]:.1f} |", flush=True)
    if not any(totals.values()):
        raise SystemExit(f"no images (<case>_0000.nii.gz) in {args.i}")
    for mm, rows in totals.items():
        mean = np.mean(rows, axis=0)
        print(f"| mean | {mm:g} | {mean[0]:.0f} | {mean[1]:.0f} | {mean[2]:.1f} |")


if __name__ == "__main__":
    main()
