"""Self-describing checkpoints: plain tensors and JSON-able metadata only, loadable with ``weights_only=True``.

A checkpoint holds the network's state_dict, the optimiser and AMP-scaler states, the epoch, the
plans of the configuration, the trainer name, the network's constructor arguments, the fitted TLVR
regressor (as a dict), the training log, and the git hash of the code that wrote it.
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from smoothseg.atomic import atomic_path
from smoothseg.errors import SmoothSegError


def update_with_file(digest: Any, path: str | Path) -> Any:
    """Feed a file's bytes into ``digest`` in 1 MiB blocks (checkpoints are hundreds of MB); returns ``digest``."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    return update_with_file(hashlib.sha256(), path).hexdigest()


CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


@lru_cache(maxsize=1)
def git_hash() -> str | None:
    """The commit of the smoothseg source tree, or None outside a git checkout (asked once per process)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def save_checkpoint(payload: dict[str, Any], path: Path) -> Path:
    """Write ``payload`` atomically with ``torch.save``; a failed write (full disk, no permission) names the file and
    leaves the previous checkpoint of that name untouched."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as "[enforce fail at ...] unexpected pos"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
        raise SmoothSegError(f"{path}: cannot write the checkpoint ({reason}); the previous {path.name}, if any, is "
                             "kept. Free disk space or check the folder's permissions, then continue with --c") \
            from None
    return path


#: What torch says when ``weights_only=True`` meets objects beyond tensors and plain data.
_UNSAFE_MARKERS = ("Unsupported global", "was not an allowed global")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise SmoothSegError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        text = f"{type(exc).__name__}: {exc}"
        if any(marker in text for marker in _UNSAFE_MARKERS):
            raise SmoothSegError(
                f"{path}: refused: the file holds Python objects besides tensors and plain data, and loading those "
                "can run arbitrary code. smoothseg only loads checkpoints as weights (weights_only=True) and will "
                "not load this one. Use checkpoints written by smoothseg (training, or smoothseg_export_model / "
                "smoothseg_install_model); a file from elsewhere must be re-saved as plain tensors by its author"
            ) from None
        raise SmoothSegError(f"{path}: cannot load the checkpoint, it is damaged or not a checkpoint "
                             f"({_load_failure(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _load_failure(exc: BaseException) -> str:
    """torch's reason in a few words, without its advice to retry with ``weights_only=False``."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return detail[0].strip() if detail else type(exc).__name__
    line = _first_line(exc)
    return type(exc).__name__ if "weights_only" in line else f"{type(exc).__name__}: {line}"
