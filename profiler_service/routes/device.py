from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from profiler_service.auth import require_read
from profiler_service.schemas import DeviceInfo
from profiler_service.state import ServiceState, service

router = APIRouter(tags=["device"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:  # on the event loop: it answers while every pool thread is busy
    return {"status": "ok"}


@router.get("/device", response_model=DeviceInfo, dependencies=[Depends(require_read)])
def device(svc: ServiceState = Depends(service)) -> DeviceInfo:
    return svc.device


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_read)])
def metrics(svc: ServiceState = Depends(service)) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
