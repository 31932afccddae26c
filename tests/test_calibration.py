"""The a, b fit of a target's latency model, and the leave-one-out errors that say how far to trust it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from profiler_service.local_target import LocalTarget
from profiler_service.timing import TimingPolicy
from pruning_client.calibration import CalibrationError, fit, probe_keeps
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet20


def test_a_line_is_recovered_and_its_inverse_gives_the_capacity():
    cal = fit([10.0, 20.0, 30.0], [2.5, 4.5, 6.5])
    assert (cal.a, cal.b) == pytest.approx((0.2, 0.5))
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
