"""What the report warns about: a quality metric that fell by more points than the user allows."""

from __future__ import annotations

from pruning_client.report import quality_warnings


def test_a_drop_past_max_drop_is_warned_about_and_a_smaller_one_is_not():
    before, after = {"map50": 80.0, "map": 50.0}, {"map50": 74.5, "map": 48.0}
    (warning,) = quality_warnings((before, after), max_drop=5.0)
    assert warning.startswith("map50 fell 5.50 points (80.00 -> 74.50 %)") and "--max-drop 5" in warning
    assert quality_warnings((before, after), max_drop=6.0) == []
    assert quality_warnings(({"accuracy": 90.0}, {"accuracy": 91.0}), max_drop=0.0) == []  # a gain is no drop
