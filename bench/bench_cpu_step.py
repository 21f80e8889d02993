"""The trainer's training step on the CPU, in several variants: the default layout, channels-last (what the trainer
uses on a CPU), ``torch.compile``, without the VAE branch.

Runs ``Trainer.train_step`` itself (AdamW, Dice + CE with the VAE and TLVR terms, gradient clipping) on augmented
batches of fold 0 of a preprocessed dataset, drawn before the clock starts, so only the step is timed. Prints the
first step (compilation included) and the median of the steps after 4 warm-up steps. Usage (each variant in its own
process, nothing else running; the roots as for ``smoothseg_train``, e.g. the demo's):
``python bench/bench_cpu_step.py -d 900 --task tumor --variant channels_last`` with ``--variant`` one of
``default``, ``channels_last``, ``compile``, ``channels_last_no_vae``, ``channels_last_bf16`` (bfloat16 autocast).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from smoothseg.training.config import TrainingConfig
from smoothseg.training.trainer import Trainer

VARIANTS = ("default", "channels_last", "compile", "channels_last_no_vae", "channels_last_bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", default="900", help="preprocessed dataset id or name (default: the demo's, 900)")
    parser.add_argument("--task", default="tumor", choices=("liver", "tumor"))
    parser.add_argument("--variant", default="channels_last", choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    config = TrainingConfig(dataset=args.d, task=args.task, fold="0", device="cpu", num_workers=0,
                            vae=not args.variant.endswith("no_vae"),
                            precision="bf16" if args.variant.endswith("bf16") else "auto")
    trainer = Trainer(config)  # channels-last on the CPU
    if not args.variant.startswith("channels_last"):
        trainer.memory_format = torch.contiguous_format
        trainer.network.to(memory_format=torch.contiguous_format)  # in place: the optimiser keeps its parameters
    trainer.model_for_training = torch.compile(trainer.network) if args.variant == "compile" else trainer.network
    loader = trainer._loader(trainer.train_ids, {}, seed=0, train=True)
    batches = [next(loader) for _ in range(args.steps + 4)]
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        seconds = time.perf_counter() - t0
        if i == 0:
            print(f"{args.variant} {args.task}: first step {seconds:.2f} s", flush=True)
        if i >= 4:
            times.append(seconds)
    print(f"{args.variant} {args.task}: {trainer.skipped_steps} of {len(batches)} steps skipped (gradient not finite)")
    print(f"{args.variant} {args.task}: median step {statistics.median(times):.3f} s over {len(times)} steps "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
