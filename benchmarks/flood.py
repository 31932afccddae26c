"""Issue 28: a service with a token holds against floods on loopback: /healthz stays fast, memory flat.

Starts a local CPU service with ``HALP_API_TOKEN`` set and a 64-point table stored, then, all at once,
each flood from a process of its own (so that no client's GIL slows the probe):

* ``bodies``: 2,000 unauthenticated POST /lut requests announcing large bodies (64 MiB by
  Content-Length, without a token or with a wrong one, and chunked without a length), only their first
  bytes sent: each must be answered on its headers;
* ``selections``: 2,000 distinct GET /lut selections naming tens of thousands of channel counts each
  (every second one over the 65,536 cap), so that each would be a new cache entry;
* ``uploads``: 60 clients with the token uploading a small ONNX model to POST /measure at once, again
  and again until the other two floods end: those over ``HALP_MAX_CONCURRENT_UPLOADS`` get 429 and
  wait the Retry-After it names before sending again (``--ignore-retry-after``: they send again at once).

The flooding processes run at nice 10: on loopback they share the server's two cores, which flooders on
other machines would not (the server and its measurement worker keep normal priority, as the probe does).
Meanwhile the main process asks GET /healthz every 20 ms (each answer's time kept) and reads the
server's resident memory from /metrics every 0.5 s. Targets: every /healthz under 100 ms, server RSS
under +100 MB from before the floods to after.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from common import parse_args, write

from profiler_service.schemas import LutRequest
from pruning_client.demo import local_service
from pruning_client.remote import ProfilerClient
from tests.hostile_models import conv_3x8x8
from tests.raw_http import first_answer

SHAPE = "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h28w28-b1-fp32"
TOKEN = "flood-benchmark-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEALTHZ_TARGET_MS, RSS_TARGET_MB = 100.0, 100.0
ATTACKER_NICENESS = 10  # flooders on loopback share the server's 2 cores; from other machines they would not


def _status(answer: bytes) -> str:
    match = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    return match[1].decode() if match else "no answer"


def _count(codes: list[str]) -> dict[str, int]:
    return {code: codes.count(code) for code in sorted(set(codes))}


def flood_bodies(url: str, n: int, queue: mp.Queue) -> None:
    os.nice(ATTACKER_NICENESS)
    port, path = urlsplit(url).port, f"/lut/{SHAPE}".encode()
    headers = [
        b"Content-Length: 67108864\r\n",
        b"Authorization: Bearer wrong\r\nContent-Length: 67108864\r\n",
        b"Transfer-Encoding: chunked\r\n",
    ]

    def one(i: int) -> str:
        try:
            return _status(first_answer(port, headers[i % 3], path))
        except OSError as e:
            return type(e).__name__

    with ThreadPoolExecutor(8) as pool:
        queue.put(("bodies", _count(list(pool.map(one, range(n))))))


def flood_selections(url: str, n: int, queue: mp.Queue) -> None:
    os.nice(ATTACKER_NICENESS)

    def one(client: httpx.Client, i: int) -> str:
        cin = f"1..{60000 + i}" if i % 2 else f"1..65536,{i + 1}"  # odd: a new valid entry; even: over the cap
        try:
            return str(client.get(f"/lut/{SHAPE}", params={"cin": cin, "cout": "1..65536"}).status_code)
        except httpx.HTTPError as e:
            return type(e).__name__

    with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=8)) as client:
        with ThreadPoolExecutor(8) as pool:
            queue.put(("selections", _count(list(pool.map(lambda i: one(client, i), range(n))))))


def flood_uploads(url: str, clients: int, honour_retry_after: bool, stop: mp.Event, queue: mp.Queue) -> None:
    os.nice(ATTACKER_NICENESS)
    model, codes, lock = conv_3x8x8(), [], threading.Lock()
    start = threading.Barrier(clients)

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=120, headers=AUTH) as client:
            start.wait()  # all 60 arrive together
            while True:
                wait = 0.0
                try:
                    r = client.post("/measure", files={"model": ("m.onnx", model)})
                    code, wait = str(r.status_code), float(r.headers.get("retry-after", 0))
                except httpx.HTTPError as e:
                    code = type(e).__name__
                with lock:
                    codes.append(code)
                if stop.wait(wait if honour_retry_after else 0):
                    return

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(("uploads", _count(codes)))


def server_rss_mb(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    return float(re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M).group(1)) / 2**20


def probe(url: str, floods: list[mp.Process]) -> tuple[list[float], list[float], list[str]]:
    """/healthz every 20 ms and the server's RSS every 0.5 s, until every flood process has ended."""
    healthz, rss, failures = [], [], []
    with httpx.Client(base_url=url, timeout=10, headers=AUTH) as client:
        last_rss = 0.0
        while any(p.is_alive() for p in floods):
            start = time.perf_counter()
            try:
                client.get("/healthz").raise_for_status()
                healthz.append(1e3 * (time.perf_counter() - start))
            except httpx.HTTPError as e:
                failures.append(type(e).__name__)
            if time.monotonic() - last_rss > 0.5:
                rss.append(server_rss_mb(client))
                last_rss = time.monotonic()
            time.sleep(0.02)
    return healthz, rss, failures


def options(parser) -> None:
    parser.add_argument(
        "--ignore-retry-after",
        action="store_true",
        help="uploaders send again at once after a 429 (a client hammering with the token), "
        "instead of waiting the Retry-After the service asks for",
    )


def main() -> None:
    args = parse_args(__doc__, options)
    n, clients = (60, 12) if args.quick else (2000, 60)
    with tempfile.TemporaryDirectory() as tmp, local_service(Path(tmp), env={"HALP_API_TOKEN": TOKEN}) as url:
        with ProfilerClient(url, token=TOKEN) as client:
            client.ensure(
                SHAPE, LutRequest(cin=[16, 32, 48, 64, 80, 96, 112, 128], cout=[8, 16, 24, 32, 40, 48, 56, 64])
            )
        with httpx.Client(base_url=url, headers=AUTH) as c:
            rss_before = server_rss_mb(c)
        queue, stop = mp.Queue(), mp.Event()
        floods = [
            mp.Process(target=flood_bodies, args=(url, n, queue)),
            mp.Process(target=flood_selections, args=(url, n, queue)),
        ]
        uploads = mp.Process(target=flood_uploads, args=(url, clients, not args.ignore_retry_after, stop, queue))
        began = time.perf_counter()
        for p in [*floods, uploads]:
            p.start()
        healthz, rss, failures = probe(url, floods)
        stop.set()  # the uploaders finish the call each has in flight
        healthz_late, rss_late, failures_late = probe(url, [uploads])
        seconds = time.perf_counter() - began
        answers = dict(queue.get(timeout=60) for _ in range(3))
        for p in [*floods, uploads]:
            p.join(60)
        with httpx.Client(base_url=url, headers=AUTH) as c:
            rss_after = server_rss_mb(c)
    times = np.asarray(healthz + healthz_late)
    result = {
        "requests": {"bodies": n, "selections": n, "upload_clients": clients},
        "uploaders_honour_retry_after": not args.ignore_retry_after,
        "answers": answers,
        "flood_seconds": round(seconds, 1),
        "healthz": {
            "probes": int(times.size),
            "failed": failures + failures_late,
            "p50_ms": round(float(np.median(times)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2),
            "max_ms": round(float(times.max()), 2),
        },
        "server_rss_mb": {
            "before": round(rss_before, 1),
            "peak_during": round(max(rss + rss_late), 1),
            "after": round(rss_after, 1),
        },
        "target": {"healthz_max_ms": HEALTHZ_TARGET_MS, "rss_growth_mb": RSS_TARGET_MB},
    }
    result["met"] = bool(
        not result["healthz"]["failed"]
        and result["healthz"]["max_ms"] < HEALTHZ_TARGET_MS
        and rss_after - rss_before < RSS_TARGET_MB
    )
    print(
        f"{seconds:.0f} s of floods: answers {answers}\n/healthz {times.size} probes: p50 "
        f"{result['healthz']['p50_ms']} ms, p99 {result['healthz']['p99_ms']} ms, max {result['healthz']['max_ms']} ms"
        f" ({len(result['healthz']['failed'])} failed) | server RSS {rss_before:.0f} -> peak "
        f"{result['server_rss_mb']['peak_during']:.0f} -> {rss_after:.0f} MB | targets met: {result['met']}"
    )
    write(args.out, "flood-hammer" if args.ignore_retry_after else "flood", result, args.quick)


if __name__ == "__main__":
    main()
