"""One way to map a function over cases, in worker processes or in the main process, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from smoothseg.logging_setup import progress_bar

T = TypeVar("T")


def map_cases(fn: Callable[[Any], T], jobs: Sequence[Any], num_processes: int = 1, desc: str = "",
              unit: str = "case") -> list[T]:
    """``[fn(job) for job in jobs]``, in up to ``num_processes`` processes when there is more than one job.

    ``fn`` must be a module-level function (picklable). Results keep the order of ``jobs``.
    """
    bar = dict(total=len(jobs), desc=desc, unit=unit, disable=len(jobs) < 2)
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(num_processes, len(jobs))) as pool:
            return list(progress_bar(pool.map(fn, jobs), **bar))
    return [fn(job) for job in progress_bar(jobs, **bar)]
