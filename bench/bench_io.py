"""Read/write speed of smoothseg's image I/O on a full-size phantom, against plain SimpleITK.

Plain ``sitk.ReadImage`` + ``GetArrayFromImage`` is what nnU-Net v2's SimpleITKIO does, so the ratio
is the cost of smoothseg's extra checks (3D/scalar, NIfTI voxel-block completeness, finiteness) and
of atomic writes. Usage: ``python bench/bench_io.py [--size full|small] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from smoothseg.dataset.io import read_image, write_image
from smoothseg.synthetic.phantom import make_phantom


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="full", choices=("small", "full"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    t0 = time.perf_counter()
    phantom = make_phantom(np.random.default_rng(0), args.size)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"phantom {phantom.image.shape} generated in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        for ending in (".nii.gz", ".nii", ".mha"):
            path = Path(tmp) / f"ct{ending}"
            ours_w = best_of(lambda p=path: write_image(phantom.image, phantom.geometry, p), args.repeats)
            plain_img = phantom.geometry.apply_to(sitk.GetImageFromArray(phantom.image))
            plain_w = best_of(lambda p=path, im=plain_img: sitk.WriteImage(im, str(p), True), args.repeats)
            ours_r = best_of(lambda p=path: read_image(p), args.repeats)
            plain_r = best_of(lambda p=path: sitk.GetArrayFromImage(sitk.ReadImage(str(p))), args.repeats)
            print(f"{ending:8s} read  smoothseg {ours_r:6.3f} s  plain SimpleITK {plain_r:6.3f} s  "
                  f"ratio {ours_r / plain_r:4.2f}")
            print(f"{ending:8s} write smoothseg {ours_w:6.3f} s  plain SimpleITK {plain_w:6.3f} s  "
                  f"ratio {ours_w / plain_w:4.2f}")


if __name__ == "__main__":
    main()
