"""The app factory: routers, error mapping, and a lifespan that owns backend and worker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from profiler_service import store
from profiler_service.db import open_store, session_factory
from profiler_service.errors import install_error_handlers
from profiler_service.jobs import JobManager
from profiler_service.limits import BodyLimit
from profiler_service.measurer import Measurer
from profiler_service.metrics import Metrics
from profiler_service.routes import device, jobs, lut, measure, page
from profiler_service.schemas import DeviceInfo
from profiler_service.settings import Settings
from profiler_service.state import ServiceState
from profiler_service.tables import TableReader
from profiler_service.timing import TimingPolicy
from profiler_service.worker import Worker, WorkerConfig

log = logging.getLogger("halp.service")
access = logging.getLogger("halp.access")  # one line per request with the client's User-Agent (halp: its rank)
API_VERSION = "1"


class _RequestMetrics:
    """Pure-ASGI counter keyed by route template (not raw path, which would explode labels), and the
    access log line of every request."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "other")  # docs, 404s
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            agent = dict(scope.get("headers") or ()).get(b"user-agent", b"-").decode("latin-1")
            client = (scope.get("client") or ("-",))[0]
            access.info('%s "%s %s" %d "%s"', client, scope["method"], scope["path"], status, agent)


def start_worker(settings: Settings) -> Worker:
    """The measurement worker of this service; raises BackendUnavailable if its backend cannot run."""
    policy = TimingPolicy(max_ms=settings.timing_max_ms, rel_tol=settings.timing_rel_tol)
    config = WorkerConfig(
        settings.backend, settings.threads, str(settings.cache_dir), settings.worker_memory_mb * 2**20, policy,
        settings.device_index, settings.timing_reference,
    )  # fmt: skip
    worker = Worker(config)
    worker.start()
    return worker


def create_app(settings: Settings | None = None, worker: Worker | None = None) -> FastAPI:
    """The service for one device; the caller may open the worker first to fail before serving."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal worker
        engine = open_store(settings.db_url)
        sessions = session_factory(engine)
        worker = worker or start_worker(settings)
        assert worker.device is not None
        metrics.worker_restarts.set_function(lambda: worker.restarts)
        info = DeviceInfo(**worker.device)
        with sessions.begin() as session:
            device_id = store.ensure_device(session, info.fingerprint, info.backend, info.model_dump())
            stored_reference = store.device_description(session, device_id).get("reference_ms")
        if info.timing == "reference" and stored_reference and stored_reference != info.reference_ms:
            # this store's tables count the reference as the service that created it measured it
            info = DeviceInfo(**worker.pin_reference(stored_reference, settings.point_deadline_s))
        measurer = Measurer(worker, metrics, settings.point_deadline_s, settings.measure_wait_s)
        tables = TableReader(sessions, device_id, info, settings.table_cache_mb * 2**20)
        manager = JobManager(
            sessions, measurer, device_id, metrics, on_point=tables.invalidate,
            deadline_s=settings.job_deadline_s, max_active=settings.max_active_jobs,
        )  # fmt: skip
        app.state.halp = state = ServiceState(
            settings, sessions, info, worker.gpu, device_id, measurer, manager, metrics, tables,
            asyncio.Semaphore(settings.max_concurrent_uploads),
        )  # fmt: skip
        manager.start()
        log.info("profiler ready: backend %s on %s, fingerprint %s", info.backend, info.accelerator, info.fingerprint)
        try:
            yield
        finally:
            manager.stop()
            state.polls.shutdown(wait=False)
            worker.close()
            engine.dispose()

    app = FastAPIOffline(  # /docs and /redoc load their assets from this service, not a CDN
        title="HALP profiler service",
        version=API_VERSION,
        description="Measures layer latency tables on this device. [The service's page](/) shows them.",
        lifespan=lifespan,
    )
    app.state.halp_settings = settings
    app.state.halp_started = time.monotonic()
    install_error_handlers(app)
    for module in (device, lut, jobs, measure, page):
        app.include_router(module.router)
    upload = (settings.max_upload_bytes, "HALP_MAX_UPLOAD_BYTES")
    body = (settings.max_body_bytes, "HALP_MAX_BODY_BYTES")
    app.add_middleware(BodyLimit, limit_for=lambda path: upload if path == "/measure" else body)
    app.add_middleware(_RequestMetrics, metrics=metrics)  # outermost: a refused body is counted and logged too
    return app
