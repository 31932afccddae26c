"""A 1-D scan of a 3x3 conv on the CPU backend shows the kernels' staircase, not a smooth line."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import CONV, wait_job

COUTS = list(range(8, 129, 2))


def rise_in_largest_jumps(latency: np.ndarray, jumps: int) -> float:
    """Share of the total rise carried by the ``jumps`` largest steps between neighbours.

    A smooth line spreads its rise over every step (about jumps/len here, ~0.2);
    a staircase puts nearly all of it in its few risers.
    """
    steps = np.diff(latency)
    total = latency[-1] - latency[0]
    return float(np.sort(steps)[::-1][:jumps].sum() / total)


@pytest.mark.usefixtures("quiet_machine")
def test_cpu_conv_latency_is_a_staircase(service):
    with httpx.Client(base_url=service.url, timeout=30) as c:
        r = c.post(f"/lut/{CONV}", json={"cin": [64], "cout": COUTS})
        assert wait_job(c, r.headers["location"], timeout=300)["state"] == "done"
        points = sorted(c.get(f"/lut/{CONV}").json()["points"], key=lambda p: p["cout"])
    latency = np.array([p["median_ms"] for p in points])
    rel = np.diff(latency) / latency[:-1]

    assert latency[-1] > 2 * latency[0]  # the layer does get slower with cout
    flat = np.abs(rel) < 0.05
    assert flat.mean() > 0.6, f"too few flat neighbours: {np.round(rel, 3)}"  # plateaus
    assert (rel > 0.08).sum() >= 3, f"too few risers: {np.round(rel, 3)}"  # several distinct steps
    assert rise_in_largest_jumps(latency, jumps=10) > 0.6, np.round(latency, 4)


def test_the_staircase_criterion_rejects_a_smooth_line():
    smooth = np.linspace(0.09, 0.45, len(COUTS))
    assert rise_in_largest_jumps(smooth, jumps=10) < 0.25
    stairs = 0.09 + 0.05 * ((np.array(COUTS) - 1) // 16)
    assert rise_in_largest_jumps(stairs.astype(float), jumps=10) > 0.99
