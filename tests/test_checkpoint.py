"""Checkpoints are written atomically: a process killed in the middle of a write leaves the previous one."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from pruning_client.checkpoint import LAST, CheckpointError, load_checkpoint, save_atomic

KILLED_MID_WRITE = """
import os, signal, sys, torch
from pathlib import Path
from pruning_client.checkpoint import LAST, save_atomic

class KillsTheWriter:  # pickled while torch.save writes the checkpoint: the process dies right there
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)

out = Path(sys.argv[1])
save_atomic({"step": 1, "weights": torch.ones(1000)}, out / LAST)
save_atomic({"step": 2, "weights": torch.zeros(1000), "then": KillsTheWriter()}, out / LAST)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert list((tmp_path / LAST).parent.glob(".last.pt.*.partial"))  # the second write had begun
    state = load_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(1000))


def test_a_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path)
    (tmp_path / LAST).parent.mkdir()
    (tmp_path / LAST).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path)
    torch.save({"something": "else"}, tmp_path / LAST)
    with pytest.raises(CheckpointError, match="not a checkpoint of this version"):
        load_checkpoint(tmp_path)
    save_atomic({"step": 3}, tmp_path / LAST)
    assert load_checkpoint(tmp_path)["step"] == 3
