"""Training batches drawn with the stored liver distances against a distance transform per patch (the two ways of
moving the tumour task's liver mask): same seeds, same sampling; prints how many label and intensity voxels differ.

Works on a copy of a preprocessed tumour folder (the distances are written into the copy when it has none, as
preprocessing version 4 writes them). Usage: ``python bench/compare_mask_moves.py <preprocessed>/Dataset900_
SyntheticLiver/tumor --batches 2000`` (the demo's patch size by default; ``--patch Z Y X`` for another).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

import smoothseg.training.data_loader as data_loader
from smoothseg.preprocessing.dataset_preprocessing import liver_sdf, sdf_file
from smoothseg.training.config import TrainingConfig
from smoothseg.training.data_loader import PatchLoader, SamplingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a preprocessed tumour-task folder")
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 48, 48))
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(args.folder, Path(tmp) / "tumor"))
        ids = sorted(p.stem for p in folder.glob("*.json"))
        for case_id in ids:
            if not sdf_file(folder, case_id).exists():
                seg = np.load(folder / f"{case_id}_seg.npy")
                spacing = json.loads((folder / f"{case_id}.json").read_text())["spacing"]
                np.save(sdf_file(folder, case_id), liver_sdf(seg, spacing))
        cfg = TrainingConfig(dataset="-", task="tumor", fold="0")
        sampling = SamplingConfig(tuple(args.patch), 2, oversample_foreground=cfg.oversample_foreground,
                                  mask_outside_liver=True, mask_jitter_mm=cfg.mask_jitter_mm,
                                  mask_leak_mm=cfg.mask_leak_mm, fill_value=-5.0, lesion_sampling=cfg.lesion_sampling,
                                  clean_liver=cfg.clean_liver)
        stored, transformed = (PatchLoader(folder, ids, sampling, seed=args.seed) for _ in range(2))
        load = data_loader.load_liver_sdf
        voxels = labels = intensities = batches = 0
        try:
            for _ in range(args.batches):
                data_loader.load_liver_sdf = lambda f, c: None  # the distance transform per patch
                b = transformed.generate_train_batch()
                data_loader.load_liver_sdf = load
                a = stored.generate_train_batch()
                voxels += a["seg"].size
                dl, di = int((a["seg"] != b["seg"]).sum()), int((a["data"] != b["data"]).sum())
                labels, intensities, batches = labels + dl, intensities + di, batches + bool(dl or di)
        finally:
            data_loader.load_liver_sdf = load
    print(f"{args.batches} batches of 2 patches {tuple(args.patch)}: {labels} of {voxels} label voxels differ "
          f"({labels / voxels:.2e}), {intensities} intensity voxels; batches with any difference: {batches}")


if __name__ == "__main__":
    main()
