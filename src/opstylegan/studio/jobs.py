"""The inversion queue: one worker thread per device runs one job at a time, first come first served.

A job carries an append-only list of events (progress, per-run results, the end) that any number of readers
follow by index, so the web side needs no callbacks into the worker thread. Cancelling a queued job removes it
at once; cancelling a running one sets a flag that the job's progress function checks after every step
(:class:`JobCancelled` unwinds the optimisation). Nothing here knows about torch or HTTP.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Job", "JobCancelled", "JobQueue", "QueueFullError", "RunSpec"]

log = logging.getLogger("opstylegan.studio")

QUEUED, RUNNING, DONE, CANCELLED, FAILED = "queued", "running", "done", "cancelled", "failed"
FINAL_STATES = (DONE, CANCELLED, FAILED)


class JobCancelled(Exception):
    """Raised inside a running job when it was cancelled (by its page, or because its page went away)."""


class QueueFullError(RuntimeError):
    """The queue already holds as many waiting jobs as it accepts."""


@dataclass(frozen=True)
class RunSpec:
    """One inversion of a job's target: which model (``main`` / ``baseline``) and which latent space."""

    model: str
    space: str


@dataclass(eq=False)  # identity: a job is found in the queue by being that job
class Job:
    """An inversion request: ``runs`` of one target, ``steps`` each. ``payload`` is whatever the executor needs."""

    session: str
    runs: list[RunSpec]
    steps: int
    payload: Any = None
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = QUEUED
    error: str | None = None
    created: float = field(default_factory=time.monotonic)
    cancel_reason: str | None = None
    listeners: int = 0  # open event streams (pages following the job)
    last_listened: float = field(default_factory=time.monotonic)  # when the last stream closed (or creation)
    _events: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if a cancel was requested (called by the executor between steps)."""
        if self._cancel.is_set():
            raise JobCancelled(self.cancel_reason or "cancelled")

    def post(self, kind: str, **data: Any) -> None:
        """Append an event ``{"type": kind, **data}`` for the readers."""
        with self._lock:
            self._events.append({"type": kind, **data})

    def events_since(self, index: int) -> list[dict[str, Any]]:
        """Events from ``index`` on (a reader keeps its own index)."""
        with self._lock:
            return list(self._events[index:])

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is finished (True) or ``timeout`` seconds passed (False)."""
        return self._finished.wait(timeout)

    def _finish(self, state: str, error: str | None = None) -> None:
        with self._lock:
            if self.state in FINAL_STATES:
                return
            self.state, self.error = state, error
            self._events.append({"type": state, **({"message": error} if error else {})})
        self._finished.set()


Executor = Callable[[Job], None]


class JobQueue:
    """First-come-first-served jobs on one device, run by one worker thread (started on construction).

    Args:
        execute: Runs a job; may raise :class:`JobCancelled` (the job ends ``cancelled``) or any exception
            (the job ends ``failed`` with its message; the worker goes on with the next job).
        max_waiting: Jobs allowed to wait at once; more raise :class:`QueueFullError`.
        name: Names the worker thread (e.g. the device).
    """

    def __init__(self, execute: Executor, *, max_waiting: int = 32, name: str = "cpu") -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self._execute = execute
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.completed = 0
        self._thread = threading.Thread(target=self._work, name=f"studio-jobs-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> int:
        """Queue ``job``; returns its position (0: it runs now, k: k - 1 jobs wait before it plus the running one)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the job queue is closed")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(f"the inversion queue is full ({self.max_waiting} jobs waiting); try again later")
            self._waiting.append(job)
            self._cond.notify_all()
            return self._position(job)

    def position(self, job: Job) -> int | None:
        """0 while ``job`` runs, k >= 1 while k jobs are ahead of it, None once it left the queue."""
        with self._cond:
            return self._position(job)

    def _position(self, job: Job) -> int | None:
        if job is self._running:
            return 0
        try:
            index = self._waiting.index(job)
        except ValueError:
            return None
        return index + (1 if self._running is not None else 0)

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Cancel ``job``: dropped at once if it waits, stopped after its current step if it runs."""
        with self._cond:
            if job.finished:
                return
            job.cancel_reason = reason
            job._cancel.set()
            if job in self._waiting:
                self._waiting.remove(job)
                job._finish(CANCELLED, reason)

    def __len__(self) -> int:
        """Jobs waiting or running."""
        with self._cond:
            return len(self._waiting) + (self._running is not None)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the worker (waits up to ``timeout`` s for the running job to stop)."""
        with self._cond:
            self._closed = True
            pending = list(self._waiting) + ([self._running] if self._running else [])
        for job in pending:
            self.cancel(job, "the studio is shutting down")
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed and not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running = job
                job.state = RUNNING
            job.post(RUNNING)
            try:
                self._execute(job)
            except JobCancelled as e:
                job._finish(CANCELLED, str(e))
            except Exception as e:  # noqa: BLE001 - a failed job must not stop the worker
                log.exception("inversion job %s failed", job.id)
                job._finish(FAILED, f"{type(e).__name__}: {e}")
            else:
                job._finish(DONE)
            finally:
                with self._cond:
                    self._running = None
                    self.completed += 1
                    self._cond.notify_all()
