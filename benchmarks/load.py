"""A closed-loop HTTP load generator for hosts without ``wrk``: C connections, each sending its next GET
as soon as the last one answered, for a fixed time; the same figures as ``wrk --latency``.

Python spends more CPU per request than wrk, and on a 2-core host the generator shares the cores with
the service, so its requests/s are a lower bound on what wrk would report; the two are never mixed in
one comparison (the result names its generator).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np


async def _connection(client: httpx.AsyncClient, url: str, until: float, latencies: list[float], codes: list[int]):
    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            r = await client.get(url)
            codes.append(r.status_code)
        except httpx.HTTPError:
            codes.append(0)  # a socket error, as wrk counts them
        latencies.append(time.perf_counter() - start)


async def _run(url: str, connections: int, seconds: float) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    codes: list[int] = []
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        start = time.perf_counter()
        until = start + seconds
        await asyncio.gather(*(_connection(client, url, until, latencies, codes) for _ in range(connections)))
        return latencies, codes, time.perf_counter() - start


def http_load(url: str, connections: int = 20, seconds: float = 30) -> dict:
    """``wrk -c{connections} -d{seconds}s --latency``'s figures, measured with httpx (keys as parse_wrk's)."""
    latencies, codes, elapsed = asyncio.run(_run(url, connections, seconds))
    ms = np.asarray(latencies) * 1e3
    status = np.asarray(codes)
    p50, p75, p90, p99 = np.percentile(ms, [50, 75, 90, 99]).tolist()
    return {
        "requests_per_s": len(ms) / elapsed,
        "requests": len(ms),
        "p50_ms": p50, "p75_ms": p75, "p90_ms": p90, "p99_ms": p99,
        "socket_errors": int((status == 0).sum()),
        "non_2xx": int(((status != 0) & ((status < 200) | (status >= 400))).sum()),
    }  # fmt: skip
