"""Beyond one process, on this machine's CPU: cohort prediction serial vs on a local Dask cluster, and data-parallel
training steps with 1 vs 2 gloo processes.

* ``cohort``: the synthetic test cases (small phantoms) predicted by untrained models planned for them (networks of
  the planned width), serially (``-npp 1 -nps 1``, the default pools) and with ``--dask-workers 2``: cases per minute
  and the ratio.
* ``ddp``: seconds per training step of the tumour configuration with the planned batch per process, as one process
  and as 2 processes under ``torch.distributed`` (gloo), each with one torch thread per process; the effective batch
  doubles with 2 processes, so the figure to compare is samples per second.

Usage: ``python bench/bench_scaling.py [--cases 8] [--gpu-memory 1.25] [--steps 6]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _env(home: Path, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMOOTHSEG_")}
    env.update(SMOOTHSEG_HOME=str(home), OMP_NUM_THREADS=str(threads))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cohort(home: Path, cases: int, budget: float) -> list[str]:
    from smoothseg.models.build import write_untrained_models
    from smoothseg.planning.plans import Plans
    from smoothseg.synthetic.demo_dataset import make_demo_dataset
    from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess

    os.environ["SMOOTHSEG_HOME"] = str(home)
    raw = make_demo_dataset(n_cases=max(8, cases * 4 // 3), num_processes=2)
    result = plan_and_preprocess(900, num_processes=2, gpu_memory_target_gb=budget, preprocess=False)
    plans = Plans.load(result.folder / "plans.json")
    write_untrained_models(plans, home / "results" / result.folder.name)
    rows = []
    times = {}
    variants = (("serial (-npp 1 -nps 1)", ["-npp", "1", "-nps", "1"], 2),
                ("Dask, 2 workers", ["--dask-workers", "2"], 1))
    for name, flags, threads in variants:
        out = home / f"pred_{len(times)}"
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "smoothseg.cli.predict", "-i", str(raw / "imagesTs"), "-o",
                              str(out), "-d", "900", "-device", "cpu", "-q", *flags], env=_env(home, threads),
                             capture_output=True, text=True)
        seconds = time.perf_counter() - started
        n = json.loads((out / "summary.json").read_text())["n_ok"] if run.returncode == 0 else 0
        times[name] = seconds
        rows.append(f"| cohort: {name} | {n} cases | {seconds:.1f} s | {60 * n / seconds:.1f} cases/min |")
    ratio = times["serial (-npp 1 -nps 1)"] / times["Dask, 2 workers"]
    rows.append(f"| cohort: Dask / serial speed | | | {ratio:.2f}x |")
    return rows


def ddp(home: Path, steps: int) -> list[str]:
    script = Path(__file__).with_name("ddp_steps.py")
    rows = []
    for world in (1, 2):
        env = _env(home, 1)
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        run = subprocess.run([sys.executable, str(script), str(world), str(steps)], env=env, capture_output=True,
                             text=True)
        if run.returncode != 0:
            rows.append(f"| DDP, {world} process(es) | failed: {run.stderr[-300:]} | | |")
            continue
        seconds, batch = (float(v) for v in run.stdout.split())
        rows.append(f"| DDP training step, {world} process(es), batch {int(batch)} per process | | "
                    f"{seconds:.2f} s/step | {world * batch / seconds:.2f} samples/s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--gpu-memory", type=float, default=1.25)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="smoothseg-bench-scaling-"))
    rows = cohort(home, args.cases, args.gpu_memory)
    os.environ["SMOOTHSEG_BENCH_HOME"] = str(home)
    rows += ddp(home, args.steps)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; home {home}\n")
    print("| what | size | time | throughput |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
