"""``ProfilerClient``: one httpx client per session of use, talking to one profiler service."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from profiler_service.schemas import DeviceInfo, JobStatus, LutRequest, LutTable, MeasureResult

RETRY_STATUS = frozenset({500, 502, 503, 504})
ProgressFn = Callable[[JobStatus], None]


class ProfilerError(RuntimeError):
    """The service refused a request or a job failed; the message is the service's own."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _problem_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('title', response.reason_phrase)}: {body.get('detail') or ''}".rstrip(": ")
    except ValueError:
        return f"{response.status_code} {response.reason_phrase}"


class ProfilerClient:
    """Typed access to a profiler service, with timeouts and retries on transient failures.

    Connection errors and 5xx answers are retried with exponential back-off;
    4xx answers are the caller's mistake and raise at once.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = token if token is not None else os.environ.get("HALP_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> ProfilerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ProfilerError(f"cannot reach {self.base_url}: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUS or attempt == self.retries:
                    if response.is_error:
                        raise ProfilerError(
                            f"{method} {url} -> {response.status_code}: {_problem_message(response)}",
                            response.status_code,
                        )
                    return response
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def device(self) -> DeviceInfo:
        return DeviceInfo.model_validate(self._request("GET", "/device").json())

    def table(self, shape: str, cin: list[int] | None = None, cout: list[int] | None = None) -> LutTable:
        params = {}
        if cin:
            params["cin"] = ",".join(map(str, cin))
        if cout:
            params["cout"] = ",".join(map(str, cout))
        return LutTable.model_validate(self._request("GET", f"/lut/{shape}", params=params).json())

    def request(self, shape: str, body: LutRequest) -> LutTable | JobStatus:
        response = self._request("POST", f"/lut/{shape}", json=body.model_dump(exclude_none=True))
        if response.status_code == 202:
            return JobStatus.model_validate(response.json())
        return LutTable.model_validate(response.json())

    def job(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def wait(self, job: JobStatus, poll: float = 0.25, progress: ProgressFn | None = None) -> JobStatus:
        while True:
            if progress:
                progress(job)
            if job.state == "done":
                return job
            if job.state == "failed":
                raise ProfilerError(f"job {job.id} failed: {job.error}")
            time.sleep(poll)
            job = self.job(job.id)

    def ensure(self, shape: str, body: LutRequest, progress: ProgressFn | None = None) -> LutTable:
        """Have every requested point measured, then return them."""
        answer = self.request(shape, body)
        if isinstance(answer, LutTable):
            return answer
        self.wait(answer, progress=progress)
        pairs = body.expand()
        return self.table(shape, sorted({c for c, _ in pairs}), sorted({c for _, c in pairs}))

    def measure(self, onnx_bytes: bytes, input_shape: str | None = None) -> MeasureResult:
        data = {"input_shape": input_shape} if input_shape else {}
        files = {"model": ("model.onnx", onnx_bytes, "application/octet-stream")}
        return MeasureResult.model_validate(self._request("POST", "/measure", files=files, data=data).json())
