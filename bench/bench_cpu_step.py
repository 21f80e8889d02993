"""One training step of a planned network on the CPU, in several variants: the default layout, channels-last,
``torch.compile``, without the VAE branch.

The step is the trainer's: AdamW, Dice + CE with the VAE and TLVR terms, gradient clipping, on random batches of the
plan's batch and patch size. Prints the first step (compilation included) and the median of the steps after 4
warm-up steps. Usage (each variant in its own process, nothing else running):
``python bench/bench_cpu_step.py PLANS.json --task tumor --variant channels_last`` with ``--variant`` one of
``default``, ``channels_last``, ``compile``, ``channels_last_no_vae``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from smoothseg.models.build import build_network
from smoothseg.planning.plans import Plans
from smoothseg.training.config import TrainingConfig
from smoothseg.training.losses import DiceCELoss, SmoothSegLoss
from smoothseg.training.optim import build_optimizer

VARIANTS = ("default", "channels_last", "compile", "channels_last_no_vae")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plans", help="plans.json (e.g. the demo's, <preprocessed>/Dataset900_SyntheticLiver/)")
    parser.add_argument("--task", default="tumor", choices=("liver", "tumor"))
    parser.add_argument("--variant", default="default", choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    cfg = Plans.load(args.plans)[args.task]
    channels_last = args.variant.startswith("channels_last")
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    network = build_network(cfg, vae=not args.variant.endswith("no_vae")).train().to(memory_format=fmt)
    optimizer = build_optimizer(network.parameters(), TrainingConfig(dataset="900", task=args.task, fold="0"))
    forward = torch.compile(network) if args.variant == "compile" else network
    loss_fn = SmoothSegLoss(DiceCELoss(cfg.num_classes), vae_weight=0.1,
                            tlvr_weight=0.5 if args.task == "tumor" else 0.0)
    generator = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps + 4):
        data = torch.randn((cfg.batch_size, 1, *cfg.patch_size), generator=generator).contiguous(memory_format=fmt)
        seg = torch.randint(0, cfg.num_classes, (cfg.batch_size, *cfg.patch_size), generator=generator)
        tlvr = torch.full((cfg.batch_size,), 0.1)
        coverage = torch.full((cfg.batch_size,), 0.5)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        output = forward(data)
        logits, vae_loss = output if isinstance(output, tuple) else (output, None)
        vae_loss = vae_loss if vae_loss is not None else torch.zeros(())
        total, _ = loss_fn(logits, seg, vae_loss=vae_loss, clinical_tlvr=tlvr, liver_coverage=coverage,
                           case_tlvr=tlvr.clone())
        total.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        seconds = time.perf_counter() - t0
        if i == 0:
            print(f"{args.variant} {args.task}: first step {seconds:.2f} s", flush=True)
        if i >= 4:
            times.append(seconds)
    print(f"{args.variant} {args.task}: median step {statistics.median(times):.3f} s over {len(times)} steps "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
