"""SPEC 7.6: GET /lut of a stored shape under 20 concurrent clients on loopback, with wrk.

Starts a local CPU service, stores a 64-point table, then runs `wrk -t2 -c20 -d30s --latency`
against GET /lut/<shape> (the load generator shares the 2 cores with the service). Target:
>= 500 requests/s with p99 < 50 ms and no errors.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import parse_args, write

from profiler_service.schemas import LutRequest
from pruning_client.demo import local_service
from pruning_client.remote import ProfilerClient

SHAPE = "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h28w28-b1-fp32"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


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


def main() -> None:
    args = parse_args(__doc__)
    duration = "3s" if args.quick else "30s"
    wrk = shutil.which("wrk")
    if wrk is None:
        write(args.out, "service_load", {"skipped": "wrk is not installed (apt-get install wrk)"}, args.quick)
        return
    with tempfile.TemporaryDirectory() as tmp, local_service(Path(tmp)) as url:
        with ProfilerClient(url) as client:
            client.ensure(
                SHAPE, LutRequest(cin=[16, 32, 48, 64, 80, 96, 112, 128], cout=[8, 16, 24, 32, 40, 48, 56, 64])
            )
        cmd = [wrk, "-t2", "-c20", f"-d{duration}", "--latency", f"{url}/lut/{SHAPE}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    print(out)
    result = parse_wrk(out)
    result.update(command=" ".join(cmd[:-1]) + " URL/lut/" + SHAPE, table_points=64,
                  target={"requests_per_s": 500, "p99_ms": 50})  # fmt: skip
    write(args.out, "service_load", result, args.quick)


if __name__ == "__main__":
    main()
