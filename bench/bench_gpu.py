"""GPU check of the planner: peak memory of planned training steps against the estimate, AMP step time, and
sliding-window inference speed, for plans made from full-size phantoms at several GPU-memory budgets.

Two steps, because the GPU machine may lack the I/O dependencies (SimpleITK) that planning from images needs:

1. ``python bench/bench_gpu.py plans --out DIR`` (any machine, CPU): three ``--size full`` phantoms (512 x 512 x
   ~100), their fingerprint, and the real planner's plans at each ``--budgets`` value, written as
   ``DIR/plans_<GB>.json``.
2. ``python bench/bench_gpu.py measure --plans DIR`` (on the GPU): for each budget and stage, the planned
   SegResNetVAE (VAE branch on) with the trainer's optimiser (AdamW), loss (Dice + CE, VAE term, TLVR term) and
   float16 autocast with a gradient scaler, on random batches of the planned batch and patch size with all three
   labels present. Reports the peak of ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` over the steps
   against the planner's ``estimated_memory_gb``, and the median step time. Then, per stage, sliding-window
   inference over a volume of the plan's median shape (the whole CT at the liver spacing; the liver crop at the
   tumour spacing) with TTA off and on (the plan's mirror axes), the plan's batch size, and the time per case.

Only the network step is measured there. 3. ``python bench/bench_gpu.py augment --plans DIR`` (on the GPU) times the
device augmentation of ``--gpu-augmentation`` (``DeviceAugmenter``) per batch of the 8 GB plans, on random source
patches with a liver-shaped label, so that with the workers' share (``bench/bench_loader.py --gpu-augmentation``,
patches per second per worker on the CPU) the training step's data side is known without preprocessed data on the GPU
machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def make_plans(out: Path, budgets: list[float]) -> None:
    import tempfile

    from smoothseg.paths import using_roots
    from smoothseg.planning.planner import plan
    from smoothseg.synthetic.demo_dataset import make_demo_dataset
    from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, using_roots(Path(tmp, "raw"), Path(tmp, "pre"), Path(tmp, "res")):
        make_demo_dataset(n_cases=3, seed=7, size="full", num_processes=2)
        result = plan_and_preprocess(900, preprocess=False, overwrite_plans=True)
        fingerprint = json.loads((result.folder / "fingerprint.json").read_text())
    for gb in budgets:
        plans = plan(fingerprint, gpu_memory_target_gb=gb)
        path = plans.save(out / f"plans_{gb:g}.json")
        for task in ("liver", "tumor"):
            cfg = plans[task]
            print(f"{gb:>4g} GB {task:5s}: patch {cfg.patch_size}, batch {cfg.batch_size}, "
                  f"{cfg.network.init_filters} filters, estimate {cfg.estimated_memory_gb:.2f} GB -> {path.name}")


def _batch(cfg, device, generator):
    import torch

    shape = (cfg.batch_size, 1, *cfg.patch_size)
    data = torch.randn(shape, device=device, generator=generator)
    seg = torch.randint(0, cfg.num_classes, (cfg.batch_size, *cfg.patch_size), device=device, generator=generator)
    tlvr = torch.full((cfg.batch_size,), 0.1, device=device)
    coverage = torch.full((cfg.batch_size,), 0.5, device=device)
    return data, seg, tlvr, coverage, tlvr.clone()


def measure_training(cfg, device, steps: int, amp: bool = True) -> dict:
    """Peak memory and step time of ``steps`` training steps (after 2 warm-up steps) of the planned network, under
    float16 autocast with a gradient scaler (as the trainer on CUDA) or in float32 (``amp=False``)."""
    import torch

    from smoothseg.models.build import build_network
    from smoothseg.training.config import TrainingConfig
    from smoothseg.training.losses import DiceCELoss, SmoothSegLoss
    from smoothseg.training.optim import build_optimizer

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    network = build_network(cfg).to(device).train()
    config = TrainingConfig(dataset="900", task=cfg.name, fold="0")
    optimizer = build_optimizer(network.parameters(), config)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    tlvr_weight = 0.5 if cfg.name == "tumor" else 0.0  # the liver model has no TLVR term
    loss_fn = SmoothSegLoss(DiceCELoss(cfg.num_classes), vae_weight=0.1, tlvr_weight=tlvr_weight)
    generator = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(steps + 2):
        data, seg, tlvr, coverage, case_tlvr = _batch(cfg, device, generator)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            logits, vae_loss = network(data)
        total, _ = loss_fn(logits.float(), seg, vae_loss=vae_loss.float(), clinical_tlvr=tlvr,
                           liver_coverage=coverage, case_tlvr=case_tlvr)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    result = {"peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9,
              "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9,
              "step_s": statistics.median(times),
              "parameters": sum(p.numel() for p in network.parameters())}
    del network, optimizer
    torch.cuda.empty_cache()
    return result


def measure_inference(cfg, device, tta: bool) -> dict:
    """Seconds for a sliding window over a volume of the plan's median shape (after one warm-up tile batch)."""
    import torch

    from smoothseg.inference.sliding_window import sliding_window_predict
    from smoothseg.models.build import build_network

    network = build_network(cfg).to(device).eval()
    shape = [max(int(m), int(p)) for m, p in zip(cfg.median_shape, cfg.patch_size, strict=True)]
    image = torch.randn((1, *shape))
    mirror = tuple(cfg.mirror_axes) if tta else ()
    sliding_window_predict(network, torch.randn((1, *cfg.patch_size)), cfg.patch_size, cfg.num_classes,
                           batch_size=cfg.batch_size, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    sliding_window_predict(network, image, cfg.patch_size, cfg.num_classes, batch_size=cfg.batch_size,
                           mirror_axes=mirror, device=device, autocast_dtype=torch.float16)
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    result = {"shape": shape, "tta_axes": list(mirror), "seconds": seconds,
              "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9}
    del network
    torch.cuda.empty_cache()
    return result


def measure(plans_dir: Path, out: Path | None, steps: int) -> None:
    import torch

    from smoothseg.planning.plans import Plans

    device = torch.device("cuda")
    header = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "host": platform.node()}
    print(json.dumps(header), flush=True)
    rows = []
    for path in sorted(plans_dir.glob("plans_*.json"), key=lambda p: float(p.stem.split("_")[1])):
        plans = Plans.load(path)
        for task in ("liver", "tumor"):
            cfg = plans[task]
            row = {"budget_gb": plans.gpu_memory_target_gb, "task": task, "patch": list(cfg.patch_size),
                   "batch": cfg.batch_size, "filters": cfg.network.init_filters,
                   "estimate_gb": cfg.estimated_memory_gb, **measure_training(cfg, device, steps)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    eight_gb = plans_dir / "plans_8.json"
    if eight_gb.exists():
        cfg = Plans.load(eight_gb)["tumor"]
        row = {"budget_gb": 8, "task": "tumor", "amp": False, **measure_training(cfg, device, steps, amp=False)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    inference = []
    eight = next((p for p in plans_dir.glob("plans_8.json")), None)
    if eight is not None:
        plans = Plans.load(eight)
        for task in ("liver", "tumor"):
            for tta in (False, True):
                row = {"budget_gb": 8, "task": task, **measure_inference(plans[task], device, tta)}
                print(json.dumps(row), flush=True)
                inference.append(row)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.json").write_text(json.dumps({**header, "training": rows, "inference": inference},
                                                       indent=1))


def measure_augmentation(plans_dir: Path, batches: int = 30) -> None:
    """Milliseconds per batch of ``DeviceAugmenter`` on CUDA at the 8 GB plans (median over ``batches``)."""
    import numpy as np
    import torch

    from smoothseg.planning.plans import Plans
    from smoothseg.preprocessing.normalization import outside_fill_value
    from smoothseg.training.gpu_augmentation import DeviceAugmenter, training_ranges

    device = torch.device("cuda")
    plans = Plans.load(plans_dir / "plans_8.json")
    for task in ("liver", "tumor"):
        cfg = plans[task]
        augmenter = DeviceAugmenter(training_ranges(cfg.patch_size, cfg.mirror_axes), outside_fill_value(cfg), seed=0)
        source = augmenter.source_size
        rng = np.random.default_rng(0)
        seg = np.zeros((cfg.batch_size, 1, *source), dtype=np.int16)
        centre = [s // 2 for s in source]
        seg[(slice(None), 0, *(slice(c - s // 4, c + s // 4) for c, s in zip(centre, source, strict=True)))] = 1
        batch = {"data": rng.normal(size=(cfg.batch_size, 1, *source)).astype(np.float32), "seg": seg,
                 "liver_voxels": np.full(cfg.batch_size, 1e6, np.float32)}
        times = []
        for i in range(batches + 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = augmenter(batch, device)
            torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        print(json.dumps({"task": task, "patch": list(cfg.patch_size), "source": list(source),
                          "batch": cfg.batch_size, "ms_per_batch_incl_host_to_device": 1000 * statistics.median(times),
                          "out": list(out["data"].shape)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plans", help="plans for full-size phantoms at several budgets (CPU)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budgets", type=float, nargs="+", default=[4, 8, 16, 24, 40])
    m = sub.add_parser("measure", help="peak memory, step and inference time on the GPU")
    m.add_argument("--plans", type=Path, required=True)
    m.add_argument("--out", type=Path, default=None)
    m.add_argument("--steps", type=int, default=8)
    a = sub.add_parser("augment", help="device augmentation per batch at the 8 GB plans, on the GPU")
    a.add_argument("--plans", type=Path, required=True)
    a.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    if args.command == "plans":
        make_plans(args.out, args.budgets)
    elif args.command == "augment":
        measure_augmentation(args.plans, args.batches)
    else:
        measure(args.plans, args.out, args.steps)


if __name__ == "__main__":
    main()
