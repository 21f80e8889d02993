"""Helper of bench_scaling.py: time data-parallel training steps of the planned tumour network with ``world`` gloo
processes (started here with torch.multiprocessing). Prints "seconds_per_step batch_per_process"."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, steps: int, plans_path: str, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    from smoothseg.models.build import build_network
    from smoothseg.planning.plans import Plans
    from smoothseg.training.distributed import DistributedContext, wrap
    from smoothseg.training.losses import DiceCELoss

    plan = Plans.load(plans_path)["tumor"]
    torch.manual_seed(0)
    network = build_network(plan).train()
    model = wrap(network, DistributedContext(rank, rank, world), torch.device("cpu"))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(plan.num_classes)
    data = torch.randn(plan.batch_size, 1, *plan.patch_size)
    labels = torch.randint(0, plan.num_classes, (plan.batch_size, *plan.patch_size))
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        logits, vae = model(data)
        (loss_fn(logits, labels) + 0.1 * vae).backward()
        optimizer.step()
        if step:  # the first step warms up
            times.append(time.perf_counter() - started)
    if rank == 0:
        Path(out).write_text(f"{sum(times) / len(times)} {plan.batch_size}")
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    world, steps = int(sys.argv[1]), int(sys.argv[2])
    home = Path(os.environ["SMOOTHSEG_HOME"])
    plans_path = next((home / "preprocessed").glob("Dataset900_*/plans.json"))
    out = home / f"ddp_{world}.txt"
    mp.spawn(_worker, args=(world, steps, str(plans_path), str(out)), nprocs=world, join=True)
    print(out.read_text())


if __name__ == "__main__":
    main()
