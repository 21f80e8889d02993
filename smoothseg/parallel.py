"""One way to map a function over cases, in worker processes or in the main process, with a progress bar; and the
rule that worker processes die with their parent.

Every process pool of the project starts its workers with :func:`die_with_parent` (the batchgenerators augmenter
calls it from the loader's ``set_thread_id``), so a ``kill -9`` of a command leaves no orphaned workers holding
memory. Errors raised in a worker travel back intact: every :class:`smoothseg.errors.SmoothSegError` pickles.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from smoothseg.logging_setup import progress_bar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """In a worker process: ask the kernel to send SIGKILL when the parent dies (Linux ``prctl``; elsewhere a no-op).

    ``parent_pid`` closes the race of a parent that died before the call: the worker then exits at once.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def process_pool(workers: int, mp_context: Any = None) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` whose workers die with this process."""
    return ProcessPoolExecutor(workers, mp_context=mp_context, initializer=die_with_parent, initargs=(os.getpid(),))


def map_cases(fn: Callable[[Any], T], jobs: Sequence[Any], num_processes: int = 1, desc: str = "",
              unit: str = "case") -> list[T]:
    """``[fn(job) for job in jobs]``, in up to ``num_processes`` processes when there is more than one job.

    ``fn`` must be a module-level function (picklable). Results keep the order of ``jobs``.
    """
    bar = dict(total=len(jobs), desc=desc, unit=unit, disable=len(jobs) < 2)
    if num_processes > 1 and len(jobs) > 1:
        with process_pool(min(num_processes, len(jobs))) as pool:
            return list(progress_bar(pool.map(fn, jobs), **bar))
    return [fn(job) for job in progress_bar(jobs, **bar)]
