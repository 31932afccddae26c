"""The GPU check's parts, each under a time limit, each writing its JSON; then summary.json and a table.

Run by ``deploy/gpu-check/run.sh`` (see its header); ``--mode cpu`` is the rehearsal CI runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GPU = {"backend": "torch-cuda", "model": "resnet18", "dtype": "fp16", "batch": "64", "steps": "4", "pretrain": "8",
       "ratio": "0.5", "joint": "full"}  # fmt: skip
# The rehearsal's ResNet-20 at batch 1 is mostly fixed cost on a CPU (the fitted intercept alone is 0.4-0.6
# of the unpruned latency), so a budget near it sends the pruner searching finer blocks: at 0.7, a noisy
# host's fit made it look out of reach, and the search and a repair round asked for 2,000 table points
# (180 s of the part's 240; 350 points and 52 s on a quieter fit). At 0.8, with the joint solver looking
# near the separable choice, the rehearsal exercises every part without depending on that noise.
CPU = {"backend": "onnxruntime", "model": "resnet20", "dtype": "fp32", "batch": "1", "steps": "1", "pretrain": "1",
       "ratio": "0.8", "joint": "near"}  # fmt: skip


def run(cmd: list[str], out: Path, name: str, timeout: float, env: dict | None = None) -> int:
    """The command with its output in OUT/NAME.log; 124 when it ran past ``timeout``."""
    with open(out / f"{name}.log", "w") as log:
        try:
            return subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT, env=env
            ).returncode
        except subprocess.TimeoutExpired:
            return 124


def pytest_gpu(out: Path, mode: str) -> dict:
    xml = out / "pytest-gpu.xml"
    tests = sorted((ROOT / "tests").glob("test_*.py"))
    files = [str(p.relative_to(ROOT)) for p in tests if "mark.gpu" in p.read_text()]
    # -o addopts: without the project's "-n auto" (pytest-xdist is not on a bare GPU machine)
    cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=-ra", "-m", "gpu", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *files]  # fmt: skip
    rc = run(cmd, out, "pytest-gpu", 150)  # only the files with gpu tests: collecting the rest costs seconds
    if not xml.exists():
        return {"status": "failed", "reason": f"pytest exited {rc} without a report"}
    suite = ET.parse(xml).getroot().find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    ran = counts["tests"] - counts["skipped"]
    status = "failed" if rc not in (0, 5) or counts["failures"] or counts["errors"] else "passed"
    if status == "passed" and ran == 0:
        status = "skipped" if mode == "gpu" else "passed"  # on the CPU every gpu test skips by design
    return {"status": status, **counts}


def benchmark(out: Path, mode: str) -> dict:
    cmd = [sys.executable, "benchmarks/gpu.py", "--out", str(out)]
    cmd += ["--backend", CPU["backend"]] if mode == "cpu" else []
    rc = run(cmd, out, "benchmark", 200)
    found = sorted(out.glob("gpu*.json"))
    if rc != 0 or not found:
        return {"status": "failed", "reason": f"benchmarks/gpu.py exited {rc} (see benchmark.log)"}
    body = json.loads(found[-1].read_text())
    big = max(body["latency_model"], key=lambda k: int(k[1:]))
    return {
        "status": "passed",
        "accelerator": body["device"]["accelerator"],
        "staircase_wrong_way_share": {k: v["share_larger_faster_by_10pct"] for k, v in body["staircase"].items()},
        f"latency_model_{big}_median_abs_error": body["latency_model"][big]["median_abs_error"],
        f"latency_model_{big}_worst_abs_error": body["latency_model"][big]["worst_abs_error"],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prune(out: Path, mode: str) -> dict:
    p = GPU if mode == "gpu" else CPU
    port = _free_port()
    env = {**os.environ, "HALP_CACHE_DIR": str(out / "cache")}
    cli = [sys.executable, "-m", "pruning_client.cli"]
    serve_cmd = [*cli, "serve", "--backend", p["backend"], "--port", str(port), "--db", f"sqlite:///{out}/halp.db"]
    with open(out / "serve.log", "w") as log:
        server = subprocess.Popen(serve_cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        if server.poll() is not None:
            return {"status": "failed", "reason": "halp serve exited (see serve.log)"}
        rc = run([*cli, "prune", "--target", url, "--model", p["model"], "--dtype", p["dtype"], "--batch", p["batch"],
                  "--latency-ratio", p["ratio"], "--joint", p["joint"], "--data", "digits", "--steps", p["steps"],
                  "--epochs", "1", "--pretrain-epochs", p["pretrain"], "--out", str(out / "prune")],
                 out, "prune", 240, env)  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = out / "prune" / "report.json"
    if rc != 0 or not report.exists():
        return {"status": "failed", "reason": f"halp prune exited {rc} (see prune.log)"}
    (t,) = json.loads(report.read_text())["targets"]
    return {
        "status": "passed", "backend": t["backend"], "accelerator": t["accelerator"],
        "measured_ratio": t["latency_after_ms"] / t["latency_before_ms"], "latency_before_ms": t["latency_before_ms"],
        "accuracy_before": t["accuracy_before"], "accuracy_after": t["accuracy_after"],
    }  # fmt: skip


TRT_STAIRCASE = """
import json, sys
from pathlib import Path
from profiler_service.backends import create_backend
from profiler_service.shapes import parse_shape
from profiler_service.timing import TimingPolicy, measure
backend = create_backend("tensorrt", cache_dir=Path(sys.argv[1]))
shape = parse_shape("conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b1-fp16")
row = []
for c in range(8, 257, 8):
    runner = backend.build_layer(shape, 64, c)
    row.append(measure(runner.run_batch, TimingPolicy(warmup_ms=20, max_ms=500)).median_ms)
    runner.close()
body = {"device": backend.device_json(), "cout": list(range(8, 257, 8)), "median_ms": row}
Path(sys.argv[1], "tensorrt.json").write_text(json.dumps(body))
"""


def tensorrt(out: Path, mode: str) -> dict:
    probe = subprocess.run([sys.executable, "-c", "import tensorrt"], capture_output=True, text=True)
    if probe.returncode != 0:
        return {"status": "skipped", "reason": "tensorrt does not import here (its wheels are too large to carry)"}
    if mode == "cpu":
        return {"status": "skipped", "reason": "TensorRT needs an NVIDIA GPU"}
    rc = run([sys.executable, "-c", TRT_STAIRCASE, str(out)], out, "tensorrt", 180)
    if rc != 0:
        return {"status": "failed", "reason": f"exited {rc} (see tensorrt.log)"}
    body = json.loads((out / "tensorrt.json").read_text())
    return {"status": "passed", "accelerator": body["device"]["accelerator"], "points": len(body["median_ms"])}


PARTS: list[tuple[str, Callable[[Path, str], dict]]] = [
    ("pytest-gpu", pytest_gpu), ("benchmark", benchmark), ("prune", prune), ("tensorrt", tensorrt),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name, part in PARTS:
        start = time.monotonic()
        try:
            result = part(args.out, args.mode)
        except Exception as e:  # noqa: BLE001 - one part's crash must not lose the others' results
            result = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
        entry = {"name": name, **result, "seconds": round(time.monotonic() - start, 1)}
        (args.out / f"{name}.json").write_text(json.dumps(entry, indent=2))
        summary.append(entry)
        print(f"{name}: {entry['status']} in {entry['seconds']} s", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{'part':12s} {'status':8s} {'seconds':>8s}  headline")
    for e in summary:
        rest = {k: v for k, v in e.items() if k not in ("name", "status", "seconds")}
        print(f"{e['name']:12s} {e['status']:8s} {e['seconds']:8.1f}  {json.dumps(rest)[:160]}")
    sys.exit(1 if any(e["status"] == "failed" for e in summary) else 0)


if __name__ == "__main__":
    main()
