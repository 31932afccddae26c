"""Measurement jobs: a queue and one worker thread that fills missing table points.

Every point is committed in its own transaction, so a crash loses at most the
point in flight; jobs left queued or running are picked up again on start.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import sessionmaker

from profiler_service import store
from profiler_service.measurer import Measurer
from profiler_service.metrics import Metrics
from profiler_service.schemas import JobStatus
from profiler_service.shapes import LayerShape, parse_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """What POST /lut answers: a job to wait for, or None when every point is stored."""

    job: JobStatus | None


def job_status(job) -> JobStatus:
    return JobStatus(id=job.id, state=job.state, done=job.done, total=job.total, error=job.error)


class JobManager:
    def __init__(
        self,
        sessions: sessionmaker,
        measurer: Measurer,
        device_id: int,
        metrics: Metrics,
        on_point: Callable[[str], None] = lambda shape_key: None,
    ) -> None:
        self._sessions = sessions
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

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the point in flight, then stop; unfinished jobs resume on the next start."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout)

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
            return job_status(job).model_copy(update={"shape": store.shape_key_of(session, job.shape_id)})

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
            except Exception:  # the worker must survive anything one job does
                log.exception("job %s crashed", job_id)
                with self._sessions.begin() as session:
                    store.set_job(session, job_id, state="failed", error="internal error; see service log")
                self._metrics.jobs_failed.inc()
            finally:
                self._metrics.queue_depth.dec()

    def _run(self, job_id: str) -> None:
        with self._sessions.begin() as session:
            job = store.get_job(session, job_id)
            if job is None or job.state not in store.ACTIVE_STATES:
                return
            store.set_job(session, job_id, state="running")
            shape_id, pairs = job.shape_id, [tuple(p) for p in job.points]
            shape = parse_shape(store.shape_key_of(session, shape_id))
        with self._sessions() as session:
            stored = store.stored_pairs(session, self._device_id, shape_id)
        done = 0
        for cin, cout in pairs:
            if self._stop.is_set():
                return  # left "running": resumed on the next start
            if (cin, cout) not in stored:
                try:
                    stats = self._measurer.layer(shape, cin, cout)
                except Exception as exc:  # build/run failures are the job's result, not a crash
                    log.warning("job %s failed at (%d, %d): %s", job_id, cin, cout, exc)
                    with self._sessions.begin() as session:
                        store.set_job(session, job_id, state="failed", error=f"point ({cin}, {cout}): {exc}"[:2000])
                    self._metrics.jobs_failed.inc()
                    return
            done += 1
            with self._sessions.begin() as session:
                if (cin, cout) not in stored:
                    store.add_point(session, self._device_id, shape_id, cin, cout, stats)
                store.set_job(session, job_id, done=done)
            self._on_point(shape.key)
        with self._sessions.begin() as session:
            store.set_job(session, job_id, state="done")
