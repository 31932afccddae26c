from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query

from profiler_service.auth import require_read, require_write
from profiler_service.errors import NotFound
from profiler_service.schemas import JobStatus
from profiler_service.state import ServiceState, service

router = APIRouter(tags=["jobs"])


@router.get("/jobs", response_model=list[JobStatus], dependencies=[Depends(require_read)])
async def list_jobs(
    limit: int = Query(50, ge=1, le=500, description="newest jobs first, at most this many"),
    active: bool = Query(False, description="only queued and running jobs"),
    svc: ServiceState = Depends(service),
) -> list[JobStatus]:
    """The queue and its recent history (the service page polls it while jobs run)."""
    return await asyncio.get_running_loop().run_in_executor(svc.polls, svc.jobs.recent, limit, active)


@router.get("/jobs/{job_id}", response_model=JobStatus, dependencies=[Depends(require_read)])
async def get_job(job_id: str, svc: ServiceState = Depends(service)) -> JobStatus:
    status = await asyncio.get_running_loop().run_in_executor(svc.polls, svc.jobs.status, job_id)
    if status is None:
        raise NotFound(f"no job {job_id}")
    return status


@router.delete(
    "/jobs/{job_id}",
    response_model=JobStatus,
    responses={409: {"description": "the job already finished"}},
    dependencies=[Depends(require_write)],
)
def cancel_job(job_id: str, svc: ServiceState = Depends(service)) -> JobStatus:
    """Cancel a queued or running job; a point being measured for it is aborted."""
    status = svc.jobs.cancel(job_id)
    if status is None:
        raise NotFound(f"no job {job_id}")
    return status
