"""How training fits the machine it runs on."""

from __future__ import annotations

import os

from pruning_client.train import free_cores


def test_training_threads_follow_the_free_cores_unless_the_user_chose(monkeypatch):
    """The load average is an argument: read by the run before it loads the machine itself."""
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert free_cores(cores + 5.0) == 1  # a machine busier than its cores: one thread, not a fight over all
    assert free_cores(0.0) == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert free_cores() == 3
