"""Table reads and request validation behind the /lut routes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Container

from sqlalchemy.orm import sessionmaker

from profiler_service import store
from profiler_service.errors import InvalidInput, NotFound, OverLimit
from profiler_service.schemas import (
    ChannelSelection,
    DeviceInfo,
    LutPoint,
    LutRequest,
    LutSummary,
    LutTable,
    channel_selection,
)
from profiler_service.settings import Settings
from profiler_service.shapes import MAX_POINTS_PER_REQUEST, LayerShape
from profiler_service.timing import MIN_TIMED_RUNS

ENTRY_OVERHEAD_BYTES = 256  # the key's tuple and the dict slot: small answers are many, and count too


def _weight(key: tuple, data: bytes) -> int:
    """What an entry holds: its answer, the text of its key and the slot."""
    return len(data) + sum(len(part) for part in key if isinstance(part, str)) + ENTRY_OVERHEAD_BYTES


class AnswerCache:
    """LRU of encoded answers bounded in bytes, not entries: one selection's answer can be megabytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._entries: OrderedDict[tuple, tuple[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, version: int) -> bytes | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] != version:
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def put(self, key: tuple, version: int, data: bytes) -> None:
        if len(data) > self.max_bytes // 4:  # an answer that would push out most others is served, not kept
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self.bytes += _weight(key, data) - (_weight(key, old[1]) if old else 0)
            self._entries[key] = (version, data)
            while self.bytes > self.max_bytes:
                evicted_key, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= _weight(evicted_key, evicted)

    def __len__(self) -> int:
        return len(self._entries)


def parse_selection(text: str | None) -> ChannelSelection | None:
    """A ``cin``/``cout`` query (``CHANNELS_SYNTAX``); 422 when it is not one."""
    if text is None:
        return None
    try:
        return channel_selection(text)
    except ValueError as e:
        raise InvalidInput(str(e)) from None


class TableReader:
    """Reads tables, keeping each answer's JSON until a point of its shape is added.

    GET /lut is the hot path (every client, every step): served from memory it
    skips the database and pydantic. One service process owns its store, so an
    in-process version per shape, bumped by the worker after each commit, is
    enough to invalidate: a reader notes the version before reading the rows.
    """

    def __init__(self, sessions: sessionmaker, device_id: int, device: DeviceInfo, cache_bytes: int) -> None:
        self._sessions, self._device_id, self._device = sessions, device_id, device
        self._versions: dict[str, int] = {}
        self._cache = AnswerCache(cache_bytes)
        self._lock = threading.Lock()

    def invalidate(self, shape_key: str) -> None:
        with self._lock:
            self._versions[shape_key] = self._versions.get(shape_key, 0) + 1

    def cached_json(self, shape: LayerShape, cin: str | None, cout: str | None) -> bytes | None:
        """The answer to a selection as it was written, found without parsing it: this runs on the event
        loop, and parsing 1..65536 twice and keying the counts took it some 6 ms a request."""
        with self._lock:
            version = self._versions.get(shape.key, 0)
        return self._cache.get((shape.key, cin, cout), version)

    def json(self, shape: LayerShape, cin: str | None, cout: str | None) -> bytes:
        """The answer read from the store and kept under the selection's text (which the cache weighs)."""
        with self._lock:
            version = self._versions.get(shape.key, 0)
        data = self.read(shape, parse_selection(cin), parse_selection(cout)).model_dump_json().encode()
        self._cache.put((shape.key, cin, cout), version, data)
        return data

    def summaries(self) -> list[LutSummary]:
        with self._sessions() as session:
            return [
                LutSummary(shape=k, points=n, first_measured=first, last_measured=last, last_job=job)
                for k, n, first, last, job in store.shape_summaries(session, self._device_id)
            ]

    def read(
        self, shape: LayerShape, cin: Container[int] | None = None, cout: Container[int] | None = None
    ) -> LutTable:
        """The stored points whose counts lie in ``cin`` and ``cout`` (all of them where None)."""
        with self._sessions() as session:
            sid = store.shape_id(session, shape.key)
            rows = store.points_of(session, self._device_id, sid) if sid is not None else []
        points = [
            LutPoint(
                cin=r.cin,
                cout=r.cout,
                median_ms=r.median_ms,
                p10_ms=r.p10_ms,
                p90_ms=r.p90_ms,
                runs=r.runs,
                measured_at=r.measured_at,
            )  # fmt: skip
            for r in rows
            if (cin is None or r.cin in cin) and (cout is None or r.cout in cout)
        ]
        if not points:
            raise NotFound(f"no points of {shape.key} are measured on this device; POST /lut/{shape.key} to measure")
        return LutTable(
            shape=shape.key, fingerprint=self._device.fingerprint, backend=self._device.backend, points=points
        )


def requested_pairs(shape: LayerShape, body: LutRequest) -> list[tuple[int, int]]:
    """The points a POST /lut names, counted before they are built (a grid is its size, not its list)."""
    depthwise_grid = shape.depthwise and body.points is None
    if depthwise_grid:  # one channel axis: a grid means its diagonal
        assert body.cin is not None and body.cout is not None
        count = len(set(body.cin) & set(body.cout))
        if not count:
            raise InvalidInput("a depthwise grid needs counts common to cin and cout (cin == cout)")
    else:
        count = body.size()
    if count > MAX_POINTS_PER_REQUEST:
        raise OverLimit(f"{count} points requested; at most {MAX_POINTS_PER_REQUEST} per request")
    if depthwise_grid:
        return sorted((c, c) for c in set(body.cin or ()) & set(body.cout or ()))
    return body.expand()


def check_request(
    shape: LayerShape, pairs: list[tuple[int, int]], device: DeviceInfo, settings: Settings, gpu: bool
) -> None:
    """Enforce SPEC 3 and this device's limits: dtype, valid channels, memory and cost of the largest point."""
    if shape.dtype not in device.precisions:
        raise OverLimit(
            f"{shape.dtype} is not supported by backend {device.backend} here "
            f"(supported: {', '.join(device.precisions)})"
        )
    for cin, cout in pairs:
        shape.check_point(cin, cout)
    budgets = [settings.worker_memory_mb * 2**20]
    if device.memory_bytes:
        budgets.append(int(device.memory_bytes * settings.memory_fraction))
    budget = min(budgets)
    worst = max(pairs, key=lambda p: shape.tensor_bytes(*p))
    need = shape.tensor_bytes(*worst)
    if need > budget:
        raise OverLimit(
            f"point {worst} needs {need / 2**20:,.0f} MiB of tensors; the budget is {budget / 2**20:,.0f} MiB "
            "(HALP_MEMORY_FRACTION of the device, HALP_WORKER_MEMORY_MB)"
        )
    cap = settings.point_cost_cap(gpu)
    worst = max(pairs, key=lambda p: shape.macs(*p))
    cost = shape.macs(*worst) * MIN_TIMED_RUNS
    if cost > cap:
        raise OverLimit(
            f"point {worst} costs {cost / 1e9:,.0f} GMAC over the {MIN_TIMED_RUNS} runs a measurement needs; "
            f"the cap is {cap / 1e9:,.0f} GMAC (HALP_MAX_POINT_GMACS)"
        )
