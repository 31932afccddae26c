"""Measurement jobs: a queue and one thread that fills missing table points through the worker.

Every point is committed in its own transaction, so a crash loses at most the
point in flight; jobs left queued or running are picked up again on start,
unless their deadline passed meanwhile (a job that keeps crashing the service
is not retried forever). A job can be cancelled while queued or running.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import sessionmaker

from profiler_service import store
from profiler_service.db import utcnow
from profiler_service.errors import Conflict, DeviceBusy, Interrupted
from profiler_service.measurer import Measurer
from profiler_service.metrics import Metrics
from profiler_service.schemas import JobStatus
from profiler_service.shapes import LayerShape, parse_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """What POST /lut answers: a job to wait for, or None when every point is stored."""

    job: JobStatus | None


def job_status(job, shape: str | None = None) -> JobStatus:
    return JobStatus(
        id=job.id, state=job.state, done=job.done, total=job.total, error=job.error, shape=shape,
        created_at=job.created_at, updated_at=job.updated_at,
    )  # fmt: skip


class JobManager:
    def __init__(
        self,
        sessions: sessionmaker,
        measurer: Measurer,
        device_id: int,
        metrics: Metrics,
        on_point: Callable[[str], None] = lambda shape_key: None,
        deadline_s: float = 12 * 3600.0,
        max_active: int = 256,
    ) -> None:
        self._sessions = sessions
        self._deadline = dt.timedelta(seconds=deadline_s)
        self._max_active = max_active
        self._cancelled: set[str] = set()
        self._on_point = on_point  # told after each commit, so readers drop cached tables
        self._measurer = measurer
        self._device_id = device_id
        self._metrics = metrics
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._submit_lock = threading.Lock()  # check-then-create must be atomic across requests
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="halp-measure", daemon=True)

    def start(self) -> None:
        with self._sessions() as session:
            pending = store.unfinished_jobs(session, self._device_id)
        for job_id in pending:
            log.info("resuming job %s", job_id)
            self._enqueue(job_id)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Abort the point in flight and stop; unfinished jobs resume on the next start."""
        self._stop.set()
        self._queue.put(None)
        self._measurer.interrupt("the service is shutting down")
        self._thread.join(timeout)

    def cancel(self, job_id: str) -> JobStatus | None:
        """Cancel a queued or running job; the point in flight, if it is this job's, is aborted."""
        with self._sessions.begin() as session:
            job = store.get_job(session, job_id)
            if job is None:
                return None
            if not store.finish_job(session, job_id, "cancelled", "cancelled by DELETE /jobs/{id}"):
                raise Conflict(f"job {job_id} is already {job.state}; only queued or running jobs can be cancelled")
        self._cancelled.add(job_id)
        self._measurer.interrupt("job cancelled", owner=job_id)
        log.info("job %s cancelled", job_id)
        return self.status(job_id)

    def submit(self, shape: LayerShape, pairs: list[tuple[int, int]]) -> Submitted:
        key = shape.key
        with self._submit_lock:
            with self._sessions.begin() as session:
                shape_id = store.ensure_shape(session, key)
                missing = sorted(set(pairs) - store.stored_pairs(session, self._device_id, shape_id))
                if not missing:
                    return Submitted(None)
                req = store.request_key(key, pairs)
                job = store.active_job(session, self._device_id, req)
                created = job is None
                if job is None and store.active_count(session, self._device_id) >= self._max_active:
                    raise DeviceBusy(
                        f"{self._max_active} jobs are queued or running (HALP_MAX_ACTIVE_JOBS); try again later",
                        retry_after_s=30,
                    )
                if job is None:
                    job = store.create_job(session, self._device_id, shape_id, req, missing)
                    session.flush()
                status = job_status(job)
            if created:  # only after commit: the worker must find the row
                self._metrics.jobs_submitted.inc()
                self._enqueue(status.id)
        return Submitted(status.model_copy(update={"shape": key}))

    def status(self, job_id: str) -> JobStatus | None:
        with self._sessions() as session:
            job = store.get_job(session, job_id)
            if job is None:
                return None
            return job_status(job, store.shape_key_of(session, job.shape_id))

    def recent(self, limit: int, active_only: bool = False) -> list[JobStatus]:
        with self._sessions() as session:
            return [job_status(j, key) for j, key in store.recent_jobs(session, self._device_id, limit, active_only)]

    def _enqueue(self, job_id: str) -> None:
        self._metrics.queue_depth.inc()
        self._queue.put(job_id)

    def _work(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception:  # the thread must survive anything one job does
                log.exception("job %s crashed", job_id)
                self._fail(job_id, "internal error; see service log")
            finally:
                self._measurer.forget(job_id)
                self._metrics.queue_depth.dec()

    def _fail(self, job_id: str, error: str) -> None:
        with self._sessions.begin() as session:
            if store.finish_job(session, job_id, "failed", error):
                self._metrics.jobs_failed.inc()

    def _overdue(self, created_at: dt.datetime) -> bool:
        return utcnow() - created_at > self._deadline

    def _run(self, job_id: str) -> None:
        with self._sessions.begin() as session:
            job = store.get_job(session, job_id)
            if job is None or job.state not in store.ACTIVE_STATES or job_id in self._cancelled:
                return
            if self._overdue(job.created_at):
                store.finish_job(session, job_id, "failed", self._deadline_text())
                self._metrics.jobs_failed.inc()
                return
            if not store.finish_job(session, job_id, "running"):  # cancelled since it was read
                return
            shape_id, pairs, created_at = job.shape_id, [tuple(p) for p in job.points], job.created_at
            shape = parse_shape(store.shape_key_of(session, shape_id))
        with self._sessions() as session:
            stored = store.stored_pairs(session, self._device_id, shape_id)
        for done, (cin, cout) in enumerate(pairs, start=1):
            if self._stop.is_set() or job_id in self._cancelled:
                return  # a stopped service leaves it "running": resumed on the next start
            if self._overdue(created_at):
                return self._fail(job_id, self._deadline_text())
            if (cin, cout) not in stored:
                try:
                    stats = self._measurer.layer(shape, cin, cout, owner=job_id)
                except Interrupted:
                    return  # cancelled or shutting down; the state is already what it should be
                except Exception as exc:  # build/run failures and limits are the job's result, not a crash
                    if self._stop.is_set():
                        return  # the worker was killed under us by the shutdown: resume on the next start
                    log.warning("job %s failed at (%d, %d): %s", job_id, cin, cout, exc)
                    return self._fail(job_id, f"point ({cin}, {cout}): {exc}")
            with self._sessions.begin() as session:
                if (cin, cout) not in stored:
                    store.add_point(session, self._device_id, shape_id, cin, cout, stats)
                store.set_job(session, job_id, done=done)
            self._on_point(shape.key)
        with self._sessions.begin() as session:
            store.finish_job(session, job_id, "done")

    def _deadline_text(self) -> str:
        return f"unfinished {self._deadline.total_seconds():g} s after submission (HALP_JOB_DEADLINE_S)"
