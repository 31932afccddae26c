"""What the running service holds, and the request dependencies that hand it out."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.orm import sessionmaker

from profiler_service.backends import Backend
from profiler_service.errors import Unauthorized
from profiler_service.jobs import JobManager
from profiler_service.measurer import Measurer
from profiler_service.metrics import Metrics
from profiler_service.schemas import DeviceInfo
from profiler_service.settings import Settings
from profiler_service.tables import TableReader


@dataclass
class ServiceState:
    settings: Settings
    sessions: sessionmaker
    backend: Backend
    device: DeviceInfo
    device_id: int
    measurer: Measurer
    jobs: JobManager
    metrics: Metrics
    tables: TableReader


async def service(request: Request) -> ServiceState:
    return request.app.state.halp


def _check_token(request: Request) -> None:
    token = request.app.state.halp_settings.api_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Unauthorized("this service needs 'Authorization: Bearer <token>' (HALP_API_TOKEN)")


async def require_write(request: Request) -> None:
    _check_token(request)


async def require_read(request: Request) -> None:
    if request.app.state.halp_settings.protect_reads:
        _check_token(request)
