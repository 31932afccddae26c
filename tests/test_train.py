"""How training fits the machine it runs on."""

from __future__ import annotations

import math
import os

import pytest
import torch

from pruning_client.data import digits
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet20
from pruning_client.pruner import HALPPruner
from pruning_client.train import TrainConfig, Trainer, free_cores


def test_training_threads_follow_the_free_cores_unless_the_user_chose(monkeypatch):
    """The load average is an argument: read by the run before it loads the machine itself."""
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert free_cores(cores + 5.0) == 1  # a machine busier than its cores: one thread, not a fight over all
    assert free_cores(0.0) == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert free_cores() == 3


def test_the_learning_rate_is_a_function_of_the_phases_progress():
    """So a run resumed on another number of processes (another iteration count) keeps its schedule."""
    cosine = TrainConfig(lr=0.1, warmup=0.1)
    assert cosine.lr_at(0.0) < 0.001 and cosine.lr_at(0.05) == pytest.approx(0.05, rel=0.02)
    assert cosine.lr_at(0.1) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert cosine.lr_at(1.0) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(lr=0.1, schedule="step")
    assert [step.lr_at(p) for p in (0.0, 0.4, 0.7)] == pytest.approx([0.1, 0.01, 0.001])
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear").lr_at(0.5)


def test_a_resumed_epoch_skips_the_batches_already_trained_and_sees_the_same_samples():
    data = digits(32, 64, seed=3)
    sampler = data.train.sampler
    sampler.set_epoch(2)
    whole = [(x.clone(), y.clone()) for x, y in data.train]
    sampler.set_epoch(2, skip=5)
    rest = list(data.train)
    assert len(rest) == len(whole) - 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[5:], rest, strict=True))
    sampler.set_epoch(3)
    assert not torch.equal(next(iter(data.train))[0], whole[0][0])  # another epoch, another order and shifts


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no NVIDIA GPU visible to torch on this machine")
def test_amp_training_on_a_gpu_feeds_the_pruner_unscaled_saliency():
    """fp16 autocast with loss scaling: the saliency is read after unscale_, so it matches fp32's order of
    magnitude instead of the scaler's 2**16."""
    torch.manual_seed(0)
    data = digits(32, 64, seed=0)
    saliencies = {}
    for amp in (False, True):
        torch.manual_seed(0)
        model = resnet20(10).cuda()
        graph = analyse(model, torch.randn(1, 3, 32, 32))
        tables = LatencyTables(fetch=lambda need: {k: {p: 1.0 + p[0] * p[1] for p in pts} for k, pts in need.items()})
        pruner = HALPPruner(model, torch.randn(1, 3, 32, 32), LatencyModel(graph, tables), 0.7, steps=1, interval=4)
        trainer = Trainer(model, data.train, TrainConfig(lr=0.01, amp=amp, channels_last=True), pruner, iterations=3)
        trainer.run()
        saliencies[amp] = sum(float(s.sum()) for s in pruner.saliency.averages())
        assert trainer.amp is amp and pruner.saliency.batches > 0
    assert 0.1 < saliencies[True] / saliencies[False] < 10
