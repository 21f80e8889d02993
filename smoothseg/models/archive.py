"""Moving a trained liver + tumour pair between machines: one zip out (:func:`export_models`), validated and installed
in (:func:`install_models`).

The zip holds the checkpoints, ``plans.json`` per configuration (the plans inside the checkpoints, which are what
prediction uses), the per-fold ``run_config.json``/``postprocessing.json`` when present, and a ``manifest.json`` with
checksums. Installing checks the manifest, the checksums, safe member paths and that every checkpoint loads with
``weights_only=True`` before anything is moved into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from smoothseg import __version__
from smoothseg.atomic import atomic_path
from smoothseg.errors import SmoothSegError
from smoothseg.models.checkpoint import file_sha256, load_checkpoint
from smoothseg.models.store import (
    DATASET_FOLDER_RE,
    DEFAULT_CHECKPOINT,
    DEFAULT_TRAINER,
    FOLD_FOLDER_RE,
    ModelPair,
    dataset_folders,
    select_models,
)
from smoothseg.paths import results_root
from smoothseg.planning.plans import TASKS, Plans

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
EXPORT_FORMAT = "smoothseg.model_export/1"
#: Per-fold files copied into an export besides the checkpoint, when present.
EXTRA_FOLD_FILES = ("run_config.json", "postprocessing.json")


# ------------------------------------------------------------------------------------------------------------------

def _plans_for_export(pair: ModelPair, task: str) -> dict[str, Any]:
    """The plans to ship with a configuration: those inside its first checkpoint (what prediction uses)."""
    return load_checkpoint(pair.checkpoints(task)[0])["plans"]


def export_models(dataset: str | int | None, output: str | Path, folds: list[str] | None = None,
                  trainer: str = DEFAULT_TRAINER, checkpoint: str = DEFAULT_CHECKPOINT,
                  root: Path | None = None) -> Path:
    """Write a trained liver + tumour pair as one zip: checkpoints, plans.json per configuration, manifest.json.

    Paths inside the zip mirror the results root (``DatasetXXX_Name/<Trainer>__<task>/fold_k/<checkpoint>``), so
    :func:`install_models` can put them back under any results root. The zip is written atomically.
    """
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
        "files": {name: {"sha256": file_sha256(path), "bytes": path.stat().st_size} for name, path in files.items()},
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
    if not DATASET_FOLDER_RE.match(str(manifest["dataset"])):
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
            clash = [p.name for p in dataset_folders(root) if p.name != dataset and p.name[:10] == dataset[:10]]
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
    fold_dirs = {rel.parent for rel in files if FOLD_FOLDER_RE.match(rel.parent.name)}
    for rel in sorted(fold_dirs):
        target = root.joinpath(*rel.parts)
        if target.exists():
            shutil.rmtree(target)  # --overwrite: a fold is replaced as a whole, so no stale files remain
    for rel in files:
        target = root.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging.joinpath(*rel.parts), target)
