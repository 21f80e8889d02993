"""Worker functions for the data-parallel tests (``torch.multiprocessing.spawn`` imports them by module name)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.distributed as dist

from smoothseg.network.segresnet_vae import SegResNetVAE
from smoothseg.training.distributed import DistributedContext, wrap
from smoothseg.training.losses import DiceCELoss

BATCH, SHAPE = 4, (16, 16, 16)


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    data = torch.randn(BATCH, 1, *SHAPE, generator=generator)
    labels = torch.randint(0, 3, (BATCH, *SHAPE), generator=generator)
    return data, labels


def tiny_network() -> SegResNetVAE:
    torch.manual_seed(0)
    return SegResNetVAE(1, 3, SHAPE, init_filters=4, vae=False).train()


def loss_fn() -> DiceCELoss:
    return DiceCELoss(3, batch_dice=False)  # a mean over samples: the mean of the halves' losses is the whole's


def gradient_worker(rank: int, world: int, port: int, out: str) -> None:
    """Each rank takes its half of the batch through DDP; saves its averaged gradient and, after 3 SGD steps, its
    weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        network = tiny_network()
        model = wrap(network, DistributedContext(rank, rank, world), torch.device("cpu"))
        data, labels = fixed_batch()
        half = BATCH // world
        mine = slice(rank * half, (rank + 1) * half)
        logits, _ = model(data[mine])
        loss_fn()(logits, labels[mine]).backward()
        torch.save({n: p.grad.clone() for n, p in network.named_parameters()}, Path(out) / f"grad{rank}.pt")
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        for step in range(3):
            optimizer.zero_grad()
            generator = torch.Generator().manual_seed(100 + 10 * step + rank)  # each rank its own data
            logits, _ = model(torch.randn(half, 1, *SHAPE, generator=generator))
            loss_fn()(logits, torch.randint(0, 3, (half, *SHAPE), generator=generator)).backward()
            optimizer.step()
        torch.save(network.state_dict(), Path(out) / f"weights{rank}.pt")
    finally:
        dist.destroy_process_group()


def trainer_worker(rank: int, world: int, port: int, home: str, out: str) -> None:
    """One rank of a ``torchrun``-like job running the real trainer; writes a hash of its final weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), SMOOTHSEG_HOME=home)
    for var in ("SMOOTHSEG_RAW", "SMOOTHSEG_PREPROCESSED", "SMOOTHSEG_RESULTS"):
        os.environ.pop(var, None)
    torch.set_num_threads(1)
    from smoothseg.training.config import TrainingConfig
    from smoothseg.training.trainer import SmoothSegTrainer

    trainer = SmoothSegTrainer(TrainingConfig(dataset="900", task="tumor", fold="0", device="cpu", epochs=2,
                                              iters_per_epoch=2, val_iters=1, num_workers=0, validate=False))
    trainer.run()
    digest = hashlib.sha256()
    for name, value in sorted(trainer.network.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    (Path(out) / f"rank{rank}.txt").write_text(f"{digest.hexdigest()} {len(trainer.train_tlvr)} "
                                              f"{sorted(trainer.train_tlvr.items())}")
