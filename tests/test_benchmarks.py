"""Every benchmark script's --quick mode runs and writes its JSON (the full runs are not in CI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def start(script: str, out: Path) -> subprocess.Popen:
    """The script in its own process group, so that its `halp serve` child can be killed with it."""
    cmd = [sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick", "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a timed-out benchmark leaves no service behind
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run(script: str, out: Path) -> subprocess.CompletedProcess:
    return finish(start(script, out))


def test_a_benchmark_that_times_out_leaves_no_process(tmp_path):
    proc = start("service_load", tmp_path)
    with pytest.raises(subprocess.TimeoutExpired):
        finish(proc, timeout=6)  # mid-run: its service is up
    deadline = time.monotonic() + 10
    while live_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_in_group(proc.pid)


def live_in_group(pgid: int) -> list[int]:
    """Processes of a process group that are not zombies (those wait for init to reap them)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,key",
    [
        ("knapsack", "instances"),
        ("latency_model", "models"),
        ("budget", "runs"),
        ("hardware_awareness", "summary"),
        ("profiling_cost", "points_measured"),
    ],
)
def test_quick_benchmark_writes_results(script, key, tmp_path):
    done = run(script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    body = json.loads((tmp_path / f"{script}-quick.json").read_text())
    assert body["quick"] and body["machine"]["cores"] and body[key]


@pytest.mark.slow
def test_quick_service_load_runs_wrk_or_says_why_not(tmp_path):
    import shutil

    done = run("service_load", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    body = json.loads((tmp_path / "service_load-quick.json").read_text())
    if shutil.which("wrk"):
        assert body["requests_per_s"] > 0 and body["p99_ms"] > 0 and body["non_2xx"] == 0
        attacked = body["under_attack"]
        assert attacked["requests_per_s"] > 0 and attacked["non_2xx"] == 0 and attacked["socket_errors"] == 0
        assert set(attacked["hostile_answers"]) == {"422"}  # every hostile upload refused, none a 5xx
    else:
        assert "wrk" in body["skipped"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_gpu_benchmark_refuses_clearly_without_a_gpu(tmp_path):
    done = run("gpu", tmp_path)
    assert done.returncode != 0 and "needs an NVIDIA GPU" in done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no NVIDIA GPU visible to torch on this machine")
def test_quick_gpu_benchmark(tmp_path):
    done = run("gpu", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "gpu-quick.json").read_text())["staircase"]
