"""halp finetune under torchrun: two CPU processes (gloo) train one model data-parallel (DDP)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from pruning_client.data import digits
from pruning_client.models import resnet20
from pruning_client.train import evaluate
from tests.conftest import MAX_TIMING_SPREAD, assert_steps_met_their_budgets, cache_env


def halp_finetune(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m"]
    return subprocess.run(
        [sys.executable, *(launcher if processes > 1 else ["-m"]), "pruning_client.cli", "finetune", *args],
        capture_output=True, text=True, timeout=900, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip


# HALP_DISTRIBUTED_REPEAT=20 runs it 20 times: a teardown that fails one run in six (gloo threads alive
# at interpreter exit, see pruning_client.cli.main) passed single runs for weeks
REPEAT = range(int(os.environ.get("HALP_DISTRIBUTED_REPEAT", "1")))


@pytest.mark.slow
@pytest.mark.parametrize("run", REPEAT)
def test_two_processes_fine_tune_one_model_and_count_the_whole_validation_split(tmp_path, run):
    torch.manual_seed(0)
    torch.save(resnet20(10), tmp_path / "model.pt")
    done = halp_finetune(
        str(tmp_path / "model.pt"), "--epochs", "6", "--lr", "0.1", "--out", str(tmp_path / "tuned.pt"), processes=2
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"2 process\(es\): accuracy ([\d.]+) -> ([\d.]+) %", done.stdout)
    assert printed, done.stdout
    before, after = map(float, printed.groups())
    assert after > before + 50  # it trained: from chance to most digits right

    # the saved model is the trained one, and the ranks' shards counted every validation image once
    tuned = torch.load(tmp_path / "tuned.pt", weights_only=False)
    assert round(evaluate(tuned, digits(32, 64).val), 2) == after


def test_a_state_dict_is_refused_with_a_clear_error(tmp_path):
    torch.save(resnet20(10).state_dict(), tmp_path / "weights.pt")
    done = halp_finetune(str(tmp_path / "weights.pt"), "--epochs", "1")
    assert done.returncode == 2 and "holds no model" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_two_processes_prune_one_model_with_rank_0_alone_talking_to_the_service(
    shared_services, timing_spread, tmp_path
):
    service = shared_services[0]
    out = tmp_path / "run"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "pruning_client.cli"]
    done = subprocess.run(
        [sys.executable, *launcher, "prune", "--model", "resnet20", "--target", service.url, "--latency-ratio", "0.7",
         "--steps", "2", "--interval", "3", "--epochs", "1", "--pretrain-epochs", "0", "--out", str(out),
         "--no-calibrate"],  # a noisy fit can put a budget out of reach (see test_workflow); not the point here
        capture_output=True, text=True, timeout=900, env=cache_env(tmp_path, "cache") | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and "global batch 128" in done.stderr
    # every step's masks were checked equal on both ranks (a rank that differs stops the run); repair
    # steps are rank 0's alone, and the masks they end with are checked on both
    history = report["history"]
    assert [h["ranks_agreed"] for h in history[:2]] == [2, 2] and history[-1]["ranks_agreed"] == 2
    assert_steps_met_their_budgets(report)
    # the service heard from rank 0 only: every request carries its sender's rank in the User-Agent
    access = [line for line in service.log.read_text().splitlines() if "halp.access" in line]
    assert any("(rank 0)" in line for line in access)
    assert not any("(rank 1)" in line for line in access)
    (target,) = report["targets"]
    if timing_spread <= MAX_TIMING_SPREAD:  # measured latency is noise-bound on a busy host
        assert target["latency_after_ms"] <= 0.7 * target["latency_before_ms"] * 1.05, target
