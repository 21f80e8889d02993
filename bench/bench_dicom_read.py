"""What the DICOM series checks cost: a synthetic CT series read plainly by SimpleITK and by smoothseg's checked
reader, alternating. Usage: ``python bench/bench_dicom_read.py [--slices 300] [--size 512] [--repeats 2]``
(needs the ``[test]`` extra: the series is written with the tests' DICOM builder)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_builders import make_ct_series, write_datasets  # noqa: E402

from smoothseg.dataset.io import _dicom_file_names, read_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    try:
        hu = np.random.default_rng(0).integers(-1000, 1000, (args.slices, args.size, args.size)).astype(np.int16)
        write_datasets(make_ct_series("bench", hu, origin=(0, 0, 0), pixel_spacing=(0.8, 0.8), slice_step=1.0),
                       folder)
        files = _dicom_file_names(folder, None)

        def plain() -> None:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            sitk.GetArrayFromImage(reader.Execute())

        def checked() -> None:
            read_image(folder)

        times: dict[str, list[float]] = {"plain": [], "checked": []}
        for _ in range(args.repeats):
            for name, fn in (("plain", plain), ("checked", checked)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        for name, values in times.items():
            print(f"{name:8s} " + " ".join(f"{v:.2f} s" for v in values))
        print(f"checked - plain (best of {args.repeats}): {min(times['checked']) - min(times['plain']):.2f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
