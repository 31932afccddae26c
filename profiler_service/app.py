"""The app factory: routers, error mapping, and a lifespan that owns backend and worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from profiler_service import store
from profiler_service.backends import Backend, create_backend
from profiler_service.db import make_engine, migrate, session_factory
from profiler_service.errors import install_error_handlers
from profiler_service.jobs import JobManager
from profiler_service.measurer import Measurer
from profiler_service.metrics import Metrics
from profiler_service.routes import device, jobs, lut, measure
from profiler_service.schemas import DeviceInfo
from profiler_service.settings import Settings
from profiler_service.state import ServiceState
from profiler_service.tables import TableReader
from profiler_service.timing import TimingPolicy

log = logging.getLogger("halp.service")
API_VERSION = "1"


class _RequestMetrics:
    """Pure-ASGI counter keyed by route template (not raw path, which would explode labels)."""

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


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """The service for one device; ``backend`` may be built by the caller to fail early."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.db_url)
        migrate(engine)
        sessions = session_factory(engine)
        nonlocal backend
        backend = backend or create_backend(settings.backend, settings.threads, settings.cache_dir)
        info = DeviceInfo(**backend.device_json())
        with sessions.begin() as session:
            device_id = store.ensure_device(session, info.fingerprint, info.backend, info.model_dump())
        policy = TimingPolicy(max_ms=settings.timing_max_ms, rel_tol=settings.timing_rel_tol)
        measurer = Measurer(backend, policy, metrics)
        tables = TableReader(sessions, device_id, info)
        manager = JobManager(sessions, measurer, device_id, metrics, on_point=tables.invalidate)
        app.state.halp = ServiceState(settings, sessions, backend, info, device_id, measurer, manager, metrics, tables)
        manager.start()
        log.info("profiler ready: backend %s on %s, fingerprint %s", info.backend, info.accelerator, info.fingerprint)
        try:
            yield
        finally:
            manager.stop()
            backend.close()
            engine.dispose()

    app = FastAPI(
        title="HALP profiler service",
        version=API_VERSION,
        description="Measures layer latency tables on this device (SPEC 4).",
        lifespan=lifespan,
    )
    app.state.halp_settings = settings
    install_error_handlers(app)
    for module in (device, lut, jobs, measure):
        app.include_router(module.router)
    app.add_middleware(_RequestMetrics, metrics=metrics)
    return app
