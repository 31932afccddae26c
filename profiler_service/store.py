"""Queries of the table store; the only module besides ``db`` that writes SQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from profiler_service.db import Device, Job, Point, Shape, utcnow
from profiler_service.timing import LatencyStats

ACTIVE_STATES = ("queued", "running")


def ensure_device(session: Session, fingerprint: str, backend: str, description: dict) -> int:
    session.execute(
        sqlite_insert(Device)
        .values(fingerprint=fingerprint, backend=backend, description=description, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["fingerprint"])
    )
    return session.scalars(select(Device.id).where(Device.fingerprint == fingerprint)).one()


def device_description(session: Session, device_id: int) -> dict:
    """The description stored when the device's first service started."""
    return session.scalars(select(Device.description).where(Device.id == device_id)).one()


def ensure_shape(session: Session, key: str) -> int:
    session.execute(sqlite_insert(Shape).values(key=key).on_conflict_do_nothing(index_elements=["key"]))
    return session.scalars(select(Shape.id).where(Shape.key == key)).one()


def shape_id(session: Session, key: str) -> int | None:
    return session.scalars(select(Shape.id).where(Shape.key == key)).one_or_none()


def points_of(session: Session, device_id: int, shape: int) -> Sequence[Point]:
    return session.scalars(
        select(Point).where(Point.device_id == device_id, Point.shape_id == shape).order_by(Point.cin, Point.cout)
    ).all()


def stored_pairs(session: Session, device_id: int, shape: int) -> set[tuple[int, int]]:
    rows = session.execute(select(Point.cin, Point.cout).where(Point.device_id == device_id, Point.shape_id == shape))
    return {(cin, cout) for cin, cout in rows}


def add_point(session: Session, device_id: int, shape: int, cin: int, cout: int, stats: LatencyStats) -> None:
    """Insert once; a concurrent duplicate is ignored by the unique constraint."""
    session.execute(
        sqlite_insert(Point)
        .values(
            device_id=device_id,
            shape_id=shape,
            cin=cin,
            cout=cout,
            median_ms=stats.median_ms,
            p10_ms=stats.p10_ms,
            p90_ms=stats.p90_ms,
            runs=stats.runs,
            measured_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["device_id", "shape_id", "cin", "cout"])
    )


def shape_summaries(session: Session, device_id: int) -> list[tuple[str, int, dt.datetime, dt.datetime, str | None]]:
    """Per shape with points: (key, points, first and last measured, the newest job that asked for it)."""
    rank = func.row_number().over(partition_by=Job.shape_id, order_by=Job.created_at.desc()).label("n")
    newest = select(Job.shape_id, Job.id, rank).where(Job.device_id == device_id).subquery()
    rows = session.execute(
        select(Shape.key, func.count(Point.id), func.min(Point.measured_at), func.max(Point.measured_at), newest.c.id)
        .join(Point, Point.shape_id == Shape.id)
        .outerjoin(newest, (newest.c.shape_id == Shape.id) & (newest.c.n == 1))
        .where(Point.device_id == device_id)
        .group_by(Shape.key, newest.c.id)
        .order_by(Shape.key)
    )
    return [tuple(row) for row in rows]


def recent_jobs(session: Session, device_id: int, limit: int, active_only: bool = False) -> list[tuple[Job, str]]:
    """The newest jobs first, each with its shape's key."""
    query = select(Job, Shape.key).join(Shape, Shape.id == Job.shape_id).where(Job.device_id == device_id)
    if active_only:
        query = query.where(Job.state.in_(ACTIVE_STATES))
    return [(job, key) for job, key in session.execute(query.order_by(Job.created_at.desc()).limit(limit))]


def request_key(shape_key: str, pairs: Iterable[tuple[int, int]]) -> str:
    """Identity of a request, so that the same request while a job runs joins that job."""
    payload = json.dumps([shape_key, sorted(pairs)], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def active_job(session: Session, device_id: int, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.device_id == device_id, Job.request_key == key, Job.state.in_(ACTIVE_STATES))
    ).first()


def create_job(session: Session, device_id: int, shape: int, key: str, pairs: list[tuple[int, int]]) -> Job:
    job = Job(
        id=str(uuid.uuid4()),
        device_id=device_id,
        shape_id=shape,
        request_key=key,
        points=[list(p) for p in pairs],
        state="queued",
        done=0,
        total=len(pairs),
    )
    session.add(job)
    return job


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def unfinished_jobs(session: Session, device_id: int) -> list[str]:
    return list(
        session.scalars(
            select(Job.id).where(Job.device_id == device_id, Job.state.in_(ACTIVE_STATES)).order_by(Job.created_at)
        )
    )


def set_job(session: Session, job_id: str, **values: object) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow(), **values))


def finish_job(session: Session, job_id: str, state: str, error: str | None = None) -> bool:
    """Move an active job to ``state`` (a final one, or "running"); a job already finished (cancelled,
    say) stays as it is, whatever a reader saw of it a moment ago."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(ACTIVE_STATES))
        .values(state=state, error=error[:2000] if error else None, updated_at=utcnow())
    )
    return result.rowcount > 0


def active_count(session: Session, device_id: int) -> int:
    return session.scalar(select(func.count(Job.id)).where(Job.device_id == device_id, Job.state.in_(ACTIVE_STATES)))


def shape_key_of(session: Session, shape: int) -> str:
    return session.scalars(select(Shape.key).where(Shape.id == shape)).one()
