"""The backend interface: build a network once, then time it many times."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from profiler_service.shapes import DTYPES, LayerShape, parse_shape
from profiler_service.timing import LatencyStats, TimingPolicy, measure


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (missing package or device)."""


class UnsupportedModel(ValueError):
    """An uploaded model or a layer that this backend cannot build."""


class Runner(Protocol):
    """A built network. ``run_batch(k)`` runs it k times and returns ms per run."""

    def run_batch(self, k: int) -> float: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DeviceDescription:
    accelerator: str
    memory_bytes: int
    backend: str
    backend_version: str
    threads: int | None = None
    channel_block: int = 8  # the channel tile its kernels work in: counts off it pay padding
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Stable hash of what fixes the tables: device kind and software stack, not the host."""
        ident = {
            "accelerator": self.accelerator,
            "memory_bytes": self.memory_bytes,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "threads": self.threads,
            **{k: v for k, v in self.extra.items() if k in FINGERPRINT_EXTRA_KEYS},
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


FINGERPRINT_EXTRA_KEYS = frozenset({"driver", "cuda", "cudnn", "providers", "compute_capability"})

_PROBE_SHAPES = {dtype: parse_shape(f"conv2d-k3x3-s1x1-p1x1-d1x1-g1-h8w8-b1-{dtype}") for dtype in DTYPES}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_channel_block() -> int:
    """Channels per block of the CPU's blocked (NCHWc) conv layout: 16 where AVX-512F holds 16 floats
    a register, else 8. Measured on an AVX-512 Xeon (benchmarks/channel_tile.py): ResNet-18 at half
    width (multiples of 32) took 2.9 % longer with 8 channels fewer per group, 35 % less with 16 fewer."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return 16 if "avx512f" in line.split() else 8
    except OSError:
        pass
    return 8


def host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


class Backend(ABC):
    name: str
    gpu: bool = False  # decides the worker's memory guard and the default cost cap

    @abstractmethod
    def describe(self) -> DeviceDescription: ...

    @abstractmethod
    def build_layer(self, shape: LayerShape, cin: int, cout: int) -> Runner:
        """The one-layer network (conv/linear + bias + ReLU) of one table point."""

    @abstractmethod
    def build_model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None) -> Runner:
        """A whole uploaded ONNX model, for end-to-end validation."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources."""

    def time_layer(self, shape: LayerShape, cin: int, cout: int, policy: TimingPolicy) -> LatencyStats:
        """One table point, built, timed and released."""
        runner = self.build_layer(shape, cin, cout)
        try:
            return measure(runner.run_batch, policy)
        finally:
            runner.close()

    def time_model(
        self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None, policy: TimingPolicy
    ) -> LatencyStats:
        """End-to-end latency of a whole model."""
        runner = self.build_model(onnx_bytes, input_shapes)
        try:
            return measure(runner.run_batch, policy)
        finally:
            runner.close()

    @cached_property
    def precision_probe(self) -> dict[str, str | None]:
        """Dtype -> None if this backend really runs it here (a tiny layer built and run), else why not."""
        found: dict[str, str | None] = {}
        for dtype, shape in _PROBE_SHAPES.items():
            try:
                runner = self.build_layer(shape, 8, 8)
                runner.run_batch(1)
                runner.close()
                found[dtype] = None
            except Exception as e:  # noqa: BLE001 - any failure means "not supported here": keep the reason
                found[dtype] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return found

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(d for d, why in self.precision_probe.items() if why is None)

    def device_json(self) -> dict[str, Any]:
        d = self.describe()
        return {
            "fingerprint": d.fingerprint,
            "backend": d.backend,
            "backend_version": d.backend_version,
            "accelerator": d.accelerator,
            "memory_bytes": d.memory_bytes,
            "threads": d.threads,
            "channel_block": d.channel_block,
            "precisions": list(self.precisions),
            "precisions_refused": {d: why for d, why in self.precision_probe.items() if why is not None},
            "host": platform.node(),
            **d.extra,
        }
