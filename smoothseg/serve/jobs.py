"""The job queue of ``smoothseg_serve``: one SQLite file (standard library) shared by the web server and its worker.

A job is ``queued`` -> ``running`` -> ``done`` | ``failed``. The worker claims the oldest queued job in one
``BEGIN IMMEDIATE`` transaction, so two claims never get the same job, and writes its progress and end only while the
job is still running under its own pid (a job queued again meanwhile belongs to the next worker). Jobs outlive the
server: at start, a job left ``running`` by a server that stopped is queued again (that try is not counted); when the
worker process dies under a job (killed, out of memory), the server queues it again, up to :data:`MAX_ATTEMPTS`
tries, then fails it with that reason. Every process opens its own :class:`JobStore`; within a process its calls are
serialised by a lock (the web server's threads share one).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JOB_ID", "MAX_ATTEMPTS", "STATES", "Job", "JobStore", "new_job_id"]

STATES = ("queued", "running", "done", "failed")
#: A job id: 32 lower-case hex digits (uuid4). Anything else in a URL is refused before it reaches a path.
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
#: Tries of a job whose worker process died under it before the job is failed.
MAX_ATTEMPTS = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    upload_name TEXT NOT NULL,
    input_kind TEXT NOT NULL,
    clinical TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
"""


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    stage: str
    progress: float
    error: str | None
    upload_name: str
    input_kind: str
    clinical: dict[str, str]
    attempts: int
    worker_pid: int | None
    created: float
    updated: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        data["clinical"] = json.loads(data["clinical"] or "{}")
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """What ``GET /api/jobs/{id}`` shows (the files are added by the server)."""
        return {"id": self.id, "state": self.state, "stage": self.stage, "progress": round(self.progress, 3),
                "error": self.error, "upload_name": self.upload_name, "attempts": self.attempts,
                "created": self.created, "updated": self.updated}


class JobStore:
    """The jobs table in ``path`` (created on first use; WAL journal, so readers never wait for the worker)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def _execute(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        self._db.close()

    # -- writes ---------------------------------------------------------------------------------------------------
    def create(self, job_id: str, upload_name: str, input_kind: str, clinical: dict[str, str]) -> Job:
        now = time.time()
        self._execute("INSERT INTO jobs (id, state, upload_name, input_kind, clinical, created, updated) "
                      "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                      (job_id, upload_name, input_kind, json.dumps(clinical), now, now))
        return self.get(job_id)

    def claim(self, worker_pid: int) -> Job | None:
        """The oldest queued job, now ``running`` under ``worker_pid`` (None when the queue is empty)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created, id LIMIT 1"
                                       ).fetchone()
                if row is not None:
                    self._db.execute("UPDATE jobs SET state = 'running', stage = 'starting', progress = 0, attempts = "
                                     "attempts + 1, worker_pid = ?, updated = ? WHERE id = ?",
                                     (worker_pid, time.time(), row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return None if row is None else self.get(row[0])

    def progress(self, job_id: str, stage: str, fraction: float, worker_pid: int) -> None:
        self._execute("UPDATE jobs SET stage = ?, progress = ?, updated = ? WHERE id = ? AND state = 'running' "
                      "AND worker_pid = ?", (stage, float(fraction), time.time(), job_id, worker_pid))

    def finish(self, job_id: str, worker_pid: int) -> bool:
        """Mark the job done, if it is still running under ``worker_pid`` (a job queued again meanwhile is not
        touched; False then)."""
        with self._lock:
            cursor = self._db.execute("UPDATE jobs SET state = 'done', stage = 'done', progress = 1, "
                                      "worker_pid = NULL, updated = ? WHERE id = ? AND state = 'running' "
                                      "AND worker_pid = ?",
                                      (time.time(), job_id, worker_pid))
            return cursor.rowcount == 1

    def fail(self, job_id: str, error: str, worker_pid: int | None = None) -> bool:
        """Mark the job failed with ``error``: a running one (of ``worker_pid`` when given) or a queued one."""
        query = ("UPDATE jobs SET state = 'failed', stage = 'failed', error = ?, worker_pid = NULL, updated = ? "
                 "WHERE id = ? AND state IN ('queued', 'running')")
        params: tuple = (error, time.time(), job_id)
        if worker_pid is not None:
            query, params = query + " AND worker_pid = ?", (*params, worker_pid)
        with self._lock:
            return self._db.execute(query, params).rowcount == 1

    def requeue_running(self, worker_pid: int | None = None, reason: str = "", count_try: bool = True
                        ) -> tuple[list[str], list[str]]:
        """Queue again the running jobs (of ``worker_pid``, or all): ``(requeued ids, failed ids)``. With
        ``count_try`` (the worker died under the job) a job that has had :data:`MAX_ATTEMPTS` tries fails with
        ``reason``; without (the server stopped it) the try is given back."""
        query = "SELECT id, attempts FROM jobs WHERE state = 'running'"
        rows = self._execute(query + (" AND worker_pid = ?" if worker_pid is not None else ""),
                             () if worker_pid is None else (worker_pid,))
        requeued, failed = [], []
        for job_id, attempts in rows:
            if count_try and attempts >= MAX_ATTEMPTS:
                self.fail(job_id, f"{reason} ({attempts} tries); the job was given up")
                failed.append(job_id)
            else:
                self._execute("UPDATE jobs SET state = 'queued', stage = 'queued again', progress = 0, "
                              "attempts = attempts - ?, worker_pid = NULL, updated = ? WHERE id = ? "
                              "AND state = 'running'", (0 if count_try else 1, time.time(), job_id))
                requeued.append(job_id)
        return requeued, failed

    def running_pids(self) -> list[int]:
        return [row[0] for row in self._execute("SELECT DISTINCT worker_pid FROM jobs WHERE state = 'running' "
                                                "AND worker_pid IS NOT NULL")]

    def delete(self, job_id: str) -> None:
        self._execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- reads ----------------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        rows = self._execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update({row[0]: row[1] for row in self._execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")})
        return counts

    def finished_before(self, when: float) -> list[str]:
        """Ids of jobs done or failed before ``when`` (seconds since the epoch), for the retention clean-up."""
        rows = self._execute("SELECT id FROM jobs WHERE state IN ('done', 'failed') AND updated < ?", (when,))
        return [row[0] for row in rows]
