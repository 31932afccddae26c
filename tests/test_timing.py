"""The shared timing loop, driven by a synthetic clock so its statistics can be checked exactly."""

from __future__ import annotations

import numpy as np

from profiler_service.timing import TimingPolicy, measure


class FakeNetwork:
    """Per-run latencies drawn from a known distribution; records how it was driven."""

    def __init__(self, per_run_ms: float, jitter: float = 0.0, seed: int = 0) -> None:
        self.per_run_ms, self.jitter = per_run_ms, jitter
        self.rng = np.random.default_rng(seed)
        self.calls: list[int] = []

    def run_batch(self, k: int) -> float:
        self.calls.append(k)
        return self.per_run_ms * (1 + self.jitter * self.rng.standard_normal())


def test_constant_latency_stops_after_two_rounds():
    net = FakeNetwork(0.5)
    stats = measure(net.run_batch, TimingPolicy(warmup_ms=0, round_size=10))
    assert stats.median_ms == stats.p10_ms == stats.p90_ms == 0.5
    assert stats.runs == 20


def test_tiny_layers_are_batched_above_clock_resolution():
    net = FakeNetwork(0.001)
    stats = measure(net.run_batch, TimingPolicy(warmup_ms=0, min_sample_ms=0.2))
    assert stats.batch == 200 and set(net.calls[3:]) == {200}


def test_noisy_latency_reports_spread_and_a_stable_median():
    net = FakeNetwork(1.0, jitter=0.1, seed=1)
    stats = measure(net.run_batch, TimingPolicy(warmup_ms=0, rel_tol=0.005, max_samples=400))
    assert stats.p10_ms < stats.median_ms < stats.p90_ms
    assert abs(stats.median_ms - 1.0) < 0.03
    assert abs((stats.p90_ms - stats.p10_ms) - 2 * 1.2816 * 0.1) < 0.06  # normal p10..p90 width


def test_sample_cap_bounds_an_unstable_measurement():
    net = FakeNetwork(1.0, jitter=1.0, seed=2)
    stats = measure(net.run_batch, TimingPolicy(warmup_ms=0, rel_tol=1e-9, max_samples=60))
    assert stats.runs == 60


class DriftingHost:
    """A shared machine whose speed moves between runs: every network it runs slows by the same factor."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.speed = 1.0
        self.log: list[str] = []

    def network(self, name: str, per_run_ms: float):
        def run_batch(k: int) -> float:
            self.log.append(name)
            self.speed = float(np.clip(self.speed * np.exp(0.02 * self.rng.standard_normal()), 0.5, 2.0))
            return per_run_ms * self.speed

        return run_batch


def test_a_reference_between_samples_cancels_the_hosts_drift():
    policy = TimingPolicy(warmup_ms=0, rel_tol=1e-9, max_samples=200)
    host = DriftingHost(seed=3)
    absolute = [measure(host.network("net", 2.0), policy).median_ms for _ in range(5)]
    assert max(absolute) / min(absolute) > 1.1  # the drift shows in plain timings

    relative = [measure(host.network("net", 2.0), policy, reference=host.network("ref", 0.5)) for _ in range(5)]
    assert all(abs(s.median_ms - 4.0) < 0.04 for s in relative)  # 2.0 ms per 0.5 ms reference run
    assert abs(relative[0].scaled(0.5).median_ms - 2.0) < 0.02
    host.log.clear()
    measure(host.network("net", 2.0), policy, reference=host.network("ref", 0.5))
    warm = ["net"] * 3 + ["ref"] * 4  # both warmed up, then the first reference run
    timed = host.log[len(warm) :]
    assert host.log[: len(warm)] == warm and timed == ["net", "ref"] * (len(timed) // 2)  # a reference each side
