"""Fingerprint + planning + preprocessing speed and peak memory on full-size phantoms, next to nnU-Net v2.

Writes ``--cases`` synthetic CTs of ``--size full`` (512 x 512 x ~100) into a scratch folder, then runs,
each as its own process tree with one worker (``-np 1``):

* ``smoothseg_plan_and_preprocess -d 900`` (fingerprint, both task plans, liver + tumor preprocessing);
* ``nnUNetv2_plan_and_preprocess -d 900 -c 3d_fullres`` when ``--nnunet-venv`` points at a virtual
  environment with nnunetv2 installed (never a dependency of smoothseg; install it separately).

Peak memory is the largest resident set of any single process in the tree (``RUSAGE_CHILDREN``).
Usage: ``python bench/bench_preprocess.py --cases 3 [--nnunet-venv /path/to/venv] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnunet_yardstick import NnUNetWorkspace, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3, help="number of training cases (full-size phantoms)")
    parser.add_argument("--size", default="full", choices=("small", "full"))
    parser.add_argument("--nnunet-venv", help="virtual environment with nnunetv2, for the side-by-side yardstick")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="smoothseg-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMOOTHSEG_")}
    env["SMOOTHSEG_HOME"] = str(work / "smoothseg")
    n_total = args.cases + max(1, round(args.cases / 3))  # the generator puts a quarter in the test split
    bindir = Path(sys.executable).parent
    t0 = time.perf_counter()
    subprocess.run([str(bindir / "smoothseg_make_demo_dataset"), "-n", str(n_total), "--size", args.size, "-np", "2",
                    "-q"], env=env, check=True)
    raw = work / "smoothseg" / "raw" / "Dataset900_SyntheticLiver"
    n_train = len(list((raw / "imagesTr").glob("*.nii.gz")))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"dataset: {n_train} training cases of size '{args.size}' (generated in {time.perf_counter() - t0:.0f} s)")

    ours_t, ours_mem = measure([str(bindir / "smoothseg_plan_and_preprocess"), "-d", "900", "-np", "1", "-q",
                                "--clean", "--overwrite_plans"], env, work / "smoothseg_plan_and_preprocess.log")
    print(f"smoothseg  plan_and_preprocess (liver + tumor): {ours_t:7.1f} s total, {ours_t / n_train:6.1f} s/case, "
          f"peak RSS {ours_mem:7.0f} MB")

    if args.nnunet_venv:
        nnunet = NnUNetWorkspace(Path(args.nnunet_venv), work / "nnunet", env)
        nnunet.import_raw(raw)
        nn_t, nn_mem = nnunet.plan_and_preprocess(900, processes=1)
        print(f"nnU-Net v2 plan_and_preprocess (3d_fullres):    {nn_t:7.1f} s total, {nn_t / n_train:6.1f} s/case, "
              f"peak RSS {nn_mem:7.0f} MB")
        print(f"ratio smoothseg / nnU-Net: time {ours_t / nn_t:.2f}, peak memory {ours_mem / nn_mem:.2f}")
    else:
        print("nnU-Net yardstick skipped (pass --nnunet-venv)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
