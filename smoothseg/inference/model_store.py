"""Trained models on disk: finding the liver + tumour model pair to predict with, and moving it between machines.

This module owns the layout that training writes under the results root,
``<results>/DatasetXXX_Name/<Trainer>__<task>/fold_k/<checkpoint>``, and everything that reads it without running a
network:

* :func:`select_models` picks the dataset, trainer, checkpoint and folds of a :class:`ModelPair` (one liver and one
  tumour configuration), with errors that list what exists;
* :func:`export_models` writes a pair as one zip (checkpoints, ``plans.json`` per configuration and a
  ``manifest.json`` with checksums); :func:`install_models` validates such a zip (manifest, checksums, safe paths,
  checkpoints that load with ``weights_only=True``) and installs it under a results root;
* :func:`raw_plans` finds the plans dictionary as written on disk (it may hold keys that the typed plans do not model,
  such as ``"active_contour"``);
* :func:`write_untrained_models` writes freshly initialised checkpoints for given plans (benchmarks, smoke tests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from smoothseg.atomic import atomic_path, write_json
from smoothseg.errors import DatasetNotFoundError, SmoothSegError
from smoothseg.paths import find_dataset, preprocessed_root, results_root
from smoothseg.planning.plans import TASKS, Plans

logger = logging.getLogger(__name__)

DEFAULT_TRAINER = "SmoothSegTrainer"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
MANIFEST_NAME = "manifest.json"
EXPORT_FORMAT = "smoothseg.model_export/1"
#: Per-fold files copied into an export besides the checkpoint, when present.
EXTRA_FOLD_FILES = ("run_config.json", "postprocessing.json")

_DATASET_RE = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")
_FOLD_RE = re.compile(r"^fold_(.+)$")


@dataclass(frozen=True)
class ModelPair:
    """A liver and a tumour model: which dataset folder, trainer, checkpoint file and folds (per task)."""

    dataset_folder: Path
    trainer: str = DEFAULT_TRAINER
    checkpoint: str = DEFAULT_CHECKPOINT
    folds: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return self.dataset_folder.name

    def task_folder(self, task: str) -> Path:
        return self.dataset_folder / f"{self.trainer}__{task}"

    def checkpoints(self, task: str) -> list[Path]:
        return [self.task_folder(task) / f"fold_{f}" / self.checkpoint for f in self.folds[task]]

    def describe(self) -> str:
        folds = "; ".join(f"{task} folds {', '.join(self.folds[task])}" for task in TASKS if task in self.folds)
        return f"{self.dataset} / {self.trainer} / {self.checkpoint} ({folds})"

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "trainer": self.trainer, "checkpoint": self.checkpoint,
                "folds": {task: list(folds) for task, folds in self.folds.items()}}


def _fold_key(fold: str) -> tuple[int, int, str]:
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def available_folds(task_folder: Path, checkpoint: str = DEFAULT_CHECKPOINT) -> list[str]:
    """Folds (``"0"``, ``"1"``, ..., ``"all"``) under ``task_folder`` that hold ``checkpoint``, sorted."""
    if not task_folder.is_dir():
        return []
    folds = [m.group(1) for p in task_folder.iterdir() if (m := _FOLD_RE.match(p.name)) and (p / checkpoint).is_file()]
    return sorted(folds, key=_fold_key)


def _dataset_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _DATASET_RE.match(p.name))


def describe_results(root: Path | None = None, checkpoint: str = DEFAULT_CHECKPOINT) -> str:
    """One line per dataset under the results root, naming its trained configurations and their folds."""
    root = Path(root) if root is not None else results_root()
    lines = []
    for folder in _dataset_folders(root):
        configs = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and "__" in p.name):
            folds = available_folds(sub, checkpoint)
            configs.append(f"{sub.name} ({'folds ' + ', '.join(folds) if folds else f'no {checkpoint}'})")
        lines.append(f"  {folder.name}: {', '.join(configs) if configs else 'no trained configurations'}")
    return "\n".join(lines) if lines else f"  (no DatasetXXX_Name folders under {root})"


def trained_datasets(root: Path | None = None, trainer: str = DEFAULT_TRAINER,
                     checkpoint: str = DEFAULT_CHECKPOINT) -> list[Path]:
    """Dataset folders under the results root with ``checkpoint`` for both the liver and the tumour model."""
    root = Path(root) if root is not None else results_root()
    return [folder for folder in _dataset_folders(root)
            if all(available_folds(folder / f"{trainer}__{task}", checkpoint) for task in TASKS)]


def select_models(dataset: str | int | None = None, folds: list[str] | tuple[str, ...] | None = None,
                  checkpoint: str = DEFAULT_CHECKPOINT, trainer: str = DEFAULT_TRAINER,
                  root: Path | None = None) -> ModelPair:
    """The model pair to predict with.

    Without ``dataset``, the one dataset under the results root that has trained liver and tumour models for
    ``trainer`` and ``checkpoint`` is used; none or several is a :class:`SmoothSegError` that lists what exists.
    ``folds`` defaults, per task, to every fold that holds ``checkpoint``; given folds must exist for both tasks.
    """
    root = Path(root) if root is not None else results_root()
    if dataset is None:
        candidates = trained_datasets(root, trainer, checkpoint)
        if len(candidates) != 1:
            problem = "no dataset" if not candidates else f"{len(candidates)} datasets"
            raise SmoothSegError(
                f"{problem} under {root} {'has' if not candidates else 'have'} trained liver and tumor models "
                f"({trainer}, {checkpoint}); choose one with -d. Found:\n{describe_results(root, checkpoint)}")
        folder = candidates[0]
    else:
        try:
            folder = find_dataset(dataset, root)
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(f"{exc}. Trained models found:\n{describe_results(root, checkpoint)}") from None
    chosen: dict[str, tuple[str, ...]] = {}
    for task in TASKS:
        task_folder = folder / f"{trainer}__{task}"
        present = available_folds(task_folder, checkpoint)
        if not present:
            raise SmoothSegError(f"{task_folder}: no trained {task} model (no fold_*/{checkpoint}). Found:\n"
                                 f"{describe_results(root, checkpoint)}")
        if folds:
            missing = [str(f) for f in folds if str(f) not in present]
            if missing:
                raise SmoothSegError(f"{task_folder}: fold(s) {', '.join(missing)} have no {checkpoint}; "
                                     f"available: {', '.join(present)}")
            chosen[task] = tuple(str(f) for f in folds)
        else:
            chosen[task] = tuple(present)
    pair = ModelPair(folder, trainer, checkpoint, chosen)
    logger.info("models: %s", pair.describe())
    return pair


# ------------------------------------------------------------------------------------------------------------------
# plans as written on disk
# ------------------------------------------------------------------------------------------------------------------

def raw_plans(pair: ModelPair, task: str = "tumor") -> dict[str, Any] | None:
    """The plans dictionary as written on disk, for keys the typed plans do not model (``"active_contour"``).

    Looked up in ``<Trainer>__<task>/plans.json`` (written by :func:`install_models`, or by training), then in the
    preprocessed dataset's ``plans.json``. None when neither exists.
    """
    candidates = [pair.task_folder(task) / "plans.json"]
    try:
        candidates.append(find_dataset(pair.dataset, preprocessed_root()) / "plans.json")
    except DatasetNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise SmoothSegError(f"{path}: not valid JSON ({exc})") from None
            logger.debug("raw plans from %s", path)
            return data
    return None


# ------------------------------------------------------------------------------------------------------------------
# export / install
# ------------------------------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plans_for_export(pair: ModelPair, task: str) -> dict[str, Any]:
    """The plans to ship with a configuration: the on-disk plans.json, else the plans inside its first checkpoint."""
    from smoothseg.training.checkpoint import load_checkpoint

    data = raw_plans(pair, task)
    if data is not None:
        return data
    return load_checkpoint(pair.checkpoints(task)[0])["plans"]


def export_models(dataset: str | int | None, output: str | Path, folds: list[str] | None = None,
                  trainer: str = DEFAULT_TRAINER, checkpoint: str = DEFAULT_CHECKPOINT,
                  root: Path | None = None) -> Path:
    """Write a trained liver + tumour pair as one zip: checkpoints, plans.json per configuration, manifest.json.

    Paths inside the zip mirror the results root (``DatasetXXX_Name/<Trainer>__<task>/fold_k/<checkpoint>``), so
    :func:`install_models` can put them back under any results root. The zip is written atomically.
    """
    from smoothseg import __version__

    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise SmoothSegError(f"{output}: the export file name must end in .zip")
    pair = select_models(dataset, folds, checkpoint, trainer, root)
    files: dict[str, Path] = {}
    for task in TASKS:
        base = PurePosixPath(pair.dataset, f"{trainer}__{task}")
        for fold, ckpt in zip(pair.folds[task], pair.checkpoints(task), strict=True):
            files[str(base / f"fold_{fold}" / checkpoint)] = ckpt
            for extra in EXTRA_FOLD_FILES:
                if (ckpt.parent / extra).is_file():
                    files[str(base / f"fold_{fold}" / extra)] = ckpt.parent / extra
    plans_text = {str(PurePosixPath(pair.dataset, f"{trainer}__{task}", "plans.json")):
                  json.dumps(_plans_for_export(pair, task), indent=2) + "\n" for task in TASKS}
    manifest = {
        "format": EXPORT_FORMAT,
        "smoothseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **pair.to_dict(),
        "files": {name: {"sha256": _sha256(path), "bytes": path.stat().st_size} for name, path in files.items()},
    }
    manifest["files"].update({name: {"sha256": hashlib.sha256(text.encode()).hexdigest(),
                                     "bytes": len(text.encode())} for name, text in plans_text.items()})
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
        for name, text in plans_text.items():
            zf.writestr(name, text)
        for name, path in files.items():
            zf.write(path, name)
    logger.info("exported %s to %s (%d files)", pair.describe(), output, len(manifest["files"]))
    return output


def _read_manifest(zf: zipfile.ZipFile, source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(zf.read(MANIFEST_NAME))
    except KeyError:
        raise SmoothSegError(f"{source}: not a smoothseg model export ({MANIFEST_NAME} is missing)") from None
    except json.JSONDecodeError as exc:
        raise SmoothSegError(f"{source}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise SmoothSegError(f"{source}: {MANIFEST_NAME} has format {manifest.get('format')!r}, expected "
                             f"{EXPORT_FORMAT!r}" if isinstance(manifest, dict) else f"{source}: malformed manifest")
    for key in ("dataset", "trainer", "checkpoint", "folds", "files"):
        if key not in manifest:
            raise SmoothSegError(f"{source}: {MANIFEST_NAME} lacks the key '{key}'")
    if not _DATASET_RE.match(str(manifest["dataset"])):
        raise SmoothSegError(f"{source}: manifest dataset {manifest['dataset']!r} is not a DatasetXXX_Name folder name")
    if set(manifest["folds"]) != set(TASKS) or not all(manifest["folds"][t] for t in TASKS):
        raise SmoothSegError(f"{source}: the manifest must list folds for both {' and '.join(TASKS)}")
    return manifest


def _check_member_name(name: str, dataset: str, source: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or not path.parts or path.parts[0] != dataset:
        raise SmoothSegError(f"{source}: unsafe or unexpected path in the archive: {name!r}")
    return path


def _expected_members(manifest: dict[str, Any]) -> set[str]:
    base = PurePosixPath(manifest["dataset"])
    names = set()
    for task in TASKS:
        names.add(str(base / f"{manifest['trainer']}__{task}" / "plans.json"))
        for fold in manifest["folds"][task]:
            names.add(str(base / f"{manifest['trainer']}__{task}" / f"fold_{fold}" / manifest["checkpoint"]))
    return names


def _extract_verified(zf: zipfile.ZipFile, manifest: dict[str, Any], staging: Path, source: Path) -> list[Path]:
    """Extract every manifest file into ``staging``, checking names, presence and checksums."""
    members = set(zf.namelist())
    missing = sorted(_expected_members(manifest) - set(manifest["files"])) + \
        sorted(n for n in manifest["files"] if n not in members)
    if missing:
        raise SmoothSegError(f"{source}: incomplete archive, missing {', '.join(missing)}")
    extracted = []
    for name, info in manifest["files"].items():
        rel = _check_member_name(name, manifest["dataset"], source)
        target = staging.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with zf.open(name) as src, open(target, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
        if digest.hexdigest() != info.get("sha256"):
            raise SmoothSegError(f"{source}: {name} is corrupt (checksum mismatch)")
        extracted.append(rel)
    return extracted


def _check_checkpoints(staging: Path, manifest: dict[str, Any], source: Path) -> None:
    from smoothseg.training.checkpoint import load_checkpoint

    for task in TASKS:
        folder = staging / manifest["dataset"] / f"{manifest['trainer']}__{task}"
        try:
            Plans.from_dict(json.loads((folder / "plans.json").read_text()), folder / "plans.json")
        except (SmoothSegError, json.JSONDecodeError) as exc:
            raise SmoothSegError(f"{source}: plans.json of {task} is invalid ({exc})") from None
        for fold in manifest["folds"][task]:
            path = folder / f"fold_{fold}" / manifest["checkpoint"]
            try:
                payload = load_checkpoint(path)
            except SmoothSegError as exc:
                raise SmoothSegError(f"{source}: {task} fold {fold}: {exc}") from None
            for key, expected in (("task", task), ("trainer", manifest["trainer"])):
                if payload.get(key) != expected:
                    raise SmoothSegError(f"{source}: {task} fold {fold} checkpoint says {key}={payload.get(key)!r}, "
                                         f"expected {expected!r}")
            for key in ("network_state", "network_kwargs", "plans"):
                if key not in payload:
                    raise SmoothSegError(f"{source}: {task} fold {fold} checkpoint lacks '{key}'")


def install_models(archive: str | Path, overwrite: bool = False, root: Path | None = None) -> ModelPair:
    """Validate a zip written by :func:`export_models` and install it under the results root.

    Refuses to replace existing files unless ``overwrite``; with it, the fold folders in the archive are replaced
    as a whole (other folds are left alone). Nothing is installed unless every check passes.
    """
    archive = Path(archive)
    root = Path(root) if root is not None else results_root()
    if not archive.is_file():
        raise SmoothSegError(f"{archive}: file not found")
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise SmoothSegError(f"{archive}: not a zip file (or truncated)") from None
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".install-{uuid.uuid4().hex[:12]}"
    try:
        with zf:
            manifest = _read_manifest(zf, archive)
            dataset = manifest["dataset"]
            clash = [p.name for p in _dataset_folders(root) if p.name != dataset and p.name[:10] == dataset[:10]]
            if clash:
                raise SmoothSegError(f"{archive}: {root} already has {', '.join(clash)} with the id of {dataset}; "
                                     "dataset ids must be unique under a results root")
            try:
                files = _extract_verified(zf, manifest, staging, archive)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise SmoothSegError(f"{archive}: unreadable archive member ({exc})") from None
        _check_checkpoints(staging, manifest, archive)
        existing = [str(root.joinpath(*rel.parts)) for rel in files if root.joinpath(*rel.parts).exists()]
        if existing and not overwrite:
            raise SmoothSegError(f"refusing to overwrite {len(existing)} existing file(s) under {root} (e.g. "
                                 f"{existing[0]}); pass --overwrite to replace them")
        _move_into_place(staging, root, manifest, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    folds = {task: tuple(str(f) for f in manifest["folds"][task]) for task in TASKS}
    pair = ModelPair(root / manifest["dataset"], manifest["trainer"], manifest["checkpoint"], folds)
    logger.info("installed %s under %s", pair.describe(), root)
    return pair


def _move_into_place(staging: Path, root: Path, manifest: dict[str, Any], files: list[PurePosixPath]) -> None:
    fold_dirs = {rel.parent for rel in files if _FOLD_RE.match(rel.parent.name)}
    for rel in sorted(fold_dirs):
        target = root.joinpath(*rel.parts)
        if target.exists():
            shutil.rmtree(target)  # --overwrite: a fold is replaced as a whole, so no stale files remain
    for rel in files:
        target = root.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging.joinpath(*rel.parts), target)


# ------------------------------------------------------------------------------------------------------------------
# untrained models (benchmarks, smoke tests)
# ------------------------------------------------------------------------------------------------------------------

def write_untrained_models(plans: Plans, dataset_folder: Path, trainer: str = DEFAULT_TRAINER,
                           folds: tuple[str, ...] = ("0",), seed: int = 0,
                           checkpoint: str = DEFAULT_CHECKPOINT) -> ModelPair:
    """Write freshly initialised liver and tumour checkpoints (same payload keys as training) for ``plans``.

    Their predictions are meaningless; they exist to time the pipeline and to test it without training.
    ``plans.json`` is written next to each configuration, as :func:`install_models` does.
    """
    import torch

    from smoothseg.training.checkpoint import save_checkpoint
    from smoothseg.training.trainer import build_network

    dataset_folder = Path(dataset_folder)
    for task in TASKS:
        task_folder = dataset_folder / f"{trainer}__{task}"
        write_json(plans.to_dict(), task_folder / "plans.json")
        for fold in folds:
            torch.manual_seed(seed + int(fold) if fold.isdigit() else seed)
            network = build_network(plans[task])
            payload = {"network_state": network.state_dict(), "network_kwargs": network.init_kwargs, "epoch": 0,
                       "trainer": trainer, "task": task, "fold": fold, "dataset": dataset_folder.name,
                       "plans": plans.to_dict(), "tlvr_model": None, "tlvr_scores": None, "git_hash": None}
            save_checkpoint(payload, task_folder / f"fold_{fold}" / checkpoint)
    return ModelPair(dataset_folder, trainer, checkpoint, {task: tuple(folds) for task in TASKS})
