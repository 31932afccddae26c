"""``ProfilerClient``: one httpx client per session of use, talking to one profiler service."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, RootModel, ValidationError

from profiler_service.schemas import DeviceInfo, JobStatus, LutRequest, LutSummary, LutTable, MeasureResult

LutSummaries = RootModel[list[LutSummary]]
RETRY_STATUS = frozenset({500, 502, 503, 504})
JobProgress = Callable[[int, int], None]
"""``progress(points_done, points_total)`` while jobs run."""
Model = TypeVar("Model", bound=BaseModel)


class ProfilerError(RuntimeError):
    """The service refused a request, a job failed, or the answer broke the protocol; one line for the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _problem_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('title', response.reason_phrase)}: {body.get('detail') or ''}".rstrip(": ")
    except (ValueError, AttributeError):
        return f"{response.status_code} {response.reason_phrase}"


def user_agent() -> str:
    """``halp/<version>``, and the process's rank under torchrun: a service's access log shows who asked."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("halp")
    except PackageNotFoundError:
        ours = "dev"
    rank = os.environ.get("RANK")
    return f"halp/{ours}" + (f" (rank {rank})" if rank is not None else "")


class ProfilerClient:
    """Typed access to a profiler service, with timeouts and retries on transient failures.

    Connection errors and 5xx answers are retried with exponential back-off
    until the request's total ``deadline``; 4xx answers are the caller's
    mistake and raise at once. Connecting gets a short timeout of its own, so
    a target that is down or does not answer is reported in seconds; only
    ``measure`` (a whole model timed on the device) may take minutes.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        deadline: float = 20.0,
        measure_timeout: float = 900.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ProfilerError(f"target {base_url!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8000)")
        token = token if token is not None else os.environ.get("HALP_API_TOKEN")
        headers = {"User-Agent": user_agent(), **({"Authorization": f"Bearer {token}"} if token else {})}
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff, self.deadline = retries, backoff, deadline
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._measure_timeout = httpx.Timeout(measure_timeout, connect=connect_timeout)
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=self._timeout, transport=transport)

    def __enter__(self) -> ProfilerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        give_up = time.monotonic() + self.deadline
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if last or time.monotonic() + self.backoff * 2**attempt > give_up:
                    raise ProfilerError(f"cannot reach {self.base_url}: {type(exc).__name__} {exc}".rstrip()) from None
            else:
                if response.status_code not in RETRY_STATUS or last:
                    if response.is_error:
                        raise ProfilerError(
                            f"{self.base_url}: {method} {url} -> {response.status_code}: {_problem_message(response)}",
                            response.status_code,
                        )
                    return response
                if time.monotonic() + self.backoff * 2**attempt > give_up:
                    raise ProfilerError(
                        f"{self.base_url}: {method} {url} -> {response.status_code}: {_problem_message(response)}",
                        response.status_code,
                    )
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _parse(self, model: type[Model], response: httpx.Response) -> Model:
        """The answer as the protocol says it is, or one line naming the target and what was wrong."""
        what = f"{self.base_url}: {response.request.method} {response.request.url.path}"
        try:
            body = response.json()
        except ValueError:
            bad = response.text[:80]
            raise ProfilerError(f"{what} answered {response.status_code} with invalid JSON: {bad!r}") from None
        try:
            return model.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ProfilerError(
                f"{what} answered JSON that is not a {model.__name__} ({where}: {first['msg']}); "
                "is this a HALP profiler service of the same version?"
            ) from None

    def device(self) -> DeviceInfo:
        return self._parse(DeviceInfo, self._request("GET", "/device"))

    def table(self, shape: str, cin: list[int] | None = None, cout: list[int] | None = None) -> LutTable:
        params = {}
        if cin:
            params["cin"] = ",".join(map(str, cin))
        if cout:
            params["cout"] = ",".join(map(str, cout))
        return self._parse(LutTable, self._request("GET", f"/lut/{shape}", params=params))

    def request(self, shape: str, body: LutRequest) -> LutTable | JobStatus:
        response = self._request("POST", f"/lut/{shape}", json=body.model_dump(exclude_none=True))
        if response.status_code == 202:
            return self._parse(JobStatus, response)
        return self._parse(LutTable, response)

    def luts(self) -> list[LutSummary]:
        return self._parse(LutSummaries, self._request("GET", "/luts")).root

    def job(self, job_id: str) -> JobStatus:
        return self._parse(JobStatus, self._request("GET", f"/jobs/{job_id}"))

    def wait(self, jobs: list[JobStatus], progress: JobProgress | None = None, poll: float = 0.25) -> None:
        """Wait for every job, reporting the points done over all of them; a failed job raises."""
        pending = {j.id: j for j in jobs}
        total = sum(j.total for j in jobs)
        finished = 0
        while pending:
            for job_id in list(pending):
                job = self.job(job_id)
                if job.state in ("failed", "cancelled"):
                    raise ProfilerError(f"{self.base_url}: job {job.id} {job.state}: {job.error}")
                pending[job_id] = job
                if job.state == "done":
                    finished += job.total
                    del pending[job_id]
            if progress:
                progress(finished + sum(j.done for j in pending.values()), total)
            if pending:
                time.sleep(poll)

    def ensure(self, shape: str, body: LutRequest, progress: JobProgress | None = None) -> LutTable:
        """Have every requested point measured, then return them."""
        answer = self.request(shape, body)
        if isinstance(answer, LutTable):
            return answer
        self.wait([answer], progress)
        pairs = body.expand()
        return self.table(shape, sorted({c for c, _ in pairs}), sorted({c for _, c in pairs}))

    def measure(self, onnx_bytes: bytes, input_shape: str | None = None) -> MeasureResult:
        data = {"input_shape": input_shape} if input_shape else {}
        files = {"model": ("model.onnx", onnx_bytes, "application/octet-stream")}
        response = self._request("POST", "/measure", files=files, data=data, timeout=self._measure_timeout)
        return self._parse(MeasureResult, response)


class FingerprintChanged(ProfilerError):
    """A target answered with another device fingerprint than at the start of the run."""


TargetProgress = Callable[[str, int, int], None]
"""``progress(target_url, points_done, points_total)`` while a target measures."""


_HOST_LOCKS: dict[str, threading.Lock] = {}
_HOST_LOCKS_GUARD = threading.Lock()


def host_lock(url: str) -> threading.Lock:
    """One lock per machine the services run on (every loopback name is one machine).

    Services on one host share its cores: timed at the same time, each measures the other's load (two
    CPU services on a 2-core host fitted slopes off by 20x). A run's targets on different hosts are
    timed in parallel; on the same host, one at a time.
    """
    host = (urlsplit(url).hostname or "").lower()
    try:
        if ipaddress.ip_address(host).is_loopback:
            host = "localhost"
    except ValueError:
        pass
    with _HOST_LOCKS_GUARD:
        return _HOST_LOCKS.setdefault(host, threading.Lock())


class RemoteTarget:
    """One target of a run: device fingerprint pinned at start, tables cached under it.

    ``fetch`` has the signature ``LatencyTables`` expects, so a latency model
    asks for exactly the points it needs and this fills them: from the cache,
    else by POST /lut (only the missing points), waiting for the jobs.
    """

    def __init__(self, client: ProfilerClient, cache=None, progress: TargetProgress | None = None) -> None:
        self.client = client
        self.url = client.base_url
        self.cache = cache
        self.progress = progress
        self.device = client.device()
        self.fingerprint = self.device.fingerprint
        # Reference-timed tables are ms at the reference time their store was created with: two stores of
        # one fingerprint (a service restarted without its volume) can differ by the host's speed at
        # their creation, so cached points are kept per store scale and never mix.
        ref = self.device.reference_ms
        self.cache_key = self.fingerprint if ref is None else f"{self.fingerprint}-ref{ref:.6e}"
        self.measured_points = 0
        self.cached_points = 0
        self._host = host_lock(self.url)

    def check(self, fingerprint: str, what: str) -> None:
        if fingerprint != self.fingerprint:
            raise FingerprintChanged(
                f"target {self.url} changed device mid-run: fingerprint {self.fingerprint} at start, "
                f"{fingerprint} for {what}; refusing to mix their tables (restart the run)"
            )

    def fetch(self, needed: dict[str, set[tuple[int, int]]]) -> dict[str, dict[tuple[int, int], float]]:
        out: dict[str, dict[tuple[int, int], float]] = {}
        missing: dict[str, list[tuple[int, int]]] = {}
        for key, points in needed.items():
            cached = self.cache.load(self.cache_key, key) if self.cache else {}
            out[key] = {p: cached[p] for p in points if p in cached}
            self.cached_points += len(out[key])
            lack = sorted(set(points) - out[key].keys())
            if lack:
                missing[key] = lack
        if missing:
            with self._host:
                self._measure(missing, out)
        return out

    def _measure(self, missing: dict[str, list[tuple[int, int]]], out: dict) -> None:
        from profiler_service.shapes import MAX_POINTS_PER_REQUEST

        jobs: list[JobStatus] = []
        for key, points in missing.items():
            for i in range(0, len(points), MAX_POINTS_PER_REQUEST):
                answer = self.client.request(key, LutRequest(points=points[i : i + MAX_POINTS_PER_REQUEST]))
                if isinstance(answer, JobStatus):
                    jobs.append(answer)
        self.client.wait(jobs, None if self.progress is None else partial(self.progress, self.url))
        for key, points in missing.items():
            table = self.client.table(key, sorted({c for c, _ in points}), sorted({c for _, c in points}))
            self.check(table.fingerprint, f"table {key}")
            got = {(p.cin, p.cout): p.median_ms for p in table.points}
            lost = [p for p in points if p not in got]
            if lost:
                raise ProfilerError(f"{self.url} did not return {len(lost)} points of {key}, e.g. {lost[0]}")
            selected = {p: got[p] for p in points}
            out[key].update(selected)
            self.measured_points += len(selected)
            if self.cache:
                self.cache.store(self.cache_key, key, selected)

    def measure(self, onnx_bytes: bytes, input_shape: str | None = None) -> MeasureResult:
        with self._host:
            result = self.client.measure(onnx_bytes, input_shape)
        self.check(result.fingerprint, "a model measurement")
        return result
