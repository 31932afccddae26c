"""What the report warns about: a quality metric that fell by more points than the user allows."""

from __future__ import annotations

from pruning_client.report import quality_warnings


def test_a_drop_past_max_drop_is_warned_about_and_a_smaller_one_is_not():
    before, after = {"map50": 80.0, "map": 50.0}, {"map50": 74.5, "map": 48.0}
    (warning,) = quality_warnings((before, after), max_drop=5.0)
    assert warning.startswith("map50 fell 5.50 points (80.00 -> 74.50 %)") and "--max-drop 5" in warning
    assert quality_warnings((before, after), max_drop=6.0) == []
    assert quality_warnings(({"accuracy": 90.0}, {"accuracy": 91.0}), max_drop=0.0) == []  # a gain is no drop


def test_the_latency_model_row_reads_without_leave_one_out_errors_and_with_them():
    """--no-calibrate leaves no residuals: the row once died on the worst of none."""
    from pruning_client.report import _latency_model

    target = {"calibration_a": 1.0, "calibration_b": 0.0, "latency_model": "tables", "calibration_residuals": []}
    assert _latency_model(target) == "tables: 1.000 x tables +0.0000 ms"
    target |= {"latency_model": "line", "calibration_residuals": [0.01, -0.03, 0.02]}
    assert _latency_model(target).endswith("leave-one-out errors on 3 paired samples: median 2.0 %, worst 3.0 %")
