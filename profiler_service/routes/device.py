from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from profiler_service.auth import require_read, require_write
from profiler_service.schemas import DeviceInfo, Health
from profiler_service.state import ServiceState, service

router = APIRouter(tags=["device"])


@router.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Health:  # on the event loop: it answers while every pool thread is busy
    settings = request.app.state.halp_settings
    return Health(
        version=request.app.version, uptime_s=time.monotonic() - request.app.state.halp_started,
        token_required=settings.api_token is not None, reads_protected=settings.protect_reads,
    )  # fmt: skip


@router.get("/auth", dependencies=[Depends(require_write)], responses={401: {"description": "a wrong or no token"}})
async def check_token() -> dict[str, str]:
    """Whether the bearer token sent would be allowed to write (the service page checks it once)."""
    return {"status": "ok"}


@router.get("/device", response_model=DeviceInfo, dependencies=[Depends(require_read)])
def device(svc: ServiceState = Depends(service)) -> DeviceInfo:
    return svc.device


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_read)])
def metrics(svc: ServiceState = Depends(service)) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
