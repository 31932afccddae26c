"""What the running service holds, and the request dependency that hands it out."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy.orm import sessionmaker

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
    device: DeviceInfo
    gpu: bool
    device_id: int
    measurer: Measurer
    jobs: JobManager
    metrics: Metrics
    tables: TableReader
    # uploads hold a thread while they wait for the device: bounded, they cannot take the shared pool
    uploads: asyncio.Semaphore
    # job polls read the store on threads of their own, free while every thread of the shared pool waits
    polls: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="halp-poll"))


async def service(request: Request) -> ServiceState:
    return request.app.state.halp
