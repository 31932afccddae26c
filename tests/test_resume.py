"""`halp prune --resume`: a run killed mid-schedule continues from its last checkpoint to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pruning_client.checkpoint import LAST, load_checkpoint, save_atomic
from tests.conftest import cache_env, halp

STEPS = 4


def prune_args(url: str) -> list[str]:
    # uncalibrated and unmeasured between steps: each step then depends only on the tables (stored on the
    # service) and on the training, which a seeded data order and a checkpoint replay exactly
    return [
        "prune", "--model", "resnet20", "--target", url, "--latency-ratio", "0.6", "--steps", str(STEPS),
        "--interval", "3", "--epochs", "1", "--pretrain-epochs", "0", "--no-calibrate", "--no-measure-steps",
    ]  # fmt: skip


def steps_of(out) -> list[tuple[int, list[int]]]:
    history = json.loads((out / "report.json").read_text())["history"]
    return [(h["iteration"], h["channels"]) for h in history[:STEPS]]


@pytest.mark.slow
def test_a_killed_prune_resumes_to_the_steps_of_an_uninterrupted_run(shared_services, tmp_path):
    url = shared_services[0].url
    env = {**cache_env(tmp_path, "cache"), "OMP_NUM_THREADS": "1"}  # the same threads: the same arithmetic
    whole = halp(*prune_args(url), "--out", str(tmp_path / "whole"), env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pruning_client.cli", *prune_args(url), "--out", str(killed)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stderr:  # type: ignore[union-attr]
        if f"step 2/{STEPS}" in line:
            break
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the checkpoint written at the end of step 2's iteration
        if (killed / LAST).exists() and len(load_checkpoint(killed)["pruner"]["history"]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(killed)
    assert at_kill["phase"] == "prune" and 2 <= len(at_kill["pruner"]["history"]) < STEPS
    assert not (killed / "report.json").exists()

    resumed = halp("prune", "--resume", str(killed), env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert steps_of(killed) == steps_of(tmp_path / "whole")
    assert load_checkpoint(killed)["phase"] == "finetune"  # the last checkpoint is the fine-tuning's


def test_resuming_against_another_device_is_refused(shared_services, tmp_path):
    out = tmp_path / "run"
    done = halp(*prune_args(shared_services[0].url), "--steps", "1", "--pretrain-epochs", "0", "--epochs", "0",
                "--out", str(out), env=cache_env(tmp_path, "cache"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(out)
    state["fingerprints"] = {shared_services[0].url: "0123456789abcdef"}  # as if another GPU answered there now
    save_atomic(state, out / LAST)
    again = halp("prune", "--resume", str(out), env=cache_env(tmp_path, "cache"))
    assert again.returncode == 2 and "is another device than when the run started" in again.stderr
    assert "Traceback" not in again.stderr
    missing = halp("prune", "--resume", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr


def test_the_plan_is_printed_before_the_run_starts(shared_services, tmp_path):
    done = halp(*prune_args(shared_services[0].url), "--steps", "1", "--pretrain-epochs", "0", "--epochs", "0",
                "--train-batch", "32", "--out", str(tmp_path / "run"), env=cache_env(tmp_path, "cache"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plan = next(line for line in done.stderr.splitlines() if "plan:" in line)
    assert "1 pruning step(s), one every 3 iteration(s)" in plan and "global batch 32" in plan
    assert plan and done.stderr.index("plan:") < done.stderr.index("step 1/1")
    assert os.path.getsize(tmp_path / "run" / "model.onnx") > 0
