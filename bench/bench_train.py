"""Training throughput: network iterations per second against data-loader batches per second.

For one task of the synthetic demo dataset (planned with ``-gpu_memory_target``), it measures:

* compute: training steps per second on one fixed batch (forward, losses incl. VAE/TLVR, backward, optimizer step);
* loader: augmented batches per second from the multi-process augmenter, with no network;
* end to end: training steps per second fed by the augmenter.

The loader must outpace the network (ratio loader / compute above 1), or the GPU waits on augmentation.
Usage: ``python bench/bench_train.py --task tumor --iters 20 [--device auto] [--workers N] [--gpu-memory 8]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="tumor", choices=("liver", "tumor"))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="augmentation processes (default: CPU count - 1)")
    parser.add_argument("--gpu-memory", type=float, default=8.0, help="planner memory budget (GB)")
    parser.add_argument("--home", help="SMOOTHSEG_HOME to use (default: a temporary folder)")
    args = parser.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="smoothseg-bench-train-"))
    for var in ("SMOOTHSEG_RAW", "SMOOTHSEG_PREPROCESSED", "SMOOTHSEG_RESULTS"):
        os.environ.pop(var, None)
    os.environ["SMOOTHSEG_HOME"] = str(home)

    from smoothseg.synthetic.demo_dataset import make_demo_dataset
    from smoothseg.training.augmentation import default_num_workers
    from smoothseg.training.config import TrainingConfig
    from smoothseg.training.trainer import get_trainer_class
    from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess

    make_demo_dataset(n_cases=8, num_processes=2)
    plan_and_preprocess(900, num_processes=2, gpu_memory_target_gb=args.gpu_memory, overwrite_plans=True)
    workers = default_num_workers() if args.workers is None else args.workers
    config = TrainingConfig(dataset="900", task=args.task, fold="0", device=args.device, num_workers=workers,
                            epochs=1, iters_per_epoch=args.iters)
    trainer = get_trainer_class(config.trainer)(config)
    trainer.prepare_knowledge()
    trainer.model_for_training = trainer.network
    plan = trainer.plan
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {trainer.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if trainer.device.type == 'cuda' else ''}")
    print(f"task {args.task}: patch {plan.patch_size}, batch {plan.batch_size}, {plan.network.init_filters} filters, "
          f"AMP {trainer.amp}, {workers} augmentation worker(s)")

    augmenter = trainer._loader(trainer.train_ids, trainer.train_tlvr, seed=0, train=True)
    try:
        for _ in range(3):  # warm-up: workers start, caches fill, cuDNN picks kernels
            batch = next(augmenter)
            trainer.train_step(batch)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

        sync()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            trainer.train_step(batch)
        sync()
        compute = args.iters / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for _ in range(args.iters):
            next(augmenter)
        loader = args.iters / (time.perf_counter() - t0)

        sync()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            trainer.train_step(next(augmenter))
        sync()
        end_to_end = args.iters / (time.perf_counter() - t0)
    finally:
        if hasattr(augmenter, "_finish"):
            augmenter._finish()
    print(f"compute only:  {compute:8.2f} it/s")
    print(f"loader only:   {loader:8.2f} batches/s")
    print(f"end to end:    {end_to_end:8.2f} it/s")
    print(f"ratio loader / compute: {loader / compute:.2f} (above 1: the network never waits on augmentation)")


if __name__ == "__main__":
    main()
