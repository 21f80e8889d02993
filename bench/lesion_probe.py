"""Why a lesion is missed: what the tumour stage said inside each reference lesion, by size.

Reads the maps ``smoothseg_ablate`` keeps for each validation case (``<results>/<dataset>/ablation/cases/maps/<group>/
<case>.npz``: the label map before post-processing and P(tumour)) and the raw references and images, and prints per
lesion-volume bin (< 1, 1-10, >= 10 ml):

* how many reference lesions lie (mostly) outside the predicted liver region (the liver stage lost them: no tumour
  threshold can bring them back);
* the quantiles of the highest P(tumour) inside each lesion, and the share of lesions whose highest P(tumour) reaches
  0.5 / 0.3 / 0.1 / 0.05 (what an operating point could at best recover at that threshold);
* the lesions' contrast: the mean intensity difference to the liver within 5 mm around them, over the liver's
  standard deviation there (CNR, from the CT image);

and, over the tumour-free livers, the highest P(tumour) of each predicted-liver region (what a threshold would turn
into false positives). Usage (the demo's roots):
``python bench/lesion_probe.py --maps <results>/Dataset900_SyntheticLiver/ablation/cases/maps --raw <raw>/Dataset900_
SyntheticLiver --groups liver+tumor_seed0 liver+tumor_seed1``; groups are prefixes of the map folders (all folds).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage

from smoothseg.dataset.io import read_image
from smoothseg.masks.components import connected_lesions
from smoothseg.masks.measures import voxel_volume_ml

BINS = (("< 1 ml", 0.0, 1.0), ("1-10 ml", 1.0, 10.0), (">= 10 ml", 10.0, np.inf))
THRESHOLDS = (0.5, 0.3, 0.1, 0.05)


def _bin(volume_ml: float) -> str:
    return next(name for name, low, high in BINS if low <= volume_ml < high)


def probe(maps: Path, raw: Path, groups: list[str]) -> dict:
    regions = json.loads((raw / "dataset.json").read_text()).get("task_regions", {"liver": [1, 2], "tumor": [2]})
    tumour_labels = regions["tumor"]
    lesions: dict[str, list[dict]] = defaultdict(list)
    free_max: list[float] = []
    for folder in sorted(p for p in maps.iterdir() if any(p.name.startswith(g + "_fold") for g in groups)):
        for kept in sorted(folder.glob("*.npz")):
            case = kept.stem
            with np.load(kept, allow_pickle=False) as saved:
                predicted, probability = saved["labels"], saved["probability"].astype(np.float32)
            reference, geometry = read_image(raw / "labelsTr" / f"{case}.nii.gz")
            image, _ = read_image(raw / "imagesTr" / f"{case}_0000.nii.gz")
            spacing = geometry.spacing_zyx
            liver_ref = reference > 0
            tumour = np.isin(reference, tumour_labels)
            components, n = connected_lesions(tumour)
            if n == 0:
                free_max.append(float(probability[predicted > 0].max()) if (predicted > 0).any() else 0.0)
            shell_iterations = max(1, int(round(5.0 / min(spacing))))
            for i in range(1, n + 1):
                lesion = components == i
                volume = float(lesion.sum()) * voxel_volume_ml(spacing)
                around = ndimage.binary_dilation(lesion, iterations=shell_iterations) & liver_ref & ~tumour
                contrast = np.nan
                if around.any():
                    contrast = float((image[lesion].mean() - image[around].mean()) / (image[around].std() + 1e-6))
                lesions[_bin(volume)].append({
                    "group": folder.name, "case": case, "ml": volume,
                    "in_liver": float((predicted[lesion] > 0).mean()),
                    "max_p": float(probability[lesion].max()), "cnr": contrast})
    return {"lesions": lesions, "tumour_free_max": free_max}


def report(result: dict) -> None:
    print("| lesions | n | outside the predicted liver | max P(tumour): median [q25, q75] | "
          + " | ".join(f"max P >= {t}" for t in THRESHOLDS) + " | |CNR| median |")
    print("|---|---:|---:|---|" + "---:|" * len(THRESHOLDS) + "---:|")
    for name, _, _ in BINS:
        rows = result["lesions"].get(name, [])
        if not rows:
            continue
        max_p = np.array([r["max_p"] for r in rows])
        outside = sum(r["in_liver"] < 0.5 for r in rows)
        shares = " | ".join(f"{np.mean(max_p >= t):.2f}" for t in THRESHOLDS)
        q25, q50, q75 = np.quantile(max_p, [0.25, 0.5, 0.75])
        cnr = np.nanmedian([abs(r["cnr"]) for r in rows])
        print(f"| {name} | {len(rows)} | {outside} | {q50:.3f} [{q25:.3f}, {q75:.3f}] | {shares} | {cnr:.2f} |")
    free = np.array(result["tumour_free_max"])
    if free.size:
        print(f"\ntumour-free livers: {free.size}; their highest P(tumour): median {np.median(free):.3f}, "
              + ", ".join(f"{np.mean(free >= t):.2f} reach {t}" for t in THRESHOLDS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--groups", nargs="+", default=["liver+tumor_seed0"])
    parser.add_argument("--json", type=Path, help="also write the per-lesion rows here")
    args = parser.parse_args()
    result = probe(args.maps, args.raw, args.groups)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
