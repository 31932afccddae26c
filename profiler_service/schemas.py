"""Wire models of the profiler API, shared by service and client (pydantic only).

The client imports this module and ``shapes``; neither pulls in FastAPI or
SQLAlchemy, so the pruning client stays free of server dependencies.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from profiler_service.shapes import MAX_CHANNELS, MAX_POINTS_PER_REQUEST

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED_STATES: tuple[JobState, ...] = ("done", "failed", "cancelled")
FIRST_INPUT = ""
"""Key of an input shape given without a name (``1x3x224x224``): the model's only input."""
CHANNELS_SYNTAX = "comma list and/or ranges: 8,16,32 or 8..128 or 8..128:8 (step)"


class ChannelSelection:
    """The counts a selection names, as a mask over 0..MAX_CHANNELS: membership and expansion cost no
    Python int per count (a set of 1..65536 twice took the service some 10 MB and 4 ms a request)."""

    __slots__ = ("mask",)

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def __contains__(self, count: object) -> bool:
        return isinstance(count, int) and 0 < count <= MAX_CHANNELS and bool(self.mask[count])

    def counts(self) -> list[int]:
        return np.flatnonzero(self.mask).tolist()


def channel_selection(text: str) -> ChannelSelection:
    """Parse a channel selection such as ``8,16`` or ``8..128:8``.

    Bounds are checked on the numbers before anything is marked, and the counts named add up to
    ``MAX_CHANNELS`` at most (overlaps counted too), so one selection costs at most that many whatever
    it says.
    """
    mask = np.zeros(MAX_CHANNELS + 1, dtype=bool)
    named = 0
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
            else:
                lo = hi = int(part)
                stride = 1
        except ValueError:
            raise ValueError(f"bad channel selection {part!r}; use {CHANNELS_SYNTAX}") from None
        if not (1 <= lo and hi <= MAX_CHANNELS):
            raise ValueError(f"channel counts must lie in 1..{MAX_CHANNELS}, got {part!r}")
        named += len(range(lo, hi + 1, stride))  # 1,800 parts of 1..65536 would be 118 M counts
        if named > MAX_CHANNELS:
            raise ValueError(f"the selection names over {MAX_CHANNELS} channel counts; name each at most once")
        mask[lo : hi + 1 : stride] = True
    if not named:
        raise ValueError(f"empty channel selection; use {CHANNELS_SYNTAX}")
    return ChannelSelection(mask)


def parse_channels(text: str) -> list[int]:
    """A channel selection (``channel_selection``) as its sorted unique counts."""
    return channel_selection(text).counts()


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

    # Strict: a boolean or a string in a channel list is a mistake, not a count.
    cin: list[StrictInt] | None = Field(None, min_length=1, max_length=MAX_CHANNELS)
    cout: list[StrictInt] | None = Field(None, min_length=1, max_length=MAX_CHANNELS)
    points: list[tuple[StrictInt, StrictInt]] | None = Field(None, min_length=1, max_length=MAX_POINTS_PER_REQUEST)

    @model_validator(mode="after")
    def _one_form(self) -> LutRequest:
        grid = self.cin is not None or self.cout is not None
        if grid == (self.points is not None):
            raise ValueError('give either a grid {"cin": [...], "cout": [...]} or {"points": [[cin, cout], ...]}')
        if grid and (not self.cin or not self.cout):
            raise ValueError("a grid needs non-empty cin and cout lists")
        return self

    def size(self) -> int:
        """Points the request names, computed without building them (a grid is len(cin) * len(cout))."""
        if self.points is not None:
            return len(self.points)
        assert self.cin is not None and self.cout is not None
        return len(set(self.cin)) * len(set(self.cout))

    def expand(self) -> list[tuple[int, int]]:
        """The requested pairs; callers check ``size()`` against their limit first."""
        if self.points is not None:
            return sorted(set(self.points))
        assert self.cin is not None and self.cout is not None
        return sorted({(a, b) for a in set(self.cin) for b in set(self.cout)})


class JobStatus(BaseModel):
    id: str
    state: JobState
    done: int
    total: int
    error: str | None = None
    shape: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


class LutSummary(BaseModel):
    shape: str
    points: int
    first_measured: dt.datetime | None = None
    last_measured: dt.datetime | None = None
    last_job: str | None = None  # the newest job that asked for points of this shape


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    uptime_s: float
    token_required: bool  # writes need a bearer token (HALP_API_TOKEN)
    reads_protected: bool  # reads need it too (HALP_PROTECT_READS)


class DeviceInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    fingerprint: str
    backend: str
    backend_version: str
    accelerator: str
    memory_bytes: int = 0
    threads: int | None = None
    # channels per tile of the backend's kernels (16 on AVX-512 CPUs, else 8); older services: 8
    channel_block: int = 8
    precisions: list[str] = []
    precisions_refused: dict[str, str] = {}  # dtype -> why the probe layer did not build or run
    host: str = ""
    # "reference": every time measured relative to a reference layer (drift-compensated) and reported
    # as ms with the reference counted as ``reference_ms``; older services: absolute
    timing: Literal["absolute", "reference"] = "absolute"
    reference_ms: float | None = None


class MeasureResult(BaseModel):
    fingerprint: str
    backend: str
    unit: Literal["ms"] = "ms"
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    input_shapes: dict[str, list[int]] | None = None

    @classmethod
    def of(cls, device: DeviceInfo, stats: Any, input_shapes: dict[str, list[int]] | None) -> MeasureResult:
        """The answer for ``stats`` (a ``timing.LatencyStats``) timed on ``device``."""
        return cls(
            fingerprint=device.fingerprint, backend=device.backend, median_ms=stats.median_ms,
            p10_ms=stats.p10_ms, p90_ms=stats.p90_ms, runs=stats.runs, input_shapes=input_shapes,
        )  # fmt: skip


class Problem(BaseModel):
    """RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
