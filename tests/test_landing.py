"""Landing on the budget after the schedule, measured in pairs on a real CPU target (ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import torch

from profiler_service.local_target import LocalTarget
from profiler_service.timing import TimingPolicy
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.landing import LOW, land_on_budget
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet20
from pruning_client.pruner import HALPPruner
from pruning_client.saliency import magnitude_saliency
from pruning_client.targets import Target


def setup_run(target_ratio: float):
    torch.manual_seed(0)
    model, x = resnet20(10).eval(), torch.randn(1, 3, 32, 32)
    graph = analyse(model, x)
    profiler = LocalTarget("onnxruntime", threads=1, policy=TimingPolicy(warmup_ms=5, max_ms=200, rel_tol=0.02))
    # tables that are not this CPU's (every layer 5 units plus cin x cout)
    tables = LatencyTables(fetch=lambda need: {k: {p: 5.0 + p[0] * p[1] for p in pts} for k, pts in need.items()})
    target = Target(profiler, LatencyModel(graph, tables))
    pruner = HALPPruner(model, x, target.latency, target_ratio=target_ratio, steps=2, interval=1, block_size=4)
    for _ in range(2):
        pruner.prune_now(magnitude_saliency(graph))
    return model, x, target, pruner


def test_a_repair_out_of_reach_keeps_the_trained_model_and_says_so():
    model, x, target, pruner = setup_run(0.5)
    said = []
    rounds = land_on_budget(
        pruner, [target], export_onnx(model, x), lambda: export_onnx(pruner.thinned_copy(), x), 0.01, "1x3x32x32",
        said.append,
    )  # fmt: skip
    assert rounds[-1]["action"].startswith("repair out of reach, model kept as it is: target 0: ")
    # the repairs within reach were taken; the one out of reach took no step, and no step kept the floor
    assert all(h.met for h in pruner.history) and said[-1].endswith(rounds[-1]["action"])
    assert len(pruner.history) == 2 + sum(r["action"] == "repair" for r in rounds)


def test_a_model_pruned_far_under_its_budget_gets_channels_back_and_every_round_is_reported():
    # pruned for 0.1 of tables that are not this CPU's, while the run's budget is 0.7 measured
    model, x, target, pruner = setup_run(0.1)
    overshot = pruner.keep_counts().copy()
    unpruned, said = export_onnx(model, x), []
    rounds = land_on_budget(
        pruner, [target], unpruned, lambda: export_onnx(pruner.thinned_copy(), x), 0.7, "1x3x32x32", said.append
    )
    assert rounds[0]["action"] == "give back" and rounds[0]["measured"][0] < LOW * 0.7
    assert (pruner.keep_counts() >= overshot).sum() > len(overshot) // 2 and pruner.keep_counts().sum() > overshot.sum()
    assert len(said) == len(rounds) and said[0].startswith("landing round 1: measured")
    assert rounds[-1]["measured"][0] > rounds[0]["measured"][0]  # the latency given back is measured
    assert any(h.grew for h in pruner.history), said
    # every round's pair joined the samples the latency model learns from
    assert len(target.samples) == len(rounds) and all(np.isfinite(ms) for _, ms in target.samples)
