"""The training loader at real size: patches per second per worker and where a batch's time goes.

Self-contained: writes six ``--size full`` phantoms (512 x 512 x ~100 at clinical spacing) into ``--workdir``, plans
and preprocesses them with the real planner at ``--gpu-memory-target`` (8 GB: the plans a GPU user gets), then, per
task, builds the loader exactly as ``Trainer._loader`` does for training (``PatchLoader`` with the default
``TrainingConfig`` sampling: foreground oversampling, lesion-balanced sampling, clean-liver negatives, the mask moves
of the tumour task; ``training_transforms`` of the plan) and

* **split** (one process, no network): the seconds per batch spent in reading a case (``load_case``, memory-mapped),
  cropping patches, the mask moves (the liver mask moved by a random offset, incl. the wider crop it needs), the rest
  of the batch assembly (patch centres, lesion painting, TLVR fields: "sampling + other"), the spatial transform
  (rotation / scaling), the intensity transforms (noise, blur, brightness, contrast, low resolution, gamma) and
  mirroring + the liver-coverage field;
* **per worker**: batches per second through batchgenerators' ``MultiThreadedAugmenter`` with one worker process
  (what one worker delivers, incl. the transfer between processes), and the workers needed for a GPU step time
  (``--step-ms``: 52 ms per 8 GB step of 2 patches on an H200, documentation/benchmarks.md), at 1x and 1.5x margin.

Usage: ``python bench/bench_loader.py --workdir W`` (first run: ~5 min to make and preprocess the phantoms on 2
cores; ``--reuse`` times again on them), ``--batches N`` per measurement (default 100: a patch is rotated or scaled
with probability 0.36, so fewer batches give noisy spatial-transform figures), ``--no-sdf`` for the mask moves of
older preprocessing (a distance transform per patch), ``--gpu-augmentation`` for the workers' share when the
augmentation runs on the GPU (they cut and mask larger source patches and transform nothing).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

DATASET = "Dataset900_SyntheticLiver"
READ, CROP, MASK, OTHER = "read (load_case)", "crop", "mask moves", "sampling + other"
SPATIAL, INTENSITY, MIRROR = "spatial transform", "intensity transforms", "mirror + coverage"


def _prepare(work: Path, memory_gb: float, reuse: bool) -> None:
    from smoothseg.synthetic.demo_dataset import make_demo_dataset
    from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess

    if reuse and (work / "home" / "preprocessed" / DATASET / "plans.json").is_file():
        print(f"reusing the preprocessed phantoms in {work}")
        return
    t0 = time.perf_counter()
    make_demo_dataset(n_cases=6, seed=7, size="full", num_processes=2)
    t1 = time.perf_counter()
    plan_and_preprocess(900, gpu_memory_target_gb=memory_gb, overwrite_plans=True, num_processes=2)
    print(f"6 full-size phantoms made in {t1 - t0:.0f} s, planned and preprocessed in {time.perf_counter() - t1:.0f} s")


def _loader(task: str, seed: int = 0, on_device: bool = False):
    """The training loader and transforms of ``task``, built as ``Trainer._loader`` builds them (``on_device``: as
    for augmentation on the GPU: source patches, no transforms in the worker)."""
    from smoothseg.paths import preprocessed_root
    from smoothseg.planning.plans import Plans
    from smoothseg.preprocessing.normalization import outside_fill_value
    from smoothseg.training.augmentation import training_transforms
    from smoothseg.training.config import TrainingConfig
    from smoothseg.training.data_loader import PatchLoader, SamplingConfig

    folder = preprocessed_root() / DATASET
    plan = Plans.load(folder / "plans.json")[task]
    from smoothseg.training.gpu_augmentation import source_patch_size, training_ranges

    config = TrainingConfig(dataset="900", task=task, fold="0")
    fill = outside_fill_value(plan)
    tumour = plan.crop == "liver"
    source = source_patch_size(training_ranges(plan.patch_size, plan.mirror_axes)) if on_device else None
    sampling = SamplingConfig(plan.patch_size, plan.batch_size, crop_size=source,
                              oversample_foreground=config.oversample_foreground,
                              mask_outside_liver=tumour, mask_jitter_mm=config.mask_jitter_mm,
                              mask_leak_mm=config.mask_leak_mm, fill_value=fill,
                              **({"lesion_sampling": config.lesion_sampling, "lesion_alpha": config.lesion_alpha,
                                  "clean_liver": config.clean_liver, "lesion_synthesis": config.lesion_synthesis}
                                 if tumour else {}))
    task_folder = folder / task
    ids = sorted(p.stem for p in task_folder.glob("*.json"))
    loader = PatchLoader(task_folder, ids, sampling, {}, seed=seed, num_threads=1)
    transforms = None if on_device else training_transforms(plan.patch_size, fill, plan.mirror_axes)
    return plan, loader, transforms


def _split(task: str, batches: int, on_device: bool = False) -> tuple[dict[str, float], object]:
    """Seconds per batch per part, in this process."""
    import smoothseg.training.data_loader as data_loader

    plan, loader, transforms = _loader(task, on_device=on_device)
    spent: dict[str, float] = defaultdict(float)
    depth = [0]

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:  # the mask move's own wider crop counts as the mask move
                    spent[name] += time.perf_counter() - t0
        return wrapper

    original_load = data_loader.load_case
    data_loader.load_case = timed(READ, original_load)
    loader._crop = timed(CROP, loader._crop)
    loader._jittered_mask = timed(MASK, loader._jittered_mask)
    groups = {"SpatialTransform": SPATIAL, "MirrorTransform": MIRROR, "LiverCoverageTransform": MIRROR}
    try:
        loader.generate_train_batch()  # warm the page cache and the locations
        spent.clear()
        for _ in range(batches):
            t0 = time.perf_counter()
            batch = loader.generate_train_batch()
            t1 = time.perf_counter()
            spent["assembly"] += t1 - t0
            for transform in (transforms.transforms if transforms is not None else []):
                t2 = time.perf_counter()
                batch = transform(**batch)
                spent[groups.get(type(transform).__name__, INTENSITY)] += time.perf_counter() - t2
    finally:
        data_loader.load_case = original_load
    spent[OTHER] = spent.pop("assembly") - spent[READ] - spent[CROP] - spent[MASK]
    return {k: v / batches for k, v in spent.items()}, plan


def _per_worker(task: str, batches: int, on_device: bool = False) -> float:
    """Batches per second from a one-worker MultiThreadedAugmenter (after its queue is filled)."""
    from smoothseg.training.augmentation import make_augmenter

    _, loader, transforms = _loader(task, on_device=on_device)
    augmenter = make_augmenter(loader, transforms, 1, seed=0)
    try:
        next(augmenter)
        time.sleep(5)  # let the worker fill its queue: this is the steady state the network would see...
        for _ in range(3):
            next(augmenter)  # ...then drain the queued batches so the timing below is the worker's own rate
        t0 = time.perf_counter()
        for _ in range(batches):
            next(augmenter)
        return batches / (time.perf_counter() - t0)
    finally:
        augmenter._finish()


def _read_cost(work: Path, slices: int, patch=(32, 144, 160), repeats: int = 50) -> None:
    """Cutting one patch from a memory-mapped ``(1, slices, 512, 512)`` float32 case against reading it whole."""
    path = work / f"read_{slices}.npy"
    if not path.is_file():
        np.save(path, np.random.default_rng(0).normal(size=(1, slices, 512, 512)).astype(np.float32))
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(repeats):
        data = np.load(path, mmap_mode="r")
        start = [rng.integers(0, s - p + 1) for s, p in zip(data.shape[1:], patch, strict=True)]
        np.array(data[(slice(None), *(slice(a, a + p) for a, p in zip(start, patch, strict=True)))])
    cut = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    np.load(path)
    whole = time.perf_counter() - t0
    print(f"\nread cost, (1, {slices}, 512, 512) float32 case ({path.stat().st_size / 2**20:.0f} MB, page cache warm): "
          f"one {patch} patch memory-mapped {1000 * cut:.1f} ms; the whole case {1000 * whole:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="scratch folder (kept; --reuse times again on it)")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--gpu-memory-target", type=float, default=8.0)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--step-ms", type=float, default=52.0, help="GPU milliseconds per training step to feed")
    parser.add_argument("--tasks", nargs="*", default=["tumor", "liver"])
    parser.add_argument("--gpu-augmentation", action="store_true",
                        help="the workers of --gpu-augmentation on: source patches cut and masked, no transforms")
    parser.add_argument("--read-slices", type=int, default=0, help="also time cutting a patch from a memory-mapped "
                                                                    "512 x 512 x N case against reading it whole")
    parser.add_argument("--no-sdf", action="store_true", help="ignore the stored liver distances: a distance "
                                                               "transform per patch, as before preprocessing v4")
    args = parser.parse_args()
    if args.no_sdf:
        import smoothseg.training.data_loader as data_loader

        data_loader.load_liver_sdf = lambda folder, case_id: None  # inherited by the forked worker too

    work = Path(args.workdir)
    os.environ["SMOOTHSEG_HOME"] = str(work / "home")
    for var in ("SMOOTHSEG_RAW", "SMOOTHSEG_PREPROCESSED", "SMOOTHSEG_RESULTS"):
        os.environ.pop(var, None)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}")
    if args.read_slices:
        _read_cost(work, args.read_slices)
    if not args.tasks:
        return
    _prepare(work, args.gpu_memory_target, args.reuse)
    for task in args.tasks:
        split, plan = _split(task, args.batches, args.gpu_augmentation)
        total = sum(split.values())
        patches = plan.batch_size
        what = "worker side of --gpu-augmentation (source patches, no transforms)" if args.gpu_augmentation else \
            "batchgenerators in the worker" + (" (distance transform per patch)" if args.no_sdf else "")
        print(f"\n{task}: patch {tuple(plan.patch_size)}, batch {patches}, {args.batches} batches, one process; {what}")
        for part in (READ, CROP, MASK, OTHER, SPATIAL, INTENSITY, MIRROR):
            seconds = split.get(part, 0.0)
            print(f"  {part:22s} {1000 * seconds:8.1f} ms  ({100 * seconds / total:5.1f} %)")
        print(f"  {'total':22s} {1000 * total:8.1f} ms per batch = {patches / total:.1f} patches/s")
        rate = _per_worker(task, args.batches, args.gpu_augmentation) * patches
        needed = patches / (args.step_ms / 1000)
        print(f"  one worker process (MultiThreadedAugmenter): {rate:.1f} patches/s; a {args.step_ms:.0f} ms step "
              f"of {patches} patches needs {needed:.1f} patches/s: {math.ceil(needed / rate)} workers "
              f"(1.5x margin: {math.ceil(1.5 * needed / rate)})")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
