"""nnU-Net v2 as a side-by-side yardstick for the benchmarks, driven only through its own virtual environment.

nnunetv2 is never imported here nor a dependency of smoothseg: its command-line tools and, for the one thing they
cannot do (an untrained model folder), a short script run with that environment's Python, are child processes.

* ``measure``: wall time and peak RSS of a command (the largest single process of its tree, ``RUSAGE_CHILDREN``);
* ``NnUNetWorkspace``: the ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` folders in a scratch
  folder, the copy of a smoothseg raw dataset into them (the raw layout is nnU-Net v2's, so the conversion is a copy),
  ``nnUNetv2_plan_and_preprocess``, an untrained ``3d_fullres`` fold-0 model folder, the plan, and a timed
  ``nnUNetv2_predict`` on one image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

# Runs the command as its child, its output to a log file: wall time and the largest resident set of any process of
# the tree that was waited for (ru_maxrss of RUSAGE_CHILDREN is a maximum over processes, not a sum).
MEASURE = """
import resource, subprocess, sys, time
with open(sys.argv[1], "w") as log:
    t0 = time.perf_counter()
    code = subprocess.run(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT).returncode
    elapsed = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{elapsed:.3f} {peak_mb:.1f} {code}")
"""

# Run with the nnU-Net environment's Python: nnU-Net's own trainer for (dataset, configuration, fold) on the CPU,
# initialised (network built from the plans, random weights) and saved with its own save_checkpoint as
# checkpoint_final.pth, next to the plans.json and dataset.json that the predictor reads from the model folder (the
# trainer writes those two at the start of training). The mirroring axes for TTA are recorded in the checkpoint only
# once the trainer has configured its augmentation, so that is done first. Prints the model folder last.
UNTRAINED_MODEL = """
import json, os, sys
import torch
from nnunetv2.run.run_training import get_trainer_from_args

dataset, configuration, fold = sys.argv[1], sys.argv[2], int(sys.argv[3])
trainer = get_trainer_from_args(dataset, configuration, fold, device=torch.device("cpu"))
trainer.initialize()
trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
for name, content in (("plans.json", trainer.plans_manager.plans), ("dataset.json", trainer.dataset_json)):
    with open(os.path.join(trainer.output_folder_base, name), "w") as f:
        json.dump(content, f, indent=2)
trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
print(trainer.output_folder_base)
"""


def measure(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of ``cmd`` run as a child process; its stdout and stderr go to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(log), *cmd], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"measuring {cmd[0]} failed:\n{out.stderr[-3000:]}")
    elapsed, peak, code = out.stdout.split()
    if int(code):
        raise SystemExit(f"{cmd[0]} failed (log {log}):\n{log.read_text(errors='replace')[-3000:]}")
    return float(elapsed), float(peak)


class NnUNetWorkspace:
    """nnU-Net v2's three folders under ``root``, and its tools from the virtual environment ``venv``."""

    configuration = "3d_fullres"
    plans_name = "nnUNetPlans"
    trainer = "nnUNetTrainer"

    def __init__(self, venv: Path, root: Path, base_env: dict[str, str]):
        self.venv = Path(venv)
        self.root = Path(root)
        self.raw, self.preprocessed, self.results = (self.root / name for name in ("raw", "preprocessed", "results"))
        self.logs = self.root / "logs"
        self.env = dict(base_env)
        self.env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                        nnUNet_results=str(self.results))
        if not (self.venv / "bin" / "nnUNetv2_predict").is_file():
            raise SystemExit(f"{self.venv} has no nnUNetv2_predict: not a virtual environment with nnunetv2")

    def tool(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def import_raw(self, dataset_folder: Path) -> str:
        """Copy a smoothseg raw dataset folder (already in nnU-Net v2's layout) into ``nnUNet_raw``, and forget any
        earlier preprocessing of it; returns the dataset's folder name."""
        dataset_folder = Path(dataset_folder)
        self.raw.mkdir(parents=True, exist_ok=True)
        shutil.copytree(dataset_folder, self.raw / dataset_folder.name, dirs_exist_ok=True)
        shutil.rmtree(self.preprocessed / dataset_folder.name, ignore_errors=True)
        return dataset_folder.name

    def plan_and_preprocess(self, dataset_id: int, processes: int = 1,
                            gpu_memory_target_gb: float | None = None) -> tuple[float, float]:
        """Timed ``nnUNetv2_plan_and_preprocess`` of ``3d_fullres`` only: (seconds, peak RSS in MB)."""
        cmd = [self.tool("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", self.configuration,
               "-np", str(processes), "-npfp", str(processes), "--no_pbar"]
        if gpu_memory_target_gb is not None:
            cmd += ["-gpu_memory_target", str(gpu_memory_target_gb)]
        return measure(cmd, self.env, self.logs / "plan_and_preprocess.log")

    def plan(self, dataset_name: str) -> dict:
        """The ``3d_fullres`` configuration of the plans, and the plans' axis order (``transpose_forward``)."""
        plans = json.loads((self.preprocessed / dataset_name / f"{self.plans_name}.json").read_text())
        config = dict(plans["configurations"][self.configuration])
        config["transpose_forward"] = plans.get("transpose_forward")
        return config

    def describe_plan(self, dataset_name: str) -> str:
        config = self.plan(dataset_name)
        arch = config.get("architecture", {}).get("arch_kwargs", {})
        features = arch.get("features_per_stage", [])
        text = (f"spacing {_fmt(config['spacing'])} mm, patch {config['patch_size']}, batch {config['batch_size']}, "
                f"{arch.get('n_stages', '?')} stages of {features[0] if features else '?'}"
                f"-{features[-1] if features else '?'} features, median shape "
                f"{config.get('median_image_size_in_voxels')}")
        if config["transpose_forward"] not in (None, [0, 1, 2]):
            text += f", axes transposed {config['transpose_forward']}"
        return text

    def write_untrained_model(self, dataset_id: int, fold: int = 0) -> Path:
        """A model folder with an untrained ``checkpoint_final.pth`` for ``fold`` (prediction time and memory do not
        depend on the weights); needs the plans and the preprocessed data. Returns the model folder."""
        log = self.logs / "untrained_model.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([str(self.venv / "bin" / "python"), "-c", UNTRAINED_MODEL, str(dataset_id),
                              self.configuration, str(fold)], capture_output=True, text=True, env=self.env)
        log.write_text(out.stdout + out.stderr)
        if out.returncode:
            raise SystemExit(f"writing the untrained nnU-Net model failed (log {log}):\n{out.stderr[-3000:]}")
        return Path(out.stdout.strip().splitlines()[-1])

    def predict(self, image: Path, dataset_id: int, tta: bool, threads: int, tag: str, fold: int = 0
                ) -> tuple[float, float]:
        """Timed ``nnUNetv2_predict`` of one image on the CPU with one preprocessing and one export process: (seconds,
        peak RSS in MB). ``image`` must be named ``CASE_0000.<ending>``. nnU-Net sets torch's thread count to the
        CPU count and runs the network on min(that, nnUNet_def_n_proc) threads; nnUNet_def_n_proc is set to
        ``threads`` so its network, like the export's resampling, uses ``threads``."""
        folder_in, folder_out = self.root / "predict_in", self.root / f"predict_out_{tag}"
        shutil.rmtree(folder_in, ignore_errors=True)
        shutil.rmtree(folder_out, ignore_errors=True)
        folder_in.mkdir(parents=True)
        shutil.copy2(image, folder_in / Path(image).name)
        cmd = [self.tool("nnUNetv2_predict"), "-i", str(folder_in), "-o", str(folder_out), "-d", str(dataset_id),
               "-c", self.configuration, "-f", str(fold), "-chk", "checkpoint_final.pth", "-device", "cpu",
               "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        if not tta:
            cmd.append("--disable_tta")
        env = dict(self.env, nnUNet_def_n_proc=str(threads))
        result = measure(cmd, env, self.logs / f"predict_{tag}.log")
        if not any(folder_out.glob("*.nii.gz")):
            raise SystemExit(f"nnUNetv2_predict wrote no segmentation into {folder_out} (log {self.logs})")
        return result


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"

