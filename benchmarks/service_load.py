"""SPEC 7.6: GET /lut of a stored shape under 20 concurrent clients on loopback, with wrk; idle and under attack.

Starts a local CPU service, stores a 64-point table, then runs `wrk -t2 -c20 -d30s --latency` (or, where
wrk is not installed, the same closed loop from `load.py`, named in the result) against
GET /lut/<shape> twice in one run: on an idle service, and while another client keeps sending hostile
uploads to POST /measure (an ONNX Loop of 10^12 iterations, killed at the 2 s point deadline, and a
model whose allocation is only known at run time, killed at the worker's memory limit), so that the
measurement worker is killed and restarted throughout. Target: >= 500 requests/s with p99 < 50 ms and
no errors on the idle service; under attack, the same load side by side (the load generator, the
service and its worker share the 2 cores).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import httpx
from common import hold_if_asked, parse_args, write
from load import http_load

from profiler_service.schemas import LutRequest
from pruning_client.demo import local_service
from pruning_client.remote import ProfilerClient
from tests.hostile_models import data_dependent_alloc, endless_loop

SHAPE = "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h28w28-b1-fp32"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
HOSTILE_ENV = {"HALP_POINT_DEADLINE_S": "2", "HALP_WORKER_MEMORY_MB": "1536"}


def parse_wrk(text: str) -> dict:
    def ms(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
        return float(number) * UNITS[unit]

    pct = {p: ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "p50_ms": pct["50"], "p75_ms": pct["75"], "p90_ms": pct["90"], "p99_ms": pct["99"],
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }  # fmt: skip


class Attacker(threading.Thread):
    """Sends hostile uploads back to back until stopped; counts the answers (each one a killed worker)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.answers = url, threading.Event(), {}
        self.models = [endless_loop(), data_dependent_alloc(5e8)]

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for i in range(10**9):
                if self.stop.is_set():
                    return
                r = client.post("/measure", files={"model": ("m.onnx", self.models[i % 2])})
                self.answers[r.status_code] = self.answers.get(r.status_code, 0) + 1


def worker_restarts(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^halp_worker_restarts (\S+)$", text, re.M).group(1))


def rss_mb(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M).group(1)) / 2**20


class Load:
    """20 connections on one URL for a fixed time: wrk where installed, else load.py's httpx loop."""

    def __init__(self, url: str, seconds: int) -> None:
        self.url, self.seconds, self.wrk = url, seconds, shutil.which("wrk")
        self.command = (
            f"wrk -t2 -c20 -d{seconds}s --latency URL/lut/{SHAPE}"
            if self.wrk
            else f"load.http_load(URL/lut/{SHAPE}, connections=20, seconds={seconds})"
        )

    def run(self) -> tuple[str, dict]:
        if self.wrk is None:
            figures = http_load(self.url, 20, self.seconds)
            return json.dumps(figures, indent=1), figures
        cmd = [self.wrk, "-t2", "-c20", f"-d{self.seconds}s", "--latency", self.url]
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return text, parse_wrk(text)


def main() -> None:
    args = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp, local_service(Path(tmp), env=HOSTILE_ENV) as url:
        hold_if_asked("service up")
        with ProfilerClient(url) as client:
            client.ensure(
                SHAPE, LutRequest(cin=[16, 32, 48, 64, 80, 96, 112, 128], cout=[8, 16, 24, 32, 40, 48, 56, 64])
            )
        load = Load(f"{url}/lut/{SHAPE}", 3 if args.quick else 30)
        idle_out, idle = load.run()
        rss_before, restarts_before = rss_mb(url), worker_restarts(url)
        attacker = Attacker(url)
        attacker.start()
        hostile_out, hostile = load.run()
        attacker.stop.set()
        attacker.join(30)
        rss_after, restarts = rss_mb(url), worker_restarts(url) - restarts_before
    print("idle service:\n" + idle_out + "\nwhile hostile uploads kill the worker:\n" + hostile_out)
    hostile.update(
        hostile_answers={str(k): v for k, v in attacker.answers.items()},
        worker_restarts=restarts,
        server_rss_mb_before=round(rss_before, 1),
        server_rss_mb_after=round(rss_after, 1),
    )
    result = {
        **idle,  # the SPEC 7.6 figures: the idle service
        "under_attack": hostile,
        "ratio_requests_per_s": round(hostile["requests_per_s"] / idle["requests_per_s"], 3),
        "ratio_p99": round(hostile["p99_ms"] / idle["p99_ms"], 3),
        "load_generator": "wrk" if load.wrk else "httpx (load.py; wrk is not installed)",
        "command": load.command,
        "table_points": 64,
        "service_env": HOSTILE_ENV,
        "target": {"requests_per_s": 500, "p99_ms": 50},
    }
    print(
        f"idle {idle['requests_per_s']:.0f} req/s p99 {idle['p99_ms']:.1f} ms | under attack "
        f"{hostile['requests_per_s']:.0f} req/s p99 {hostile['p99_ms']:.1f} ms ({restarts:.0f} worker restarts, "
        f"answers {hostile['hostile_answers']}) | server RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )
    write(args.out, "service_load", result, args.quick)


if __name__ == "__main__":
    main()
