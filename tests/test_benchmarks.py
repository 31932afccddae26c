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

from pruning_client.knapsack import MULTI_TARGET_GAP
from pruning_client.landing import LOW
from tests.conftest import FAST_TIMING

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
ON_SHARED_SERVICE = {
    "latency_model",
    "budget",
    "hardware_awareness",
    "distributed",
    "detection",
    "peers",
}  # profiling_cost counts what it measures


def start(script: str, out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The script in its own process group, so that its `halp serve` child can be killed with it."""
    cmd = [sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick", "--out", str(out), *args]
    env = {**os.environ, **FAST_TIMING, **(env or {})}
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a timed-out benchmark leaves no service behind
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run(script: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    return finish(start(script, out, *args))


def test_a_benchmark_that_times_out_leaves_no_process(tmp_path):
    held = tmp_path / "held"  # the benchmark writes it once its service is up, then waits for good
    proc = start("service_load", tmp_path, env={"HALP_BENCHMARK_HOLD": str(held)})
    deadline = time.monotonic() + 120
    while not held.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held.read_text() == "service up", proc.poll()
    assert len(live_in_group(proc.pid)) >= 2  # the script and its `halp serve`
    with pytest.raises(subprocess.TimeoutExpired):
        finish(proc, timeout=0.5)  # held: it cannot finish, so the timeout kills its group
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


def check_knapsack(body: dict) -> None:
    for instance in body["instances"]:
        assert all(r["budget_met"] for r in instance["results"]), instance["instance"]
        (ours,) = [r for r in instance["results"] if r["solver"] == "halp solve"]
        # exact on one target; several targets are solved to the 0.1 % gap the solver promises
        tolerance = 1e-6 if len(ours["budget"]) == 1 else MULTI_TARGET_GAP
        assert ours["value_vs_milp"] >= 1 - tolerance, instance["instance"]
    several = body["several_targets"]["instances"]
    assert all(i["budgets_met"] and i["value_vs_milp"] >= 1 - MULTI_TARGET_GAP for i in several)


def check_joint(body: dict) -> None:
    for name, model in body["models"].items():
        summary = model["summary"]
        assert summary["all_within_budget"], name  # every choice under the true (cin, cout) latency
        assert summary["joint_loss_worst"] <= 1e-3 + 1e-9, name  # the joint solver within its 0.1 %
        assert summary["full_loss_worst"] <= 1e-3 + 1e-9, name  # so is the pruner by default
        for row in model["instances"]:  # the pruner never does worse than its separable choice
            assert max(row["full_loss"], row["near_loss"]) <= row["separable_loss"] + 1e-12, row
            assert row["near_points"] <= row["full_points"], row


def check_channel_tile(body: dict) -> None:
    configs = body["configs"]
    assert configs["half - 16"]["channels"] < configs["half - 8"]["channels"] < configs["half"]["channels"]
    assert all(c["tables_ms"] > 0 and c["measured_ms"] > 0 for c in configs.values())
    assert body["device"]["channel_block"] in (8, 16)


def check_latency_model(body: dict) -> None:
    for model in body["models"]:
        for label in body["devices"]:  # with --target: the one service, under "target"
            run = model[label]
            assert run["calibration"]["a"] > 0 and run["configs"], (model["model"], label)
            assert all(c["measured_ms"] > 0 and c["predicted_ms"] > 0 for c in run["configs"])
            assert run["timing"] == body["devices"][label]["timing"]


def check_in_network(body: dict) -> None:
    for name, model in body["models"].items():
        rows = model["rows"]
        assert all(r["alone"] > 0 and r["within"] > 0 and r["measured"] > 0 for r in rows), name
        # without the layout conversions a layer alone pays, the tables sum to less
        assert sum(r["within"] for r in rows) < sum(r["alone"] for r in rows), name
        assert {"alone", "within"} <= model.keys()


def check_budget(body: dict) -> None:
    for run in body["runs"]:  # each prune's report; the measured ratio is noise-bound on a shared VM
        assert 0 < run["measured_ratio"] < 1 and run["report"]["target_ms"] > 0, run
        r = run["latency_ratio"]
        assert run["landing"] and run["in_band"] == (LOW * r <= run["measured_ratio"] <= r), run


def check_hardware_awareness(body: dict) -> None:
    for method, summary in body["summary"].items():
        assert 0 < summary["saliency_kept"]["mean"] <= 1 and 0 < summary["measured_ratio"]["mean"] < 1, method


def check_distributed(body: dict) -> None:
    one, two = body["runs"]
    assert (one["processes"], two["processes"]) == (1, 2)
    for run in body["runs"]:
        assert run["training"]["prune"]["images"] > 0 and run["training"]["finetune"]["images_per_s"] > 0, run
        assert 0 < run["measured_ratio"] < 1, run
    # the second run trained on both processes: each iteration's global batch was twice the first's
    assert two["training"]["prune"]["images"] == 2 * one["training"]["prune"]["images"]


def check_detection(body: dict) -> None:
    (run,) = body["runs"]
    for method in ("halp", "flops"):  # both from the same trained detector, both measured by the service
        r = run[method]
        assert r["speedup"] > 1 and 0 <= r["map50_after"] <= 100 and r["latency_before_ms"] > 0, (method, r)
    assert run["halp"]["map50_before"] == run["flops"]["map50_before"]


PEERS = ("halp", "paper_dp", "flops", "uniform", "torch_pruning", "scratch")  # SPEC 7.4's arms


def check_peers(body: dict) -> None:
    ((ratio, runs),) = body["runs"].items()
    (run,) = runs
    for arm in PEERS:  # every arm pruned, measured in pairs on the service and trained alike
        assert 0 < run[arm]["measured_ratio"] < 1 and 0 <= run[arm]["accuracy"] <= 100, (arm, run[arm])
        assert run[arm]["parameters"] < 272_474, arm  # fewer than the unpruned ResNet-20's
    assert run["scratch"]["measured_ratio"] == run["uniform"]["measured_ratio"]  # the same architecture
    assert set(body["summary"][ratio]) == set(PEERS)


def check_architectures(body: dict) -> None:
    (run,) = body["runs"]  # torchvision's ShuffleNetV2 x0.5, the real definition
    assert "error" not in run and run["met"] and run["within_bounds"], run
    assert run["groups_pruned"] > 0 and run["held"] and run["ort_max_abs_diff"] < 1e-3
    assert list(run["stages"]) == ["analyse", "prune", "forward", "onnx_runtime"]
    assert run["converted"] and run["attention_converted"] == run["head_groups"] == 0  # it has no attention


def check_flood(body: dict) -> None:
    """Every flooding request answered, each with what it deserves (timings are the full run's to judge)."""
    answers = body["answers"]
    assert set(answers["bodies"]) <= {"401", "413"} and sum(answers["bodies"].values()) == body["requests"]["bodies"]
    assert answers["selections"] == {
        "200": body["requests"]["selections"] // 2,
        "422": body["requests"]["selections"] // 2,
    }
    assert set(answers["uploads"]) <= {"200", "429"} and answers["uploads"].get("429", 0) > 0, answers["uploads"]
    assert body["healthz"]["probes"] > 0 and not body["healthz"]["failed"]
    assert body["server_rss_mb"]["before"] > 0


def check_profiling_cost(body: dict) -> None:
    assert body["points_measured"] > 0 and body["recheck_points"] > 0 and body["seconds"] > 0
    assert all(ms > 0 for ms in body["reference_ms"])  # a CPU service times against its reference
    assert body["recheck_in_reference_units"]["max_abs_error"] >= body["recheck_in_reference_units"]["median_abs_error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,check",
    [
        ("knapsack", check_knapsack),
        ("joint", check_joint),
        ("latency_model", check_latency_model),
        ("in_network", check_in_network),
        ("channel_tile", check_channel_tile),
        ("budget", check_budget),
        ("hardware_awareness", check_hardware_awareness),
        ("profiling_cost", check_profiling_cost),
        ("distributed", check_distributed),
        ("detection", check_detection),
        ("peers", check_peers),
        ("flood", check_flood),
        ("architectures", check_architectures),
    ],
)
def test_quick_benchmark_writes_results(script, check, tmp_path, request):
    # scripts that can measure on a running service share the session's, where ResNet-20's tables already are
    shared = ["--target", request.getfixturevalue("shared_services")[0].url] if script in ON_SHARED_SERVICE else []
    done = run(script, tmp_path, *shared)
    assert done.returncode == 0, done.stderr[-3000:]
    body = json.loads((tmp_path / f"{script}-quick.json").read_text())
    assert body["quick"] and body["machine"]["cores"]
    check(body)


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["wrk", "httpx"])
def test_quick_service_load_runs_with_wrk_or_its_own_load_generator(tmp_path, generator):
    import shutil

    if generator == "wrk" and not shutil.which("wrk"):
        pytest.skip("wrk is not installed (apt-get install wrk); the httpx case runs the same benchmark")
    env = {"PATH": ""} if generator == "httpx" else None  # no wrk on an empty PATH; python is absolute
    done = finish(start("service_load", tmp_path, env=env))
    assert done.returncode == 0, done.stderr[-3000:]
    body = json.loads((tmp_path / "service_load-quick.json").read_text())
    assert body["load_generator"].startswith(generator)
    assert body["requests_per_s"] > 0 and body["p99_ms"] > 0 and body["non_2xx"] == 0
    attacked = body["under_attack"]
    assert attacked["requests_per_s"] > 0 and attacked["non_2xx"] == 0 and attacked["socket_errors"] == 0
    assert set(attacked["hostile_answers"]) == {"422"}  # every hostile upload refused, none a 5xx


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_gpu_benchmark_refuses_clearly_without_a_gpu(tmp_path):
    done = run("gpu", tmp_path)
    assert done.returncode != 0 and "backend torch-cuda is unavailable here" in done.stderr and "CUDA" in done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no NVIDIA GPU visible to torch on this machine")
def test_quick_gpu_benchmark(tmp_path):
    done = run("gpu", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "gpu-quick.json").read_text())["staircase"]
