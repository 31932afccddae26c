"""The latency model, fed with tables measured on this machine's CPU, predicts measured latency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from profiler_service.local_target import LocalTarget
from profiler_service.timing import TimingPolicy
from pruning_client.calibration import probe_keeps
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables, MissingPoints
from pruning_client.models import resnet20
from pruning_client.thinning import pruned_copy

BLOCK = 8  # ONNX Runtime's CPU kernels work on 8-channel blocks (NCHWc): HALP prunes in such blocks


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = resnet20(10).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = analyse(model, x)
    profiler = LocalTarget("onnxruntime", threads=1, policy=TimingPolicy(warmup_ms=10, max_ms=500))
    return model, x, graph, profiler


def random_keep(rng, sizes):
    return np.array([max(BLOCK, int(rng.integers(s // 4, s + 1)) // BLOCK * BLOCK) for s in sizes])


@pytest.mark.usefixtures("quiet_machine")
def test_prediction_matches_side_by_side_measurement(setup):
    """Predicted vs measured on random prunings, each measured as the median of interleaved rounds.

    One whole-model measurement on a shared 2-core VM spreads by several per cent (CI once saw 14 %
    on a single sample); interleaving the configurations spreads machine drift over all of them.
    """
    model, x, graph, profiler = setup
    latency = LatencyModel(graph, LatencyTables.of(profiler))
    rng = np.random.default_rng(0)
    # calibrated as a run is, on the probe configurations (spread from a quarter width to the whole): two
    # random prunings close together made the leave-one-out line through them swing 20 %
    probes = probe_keeps(graph.sizes, [BLOCK] * len(graph.sizes))
    configs = probes + [random_keep(rng, graph.sizes) for _ in range(10)]
    thin = [pruned_copy(model, x, graph.first_channels(keep)) for keep in configs]
    rounds = np.array([[profiler.measure(export_onnx(m, x)).median_ms for m in thin] for _ in range(5)])
    measured = np.median(rounds, axis=0)

    n = len(probes)
    fit = latency.calibrate(list(zip(configs[:n], measured[:n], strict=True)))
    # leave-one-out of three samples is a line through two, extrapolated: it multiplies their few per cent
    # of noise by 2-4 (12.6 % and, on a clean-clone CI's first step, 20.6 % seen); a sanity bound only:
    # the held-out errors below are the claim
    assert fit.a > 0 and len(fit.residuals) == n and all(abs(r) < 0.3 for r in fit.residuals), fit
    errors = np.array([abs(latency.predict(k) - m) / m for k, m in zip(configs[n:], measured[n:], strict=True)])
    assert np.median(errors) <= 0.05 and errors.max() <= 0.10, np.round(errors, 3)


def test_cost_curves_credit_both_sides_of_a_group(setup):
    _, _, graph, _ = setup
    # tables in which each layer costs cin * cout: the exact change is easy to compute by hand
    tables = LatencyTables(fetch=lambda need: {k: {p: float(p[0] * p[1]) for p in pts} for k, pts in need.items()})
    latency = LatencyModel(graph, tables)
    keep = graph.sizes.copy()
    g = next(i for i, grp in enumerate(graph.groups) if grp.root == "stem.0")  # 16 channels, a residual group
    counts = [np.array([keep[i]]) for i in range(len(keep))]
    counts[g] = np.array([8, 16])
    curve = latency.cost_curves(keep, counts)[g]
    smaller = keep.copy()
    smaller[g] = 8
    assert curve[1] == 0.0
    assert curve[0] == pytest.approx(latency.table_sum(smaller) - latency.table_sum(keep))
    out_only = latency.cost_curves(keep, counts, out_only=True)[g]
    assert out_only[0] > curve[0]  # cout-only credit misses what the consumers save


def test_missing_points_are_named_without_a_fetcher(setup):
    _, _, graph, _ = setup
    with pytest.raises(MissingPoints, match="not measured"):
        LatencyModel(graph, LatencyTables()).predict(graph.sizes)
