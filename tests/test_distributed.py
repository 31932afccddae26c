"""halp finetune under torchrun: two CPU processes (gloo) train one model data-parallel (DDP)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from pruning_client.data import digits
from pruning_client.models import resnet20
from pruning_client.train import evaluate


def halp_finetune(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m"]
    return subprocess.run(
        [sys.executable, *(launcher if processes > 1 else ["-m"]), "pruning_client.cli", "finetune", *args],
        capture_output=True, text=True, timeout=900, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip


@pytest.mark.slow
def test_two_processes_fine_tune_one_model_and_count_the_whole_validation_split(tmp_path):
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
