"""What protects a fold folder: one training at a time (a lock file naming the PID and host), and no silent overwrite
of a finished model.

* A second run on a fold that is being trained is refused, naming the process that holds it. A lock left by a run
  that died (same host, PID no longer running) is taken over with a warning.
* A finished fold (``checkpoint_final.pth``) is continued only with ``--c`` and trained again from scratch only with
  ``--overwrite``, which first removes that fold's previous outputs, so no file of the old run survives beside the new.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from smoothseg.atomic import ensure_writable_folder, pid_alive, remove_stale_temp
from smoothseg.errors import SmoothSegError

logger = logging.getLogger(__name__)

LOCK_NAME = ".training.lock"
FINAL = "checkpoint_final.pth"
#: The outputs of a training run in its fold folder (``--overwrite`` removes exactly these).
RUN_OUTPUTS = ("checkpoint_latest.pth", "checkpoint_best.pth", FINAL, "progress.png", "training_log.txt",
               "run_config.json", "postprocessing.json", "validation")


def check_not_finished(fold: Path, continue_training: bool, overwrite: bool) -> None:
    """Refuse to start over a finished model unless told how (``--c`` or ``--overwrite``)."""
    if continue_training and overwrite:
        raise SmoothSegError("--c continues the fold's training and --overwrite starts it again from scratch; "
                             "choose one")
    if (fold / FINAL).exists() and not (continue_training or overwrite):
        raise SmoothSegError(f"{fold} already holds a finished model ({FINAL}). Pass --c to continue training it "
                             "(e.g. with more --epochs), or --overwrite to train it again from scratch (this deletes "
                             "the finished model)")


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def fold_lock(fold: Path) -> Iterator[None]:
    """Hold the fold's lock file for the duration of the block (see the module docstring)."""
    ensure_writable_folder(fold, "fold folder")
    remove_stale_temp(fold)
    path = fold / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not pid_alive(holder["pid"]):
                logger.warning("%s: taking over the lock of PID %s, which is no longer running", fold, holder["pid"])
                path.unlink(missing_ok=True)
                continue
            raise SmoothSegError(
                f"{fold} is being trained by PID {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
                f"{holder.get('started', '?')}; wait for it to finish, or remove {path} if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if _read_lock(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def clear_previous_run(fold: Path) -> None:
    """``--overwrite``: remove the previous run's outputs from the fold folder."""
    for name in RUN_OUTPUTS:
        target = fold / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    logger.info("--overwrite: removed the previous run's outputs from %s", fold)
