"""Wire models of the profiler API, shared by service and client (pydantic only).

The client imports this module and ``shapes``; neither pulls in FastAPI or
SQLAlchemy, so the pruning client stays free of server dependencies.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from profiler_service.shapes import MAX_CHANNELS

JobState = Literal["queued", "running", "done", "failed"]
CHANNELS_SYNTAX = "comma list and/or ranges: 8,16,32 or 8..128 or 8..128:8 (step)"


def parse_channels(text: str) -> list[int]:
    """Parse a channel selection such as ``8,16`` or ``8..128:8`` into sorted unique counts."""
    values: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if ".." in part:
                span, _, step = part.partition(":")
                lo, hi = (int(v) for v in span.split("..", 1))
                stride = int(step) if step else 1
                if stride < 1 or lo > hi:
                    raise ValueError
                values.update(range(lo, hi + 1, stride))
            else:
                values.add(int(part))
        except ValueError:
            raise ValueError(f"bad channel selection {part!r}; use {CHANNELS_SYNTAX}") from None
        if any(not 1 <= v <= MAX_CHANNELS for v in (min(values), max(values))):
            raise ValueError(f"channel counts must lie in 1..{MAX_CHANNELS}")
    if not values:
        raise ValueError(f"empty channel selection; use {CHANNELS_SYNTAX}")
    return sorted(values)


class LutPoint(BaseModel):
    cin: int
    cout: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    measured_at: dt.datetime | None = None


class LutTable(BaseModel):
    shape: str
    fingerprint: str
    backend: str
    unit: Literal["ms"] = "ms"
    points: list[LutPoint]


class LutRequest(BaseModel):
    """Either a grid (cin x cout) or an explicit list of (cin, cout) points."""

    model_config = ConfigDict(extra="forbid")

    cin: list[int] | None = Field(None, min_length=1, max_length=MAX_CHANNELS)
    cout: list[int] | None = Field(None, min_length=1, max_length=MAX_CHANNELS)
    points: list[tuple[int, int]] | None = Field(None, min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _one_form(self) -> LutRequest:
        grid = self.cin is not None or self.cout is not None
        if grid == (self.points is not None):
            raise ValueError('give either a grid {"cin": [...], "cout": [...]} or {"points": [[cin, cout], ...]}')
        if grid and (not self.cin or not self.cout):
            raise ValueError("a grid needs non-empty cin and cout lists")
        return self

    def expand(self) -> list[tuple[int, int]]:
        if self.points is not None:
            pairs = {(int(a), int(b)) for a, b in self.points}
        else:
            assert self.cin is not None and self.cout is not None
            pairs = {(a, b) for a in self.cin for b in self.cout}
        return sorted(pairs)


class JobStatus(BaseModel):
    id: str
    state: JobState
    done: int
    total: int
    error: str | None = None
    shape: str | None = None


class LutSummary(BaseModel):
    shape: str
    points: int


class DeviceInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    fingerprint: str
    backend: str
    backend_version: str
    accelerator: str
    memory_bytes: int = 0
    threads: int | None = None
    precisions: list[str] = []
    host: str = ""


class MeasureResult(BaseModel):
    fingerprint: str
    backend: str
    unit: Literal["ms"] = "ms"
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    input_shapes: dict[str, list[int]] | None = None


class Problem(BaseModel):
    """RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
