"""Bad inputs and faults, tried as a new user would: every one ends in a clear message naming the file and the
problem, loses nothing, and leaves no process behind."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from inference_helpers import make_model_pair, shrink_plans

from smoothseg import errors
from smoothseg.atomic import TMP_PREFIX, ensure_writable_folder, remove_stale_temp
from smoothseg.dataset.io import Geometry, ct_input_warnings, read_image, write_image
from smoothseg.errors import SmoothSegError
from smoothseg.models.checkpoint import load_checkpoint, save_checkpoint
from smoothseg.training.config import TrainingConfig
from smoothseg.training.fold_guard import LOCK_NAME
from smoothseg.training.trainer import train
from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess

DATASET = "Dataset900_SyntheticLiver"


# ---------------------------------------------------------------------- 1. errors from worker processes


def test_every_smoothseg_error_survives_pickling() -> None:
    """A worker's error must reach the parent intact (an unpicklable one broke the whole pool)."""
    made = [errors.ImageReadError("/data/ct.nii.gz", "truncated"), errors.ImageWriteError("/o/x.nii.gz", "disk full"),
            errors.DatasetSchemaError("/d/dataset.json", "labels", "bad"), errors.DatasetNotFoundError("no '7'"),
            SmoothSegError("plain")]
    subclasses = {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, SmoothSegError)}
    assert subclasses == {type(e) for e in made}  # a new error type must be added here
    for error in made:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_planning_with_worker_processes_names_a_broken_case(demo_dataset: Path, data_home: Path) -> None:
    victim = sorted((demo_dataset / "imagesTr").iterdir())[1]
    _truncate(victim)
    result = run_cli("plan_and_preprocess", "-d", "900", "-np", "2", home=data_home)
    assert result.returncode == 2, result.stderr
    assert str(victim) in result.stderr and "Traceback" not in result.stderr
    assert "BrokenProcessPool" not in result.stderr
    assert not (data_home / "preprocessed" / DATASET).exists()  # nothing written for a dataset that fails


# ---------------------------------------------------------------------- 2 + 4. planning checks what it reads


def test_planning_reports_every_bad_label_at_once_and_writes_nothing(demo_dataset: Path, data_home: Path) -> None:
    labels = sorted((demo_dataset / "labelsTr").iterdir())
    shifted, undeclared, empty = labels[0], labels[1], labels[2]
    label, geometry = read_image(shifted)
    write_image(label, Geometry(geometry.spacing, tuple(o + 5.0 for o in geometry.origin), geometry.direction),
                shifted)
    label, geometry = read_image(undeclared)
    label[label == 3] = 7
    write_image(label, geometry, undeclared)
    label, geometry = read_image(empty)
    write_image(np.zeros_like(label), geometry, empty)
    with pytest.raises(SmoothSegError) as exc:
        plan_and_preprocess(900, num_processes=1)
    message = str(exc.value)
    assert "3 of 4 training case(s) cannot be planned" in message
    case = {p: p.name.replace(".nii.gz", "") for p in (shifted, undeclared, empty)}
    assert f"case {case[shifted]}: label" in message and "origin" in message
    assert f"case {case[undeclared]}:" in message and "[7]" in message
    assert f"case {case[empty]}:" in message and "no liver region" in message
    assert not (data_home / "preprocessed" / DATASET).exists()


# ---------------------------------------------------------------------- 3. a finished or busy fold is protected


@pytest.fixture
def tiny_plans(demo_dataset: Path, data_home: Path) -> Path:
    return shrink_plans(plan_and_preprocess(900).folder)


def _config(**kw) -> TrainingConfig:
    return TrainingConfig(**{**dict(dataset="900", task="liver", fold="0", device="cpu", epochs=1, iters_per_epoch=2,
                                    val_iters=1, num_workers=0, validate=False), **kw})


def test_a_finished_model_is_not_overwritten_silently(tiny_plans: Path, data_home: Path) -> None:
    fold = train(_config())
    final = fold / "checkpoint_final.pth"
    before = final.read_bytes()
    with pytest.raises(SmoothSegError, match=r"already holds a finished model.*--c.*--overwrite"):
        train(_config())
    assert final.read_bytes() == before
    (fold / "validation").mkdir()  # an output of the old run
    train(_config(overwrite=True))
    assert final.read_bytes() != before and not (fold / "validation").exists()
    with pytest.raises(SmoothSegError, match="choose one"):
        train(_config(overwrite=True, continue_training=True))


def test_a_fold_in_training_is_locked(tiny_plans: Path, data_home: Path) -> None:
    fold = data_home / "results" / DATASET / "SmoothSegTrainer__liver" / "fold_0"
    fold.mkdir(parents=True)
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": busy.pid, "host": socket.gethostname(), "started": "2026-11-30 10:00:00"}
        (fold / LOCK_NAME).write_text(json.dumps(lock))
        with pytest.raises(SmoothSegError, match=f"being trained by PID {busy.pid} on host"):
            train(_config())
    finally:
        busy.kill()
        busy.wait()
    # the holder is gone: its lock is taken over, and released after the run
    train(_config())
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / LOCK_NAME).exists()


# ---------------------------------------------------------------------- 5. write failures


def test_unusable_output_folders_fail_before_any_work(tmp_path: Path) -> None:
    regular = tmp_path / "a_file"
    regular.write_text("x")
    with pytest.raises(SmoothSegError, match="a file, not a folder"):
        ensure_writable_folder(regular)
    with pytest.raises(SmoothSegError, match="part of the path is a file"):
        ensure_writable_folder(regular / "out")
    with pytest.raises(SmoothSegError, match="not writable"):
        ensure_writable_folder(Path("/proc/smoothseg-out"))  # not writable, even for root


def test_predict_into_an_unusable_folder_fails_at_once_without_a_traceback(tmp_path: Path) -> None:
    make_model_pair(tmp_path / "home" / "results")
    image = tmp_path / "in" / "case_0000.nii.gz"
    write_image(np.zeros((16, 32, 32), np.int16), Geometry((1.0, 1.0, 2.0), (0, 0, 0)), image)
    regular = tmp_path / "a_file"
    regular.write_text("x")
    for target in (regular / "out", Path("/proc/smoothseg-out")):
        started = time.perf_counter()
        result = run_cli("predict", "-i", str(image.parent), "-o", str(target), "-device", "cpu",
                         home=tmp_path / "home")
        assert result.returncode == 2 and str(target) in result.stderr and "Traceback" not in result.stderr
        assert time.perf_counter() - started < 60


def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    save_checkpoint({"epoch": 1}, path)

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SmoothSegError) as exc:
        save_checkpoint({"epoch": 2}, path)
    assert str(path) in str(exc.value) and "is kept" in str(exc.value) and "--c" in str(exc.value)
    assert load_checkpoint(path)["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_stale_temp_folders_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{TMP_PREFIX}{int(dead.stdout)}-abc123"
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}-def456"
    stale.mkdir()
    live.mkdir()
    (stale / "checkpoint_latest.pth").write_bytes(b"partial")
    assert remove_stale_temp(tmp_path) == 1
    assert not stale.exists() and live.exists()


# ---------------------------------------------------------------------- 6. no orphans after kill -9


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = (task / "children")
            if children.exists():
                for child in children.read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_killing_training_leaves_no_worker_processes(tiny_plans: Path, data_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMOOTHSEG_")}
    env["SMOOTHSEG_HOME"] = str(data_home)
    proc = subprocess.Popen([sys.executable, "-m", "smoothseg.cli.train", "900", "liver", "0", "-device", "cpu",
                             "--epochs", "50", "--iters-per-epoch", "50", "--num-workers", "2", "--no-val"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2:
        workers = _descendants(proc.pid)
        time.sleep(0.2)
    assert len(workers) >= 2, "the augmentation workers never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and _alive(workers):
        time.sleep(0.2)
    assert not _alive(workers), f"orphaned workers: {_alive(workers)}"


# ---------------------------------------------------------------------- 7. inputs that will predict badly


def test_thin_and_8_bit_inputs_are_warned_about() -> None:
    assert ct_input_warnings(np.zeros((40, 64, 64), np.int16)) == []
    (thin,) = ct_input_warnings(np.zeros((1, 64, 64), np.int16))
    assert "only 1 voxel(s) along one axis" in thin
    (eight_bit,) = ct_input_warnings(np.zeros((40, 64, 64), np.int8))
    assert "int8 cannot hold CT numbers" in eight_bit


def test_predict_reports_input_warnings(tmp_path: Path) -> None:
    make_model_pair(tmp_path / "home" / "results")
    image = tmp_path / "in" / "slab_0000.nii.gz"
    write_image(np.full((3, 64, 64), 60, np.int8), Geometry((1.0, 1.0, 2.0), (0, 0, 0)), image)
    result = run_cli("predict", "-i", str(image.parent), "-o", str(tmp_path / "out"), "-device", "cpu",
                     "-npp", "0", "-nps", "0", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "only 3 voxel(s) along one axis" in result.stderr and "int8 cannot hold CT numbers" in result.stderr
    report = json.loads((tmp_path / "out" / "slab_report.json").read_text())
    assert len(report["input_warnings"]) == 2


class _NotJustTensors:
    pass


def test_a_checkpoint_with_code_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"network_state": {}, "extra": _NotJustTensors()}, path)
    with pytest.raises(SmoothSegError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert str(path) in message and "refused" in message and "smoothseg_export_model" in message
    assert "weights_only=False" not in message and message.rstrip().endswith("author")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SmoothSegError, match="damaged or not a checkpoint") as exc:
        load_checkpoint(garbage)
    assert "\n" not in str(exc.value) and "weights_only" not in str(exc.value)
