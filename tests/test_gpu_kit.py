"""The GPU check's kit: its CPU rehearsal runs every part and writes the summary the GPU run will; the
wheelhouse builder fetches what a GPU machine lacks and refuses a folder over the carry limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_TIMING, MAX_TIMING_SPREAD

KIT = Path(__file__).parent.parent / "deploy" / "gpu-check"
PARTS = ["pytest-gpu", "benchmark", "prune", "tensorrt"]


@pytest.mark.slow
def test_the_cpu_rehearsal_runs_every_part_and_writes_the_summary(tmp_path, timing_spread):
    env = {**os.environ, "PYTHON": sys.executable, **FAST_TIMING}
    done = subprocess.run(["bash", str(KIT / "run.sh"), "--cpu", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("*.log")))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + logs
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [e["name"] for e in summary] == PARTS
    assert all({"name", "status", "seconds"} <= e.keys() and e["seconds"] >= 0 for e in summary)
    by_name = {e["name"]: e for e in summary}
    pytest_part, bench, prune, trt = (by_name[name] for name in PARTS)
    assert pytest_part["status"] == "passed" and pytest_part["tests"] > 0, pytest_part
    assert bench["status"] == "passed" and "staircase_wrong_way_share" in bench, bench
    assert prune["status"] == "passed" and prune["measured_ratio"] > 0, prune
    if timing_spread <= MAX_TIMING_SPREAD:  # a ratio measured at +-30 % (seen here) can read 1.007 for 0.8
        assert prune["measured_ratio"] < 1, prune
    assert prune["backend"] == "onnxruntime", prune
    assert trt["status"] == "skipped" and trt["reason"], trt
    assert "part" in done.stdout and all(name in done.stdout for name in PARTS)  # the table
    for name in PARTS:
        assert json.loads((tmp_path / f"{name}.json").read_text())["name"] == name


@pytest.mark.slow
def test_the_wheelhouse_holds_what_a_gpu_machine_lacks_within_the_carry_limit(tmp_path):
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = tmp_path / "wheels"
    done = subprocess.run(["bash", str(KIT / "wheelhouse.sh"), python, str(wheels)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    names = {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")}
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic", "typer", "torch_pruning", "scikit_learn"} <= names
    assert not names & {"torch", "numpy", "scipy", "onnxruntime"}  # the machine has these: never carried
    assert sum(p.stat().st_size for p in wheels.glob("*.whl")) < 48 * 2**20
    over = subprocess.run(["bash", str(KIT / "wheelhouse.sh"), "--check", str(wheels)], capture_output=True,
                          text=True, env={**os.environ, "HALP_WHEELHOUSE_LIMIT_MB": "1"})  # fmt: skip
    assert over.returncode == 1 and "over 1 MiB" in over.stderr
