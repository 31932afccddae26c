"""The a, b fit of a target's latency model, and the leave-one-out errors that say how far to trust it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from profiler_service.local_target import LocalTarget
from profiler_service.schemas import MeasureResult
from profiler_service.timing import TimingPolicy
from pruning_client.calibration import CalibrationError, anchored, fit, fit_per_kind, kind_probe_keeps, probe_keeps
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet20
from pruning_client.targets import MAX_SETS, NOISY, ROUNDS, Paired, Target, paired


def test_a_line_is_recovered_and_its_inverse_gives_the_capacity():
    cal = fit([10.0, 20.0, 30.0], [2.5, 4.5, 6.5])
    assert (cal.a, cal.b) == pytest.approx((0.2, 0.5), rel=1e-5)  # the robust fit is iterative
    assert cal.to_table(cal.predict(17.0)) == pytest.approx(17.0)
    assert cal.residuals == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)


def test_leave_one_out_errors_show_a_sample_off_the_line():
    """In-sample residuals of a two-point fit are always zero; each sample predicted from the others is not."""
    assert fit([10.0, 20.0], [2.5, 4.5]).residuals == []  # two points: nothing to leave out
    cal = fit([10.0, 20.0, 30.0], [2.5, 5.0, 6.5])  # the middle one 11 % above the line of the others
    errors = cal.residuals
    assert len(errors) == 3
    assert errors[1] == pytest.approx((4.5 - 5.0) / 5.0)  # the line through the outer two predicts 4.5
    assert all(abs(e) > 0.05 for e in errors)


@pytest.mark.parametrize(
    "sums,measured,message",
    [([10.0], [1.0], "two different"), ([10.0, 10.0], [1.0, 2.0], "two different"), ([10, 20], [2, 1], "slope")],
)
def test_a_fit_without_a_line_is_a_clear_error(sums, measured, message):
    with pytest.raises(CalibrationError, match=message):
        fit(sums, measured)


def test_probes_are_whole_blocks_from_full_to_half():
    full, three_quarters, half = probe_keeps(np.array([64, 16, 24]), [8, 8, 16])
    assert full.tolist() == [64, 16, 24]
    assert three_quarters.tolist() == [48, 8, 16] and half.tolist() == [32, 8, 16]


def test_a_local_target_calibrates_a_latency_model_like_a_service():
    """The in-process target has the remote surface: tables on demand, whole models timed from ONNX."""
    target = LocalTarget("onnxruntime", threads=1, policy=TimingPolicy(warmup_ms=2, max_ms=100, rel_tol=0.05))
    model, x = resnet20(10).eval(), torch.randn(1, 3, 32, 32)
    latency = LatencyModel(analyse(model, x), LatencyTables.of(target))
    result = target.measure(export_onnx(model, x), "1x3x32x32")
    assert result.fingerprint == target.fingerprint == target.device.fingerprint and result.median_ms > 0
    assert result.input_shapes and list(result.input_shapes.values()) == [[1, 3, 32, 32]]
    needed = latency.points_for(latency.graph.sizes)
    assert latency.table_sum(latency.graph.sizes) > 0
    assert target.measured_points == sum(len(points) for points in needed.values())  # each distinct point once


def test_a_refit_on_samples_without_a_line_keeps_the_previous_fit():
    """Seen mid-run on a noisy host: the measured steps pulled the slope negative, and the run died."""
    graph = analyse(resnet20(10).eval(), torch.randn(1, 3, 32, 32))
    tables = LatencyTables(
        fetch=lambda need: {k: {p: 1e-3 * (1 + p[0] * p[1] / 256) for p in pts} for k, pts in need.items()}
    )
    target = Target(profiler=None, latency=LatencyModel(graph, tables))  # type: ignore[arg-type]
    target.before = MeasureResult(fingerprint="f", backend="b", median_ms=1.0, p10_ms=1.0, p90_ms=1.0, runs=1)
    full, half = graph.sizes, np.maximum(8, graph.sizes // 2)
    target.samples = [(full, 1.0), (half, 0.6)]
    fitted = target.latency.calibrate(target.samples)

    said = target.learn(half, paired_at(5.0))  # the smaller model measured far slower: the slope turns negative
    assert "no line fits" in said and "slope" in said and "kept" in said
    assert target.latency.calibration is fitted

    target.samples = target.samples[:2]
    said = target.learn(half, paired_at(0.62))  # a plausible sample: refit on all three
    assert said.startswith("measured 0.620 x unpruned") and "refit on 3 samples" in said
    assert target.latency.calibration is not fitted and target.latency.calibration.a > 0


def test_the_robust_line_is_pulled_little_by_one_sample_timed_in_a_noise_burst():
    sums = np.array([1.0, 0.8, 0.6, 0.5, 0.4, 0.3])
    clean = 0.9 * sums + 0.05
    burst = clean.copy()
    burst[3] *= 1.8  # one configuration timed while the host was busy
    robust, least_squares = fit(sums, burst), np.polyfit(sums, burst, 1)
    assert abs(robust.a - 0.9) < 0.02 and abs(robust.b - 0.05) < 0.01
    assert abs(least_squares[1] - 0.05) > 0.05  # what a least-squares refit did with it


def paired_at(ratio: float) -> Paired:
    one = MeasureResult(fingerprint="f", backend="b", median_ms=1.0, p10_ms=1.0, p90_ms=1.0, runs=1)
    return Paired(ratio, 0.01, one, one.model_copy(update={"median_ms": ratio}))


class ScriptedTimings:
    """A stand-in for a noise burst, which cannot be summoned on demand: whole-model timings in a set order."""

    url, fingerprint = "scripted", "scripted"

    def __init__(self, timings: list[float]) -> None:
        self.timings = iter(timings)

    def measure(self, onnx_bytes: bytes, input_shape: str | None = None) -> MeasureResult:
        ms = next(self.timings)
        return MeasureResult(fingerprint="scripted", backend="scripted", median_ms=ms, p10_ms=ms, p90_ms=ms, runs=1)


def test_a_comparison_spoiled_by_a_burst_is_timed_again_and_its_rounds_pooled(monkeypatch):
    """The ratio that made a run stall: 1.09 x unpruned (+-85 %) read once for a model pruned to 0.7."""
    monkeypatch.delenv("HALP_PAIRED_SETS", raising=False)  # the default, not the parallel suite's one set
    burst = [1.0, 0.7, 1.0, 0.7, 1.0, 1.9, 1.0, 0.2, 1.0, 0.7]  # rounds of (unpruned, candidate)
    steady = [1.0, 0.7] * ROUNDS
    (pair,) = paired(ScriptedTimings(burst + steady), b"unpruned", [b"candidate"], "1x3x32x32")
    assert pair.rounds == 2 * ROUNDS and pair.ratio == pytest.approx(0.7)
    assert pair.spread == 0.0  # the two extreme rounds dropped: one per set timed again
    assert "10 rounds" in pair.describe()
    (clean,) = paired(ScriptedTimings(steady), b"unpruned", [b"candidate"], "1x3x32x32")
    assert clean.rounds == ROUNDS and "rounds" not in clean.describe()  # a steady pair is timed once
    hopeless = [1.0, 0.2, 1.0, 1.9] * (MAX_SETS * ROUNDS)
    (noisy,) = paired(ScriptedTimings(hopeless), b"unpruned", [b"candidate"], "1x3x32x32")
    assert noisy.rounds == MAX_SETS * ROUNDS and noisy.spread > NOISY  # and then believed no more than it says
    monkeypatch.setenv("HALP_PAIRED_SETS", "1")
    (once,) = paired(ScriptedTimings(burst), b"unpruned", [b"candidate"], "1x3x32x32")
    assert once.rounds == ROUNDS and once.spread > NOISY  # timed once, as asked, its spread said
    monkeypatch.setenv("HALP_PAIRED_SETS", "0")
    with pytest.raises(ValueError, match="HALP_PAIRED_SETS must be a positive"):
        paired(ScriptedTimings(steady), b"unpruned", [b"candidate"], "1x3x32x32")


@pytest.mark.parametrize(
    "second_try,kept",
    [(0.5, "refit"), (4.0, "tables")],  # the second round of the smaller model draws a line, or still does not
)
def test_calibration_measures_again_then_falls_back_to_the_tables_when_noise_defines_no_line(second_try, kept):
    graph = analyse(resnet20(10).eval(), torch.randn(1, 3, 32, 32))
    tables = LatencyTables(
        fetch=lambda need: {k: {p: 1e-3 * (1 + p[0] * p[1] / 256) for p in pts} for k, pts in need.items()}
    )
    full, half = graph.sizes, np.maximum(8, graph.sizes // 2)
    # 5 interleaved rounds of (full, half): the half model measured slower than the full one on the first try
    first = [2.0, 3.0] * ROUNDS
    again = [2.0, second_try] * ROUNDS
    target = Target(ScriptedTimings(first + again), LatencyModel(graph, tables))  # type: ignore[arg-type]
    note = target.calibrate([(full, b""), (half, b"")], "1x3x32x32")
    assert target.before is not None and target.before.median_ms == 2.0  # the first round's unpruned timing
    if kept == "refit":
        assert note is None and target.latency.calibration.a > 0 and len(target.samples) == 3  # the unpruned once
    else:
        # through the unpruned model's measured 2 ms: what the tables do not time counted as a fixed cost
        outside = 2.0 - target.latency.table_sum(full)
        assert note is not None and "through the unpruned model's 2.000 ms" in note and outside > 1
        assert (target.latency.calibration.a, target.latency.calibration.b) == (1.0, pytest.approx(outside))
        assert target.latency.predict(full) == pytest.approx(2.0)


def test_the_fallback_shifts_tables_that_count_too_much_down_to_the_measured_model():
    cal = anchored(table_sum=3.0, measured_ms=2.0)
    assert (cal.a, cal.b) == (1.0, -1.0) and cal.predict(3.0) == 2.0
    # a 0.6 budget asks the tables' sum to lose 0.8 ms of real time, not 40 % of their own sum
    assert cal.to_table(0.6 * 2.0) == pytest.approx(2.2)


def kinds_graph():
    """MobileNetV2 at 32x32: dense and depthwise convs enough for a slope each, one linear layer."""
    from pruning_client.models import mobilenet_v2

    return analyse(mobilenet_v2(10).eval(), torch.randn(1, 3, 32, 32))


def kind_tables(graph):
    """Tables where a depthwise conv costs per channel what a dense one costs per channel pair (x 40)."""
    depthwise = {lc.shape.key for lc in graph.layers if lc.shape.depthwise}

    def fetch(need):
        return {k: {p: 1e-4 * (40 * p[1] if k in depthwise else p[0] * p[1]) for p in pts} for k, pts in need.items()}

    return LatencyTables(fetch=fetch)


def per_kind_truth(latency, keep, slopes, b=0.05) -> float:
    kinds = latency.fitted_kinds()
    parts = latency.by_kind(keep, kinds)
    return float(sum(slopes[k] * s for k, s in zip(kinds, parts[:-1], strict=True)) + parts[-1] + b)


def test_per_kind_slopes_are_found_and_chosen_where_the_kinds_differ():
    """A depthwise conv that the network runs at 0.4 of its table time, dense convs at 1.1: the line
    misses configurations that thin one kind more than the other; the per-kind model does not."""
    graph = kinds_graph()
    latency = LatencyModel(graph, kind_tables(graph))
    assert latency.fitted_kinds() == ["dense", "depthwise"]
    truth = {"dense": 1.1, "depthwise": 0.4}
    blocks = [8] * len(graph.sizes)
    probes = probe_keeps(graph.sizes, blocks) + kind_probe_keeps(graph.sizes, blocks, latency.kind_shares())
    assert len(probes) == 5
    rng = np.random.default_rng(0)
    noise = lambda: 1 + rng.normal(0, 0.003)  # noqa: E731
    cal = latency.calibrate([(k, per_kind_truth(latency, k, truth) * noise()) for k in probes])
    assert cal.kind == "per-kind" and set(cal.slopes) == {"dense", "depthwise"}
    assert cal.slopes["dense"] == pytest.approx(1.1, rel=0.1) and cal.slopes["depthwise"] == pytest.approx(0.4, rel=0.2)
    assert cal.weight("linear") == 1.0 and cal.weight("depthwise") == pytest.approx(cal.slopes["depthwise"] / cal.a)

    line = fit([latency.by_kind(k, []).sum() for k in probes], [per_kind_truth(latency, k, truth) for k in probes])
    sizes = graph.sizes
    errors = {"per-kind": [], "line": []}
    for _ in range(10):
        keep = np.array([max(8, int(rng.integers(s // 4, s + 1)) // 8 * 8) for s in sizes])
        measured = per_kind_truth(latency, keep, truth)
        errors["per-kind"].append(abs(latency.predict(keep) - measured) / measured)
        errors["line"].append(abs(line.predict(latency.by_kind(keep, []).sum()) - measured) / measured)
    assert max(errors["per-kind"]) < 0.02 < max(errors["line"])


def test_a_line_stays_the_model_where_the_kinds_do_not_differ():
    graph = kinds_graph()
    latency = LatencyModel(graph, kind_tables(graph))
    blocks = [8] * len(graph.sizes)
    probes = probe_keeps(graph.sizes, blocks) + kind_probe_keeps(graph.sizes, blocks, latency.kind_shares())
    cal = latency.calibrate([(k, 1.2 * latency.table_sum(k) + 0.05) for k in probes])
    assert cal.kind == "line" and cal.slopes == {} and cal.a == pytest.approx(1.2)


def test_per_kind_weights_reach_every_sum_the_solvers_use():
    """Prediction, the separable cost curves and the joint problem's factors all count a layer at its
    kind's slope: a change of one group costs the same in each."""
    graph = kinds_graph()
    latency = LatencyModel(graph, kind_tables(graph))
    latency.calibration = fit_per_kind(np.array([[1.0, 1.0, 1.0], [2.0, 1.5, 1.0], [1.0, 3.0, 1.0]]),
                                       [2.0, 2.9, 3.2], ["dense", "depthwise"])  # fmt: skip
    cal = latency.calibration
    keep = graph.sizes
    parts = latency.by_kind(keep, ["dense", "depthwise"])
    manual = cal.slopes["dense"] * parts[0] + cal.slopes["depthwise"] * parts[1] + cal.a * parts[2] + cal.b
    assert latency.predict(keep) == pytest.approx(manual)

    g = int(np.argmax(latency.kind_shares()[:, 1]))  # the group most in depthwise convs
    counts = [np.array([k]) for k in keep]
    counts[g] = np.array([keep[g] // 2, keep[g]])
    smaller = keep.copy()
    smaller[g] = keep[g] // 2
    change = latency.table_sum(smaller) - latency.table_sum(keep)
    assert latency.cost_curves(keep, counts)[g][0] == pytest.approx(change)
    problem = latency.joint_problem(keep, counts, [np.zeros(len(c)) for c in counts])
    choice = [len(c) - 1 for c in counts]
    assert problem.cost(choice) == pytest.approx(latency.table_sum(keep))
    choice[g] = 0
    assert problem.cost(choice) == pytest.approx(latency.table_sum(smaller))
    assert "per-kind" in cal.describe() and "depthwise x" in cal.describe()


def test_kind_probes_thin_each_kinds_groups_and_none_with_one_kind():
    sizes, blocks = np.array([64, 32, 16, 48]), [8] * 4
    shares = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.1, 0.9]])
    dense, depthwise = kind_probe_keeps(sizes, blocks, shares)
    assert dense.tolist() == [32, 32, 8, 48] and depthwise.tolist() == [64, 16, 16, 24]
    assert kind_probe_keeps(sizes, blocks, shares[:, :1]) == []
