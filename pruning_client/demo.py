"""`halp demo`: the embedded default (SPEC 6), end to end on this machine with no GPU.

Starts a CPU profiler service on a free loopback port, trains a CIFAR-style
ResNet-20 on scikit-learn's digits (``--task detection``: an SSD on digits
placed on canvases), prunes it to half its measured latency with HALP,
fine-tunes, and reports. The service it started is stopped on
success, failure and Ctrl-C alike.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from pruning_client.cache import default_cache_dir
from pruning_client.pruning_run import PruneRun
from pruning_client.run_settings import RunSettings
from pruning_client.ui import UI

STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_service(state_dir: Path, threads: int = 1, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A `halp serve --backend onnxruntime` child process on 127.0.0.1, stopped on exit; ``env`` adds settings."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (state_dir / "service.log").open("ab")
    cmd = [
        sys.executable, "-m", "pruning_client.cli", "serve", "--backend", "onnxruntime", "--threads", str(threads),
        "--host", "127.0.0.1", "--port", str(port), "--db", f"sqlite:///{state_dir / 'profiler.db'}",
        "--log-level", "warning",
    ]  # fmt: skip
    private = {k: v for k, v in os.environ.items() if k != "HALP_API_TOKEN"}  # a private service: no token
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**private, **(env or {})})
    previous = signal.signal(signal.SIGTERM, _raise_exit)  # run the finally below on `kill` too
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the profiler service exited at start; see {state_dir / 'service.log'}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the profiler service did not start in {STARTUP_TIMEOUT_S} s")
            time.sleep(0.2)
        yield url
    finally:
        signal.signal(signal.SIGTERM, previous)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _raise_exit(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def demo_settings(url: str, out: Path, latency_ratio: float = 0.5, task: str = "classification") -> RunSettings:
    """ResNet-20 on the digits; for detection, an SSD (ResNet backbone, width 32) on digits placed on canvases,
    trained from scratch for the detection task's default epochs (``tasks.Detection.pretrain``)."""
    if task == "detection":
        return RunSettings(
            targets=[url], task="detection", model="ssd_resnet", data="digits", input_size=128,
            latency_ratio=latency_ratio, steps=8, prune_epochs=2.0, epochs=8, lr=0.02, train_batch=32, out=out,
        )  # fmt: skip
    return RunSettings(
        targets=[url],
        model="resnet20",
        data="digits",
        input_size=32,
        latency_ratio=latency_ratio,
        steps=8,
        pretrain_epochs=20,
        prune_epochs=4.0,
        epochs=30,
        lr=0.05,
        out=out,
    )


@contextmanager
def demo_store() -> Iterator[Path]:
    """The demo's table store, kept between runs; a second demo running at once gets a private one.

    Two services on one store would each measure on the same cores at the same time, and both
    tables would carry the other's load.
    """
    shared = default_cache_dir().parent / "demo"
    shared.mkdir(parents=True, exist_ok=True)
    with (shared / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with tempfile.TemporaryDirectory(prefix="halp-demo-") as private:
                yield Path(private)
            return
        yield shared


def run_demo(out: Path, ui: UI, latency_ratio: float = 0.5, task: str = "classification"):
    with demo_store() as state:
        ui.stage(f"starting a CPU profiler service (ONNX Runtime, 1 thread) with its store in {state}")
        with local_service(state) as url:
            ui.stage(f"profiler service at {url}")
            return PruneRun(demo_settings(url, out, latency_ratio, task), ui).prune()
