"""In-process measurement with a profiler backend: tables and whole models without a service.

The library and its tests use this where no network is wanted; the remote
workflow asks a profiler service for the same numbers.
"""

from __future__ import annotations

from torch import nn

from profiler_service.backends import Backend, create_backend
from profiler_service.shapes import parse_shape
from profiler_service.timing import TimingPolicy
from pruning_client.export import export_onnx
from pruning_client.graph import ExampleInputs
from pruning_client.latency import LatencyTables, Needed, Point


class LocalProfiler:
    def __init__(
        self, backend: str | Backend = "onnxruntime", threads: int | None = 1, policy: TimingPolicy | None = None
    ):
        self.backend = create_backend(backend, threads) if isinstance(backend, str) else backend
        self.policy = policy or TimingPolicy()
        self.measured = 0

    @property
    def fingerprint(self) -> str:
        return self.backend.describe().fingerprint

    def fetch(self, needed: Needed) -> dict[str, dict[Point, float]]:
        out: dict[str, dict[Point, float]] = {}
        for key, points in needed.items():
            shape = parse_shape(key)
            for cin, cout in sorted(points):
                out.setdefault(key, {})[(cin, cout)] = self.backend.time_layer(shape, cin, cout, self.policy).median_ms
                self.measured += 1
        return out

    def tables(self) -> LatencyTables:
        return LatencyTables(fetch=self.fetch, fingerprint=self.fingerprint)

    def measure_model(self, model: nn.Module, example_inputs: ExampleInputs) -> float:
        return self.backend.time_model(export_onnx(model, example_inputs), None, self.policy).median_ms
