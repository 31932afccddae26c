"""The backend interface: build a network once, then time it many times."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
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
    timing: str = "absolute"  # or "reference": every time measured relative to REFERENCE (see timing.py)

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
            **({"timing": self.timing} if self.timing != "absolute" else {}),  # tables of both never mix
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


FINGERPRINT_EXTRA_KEYS = frozenset({"driver", "cuda", "cudnn", "providers", "compute_capability"})

_PROBE_SHAPES = {dtype: parse_shape(f"conv2d-k3x3-s1x1-p1x1-d1x1-g1-h8w8-b1-{dtype}") for dtype in DTYPES}
# The reference of drift-compensated timing: a small dense conv (0.1-0.2 ms on one CPU core), cheap
# enough to run between every two samples, compute-bound like the layers it stands beside.
REFERENCE = (parse_shape("conv2d-k3x3-s1x1-p1x1-d1x1-g1-h28w28-b1-fp32"), 32, 32)
# What REFERENCE counts as: the p10 of 0.1 s of its runs, the host's speed when neighbours leave it
# alone, less moved by the moment's load than a median. Still a moment's: two stores created minutes
# apart on the project's VM counted it as 0.133 and 0.107 ms (profiling_cost.py, over 0.3 s then), so
# clients cache reference-timed tables per store scale (RemoteTarget.cache_key).
REFERENCE_POLICY = TimingPolicy(warmup_ms=20.0, rel_tol=1e-9, max_samples=1000, max_ms=100.0)


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
    # Time relative to REFERENCE (timing.py says why). ``create_backend`` turns it on for CPU backends,
    # whose hosts are shared; a dedicated GPU's clocks are pinned by its timing.
    reference: bool = False
    _reference_runner: Runner | None = None
    _reference_ms: float | None = None

    @abstractmethod
    def describe(self) -> DeviceDescription: ...

    @abstractmethod
    def build_layer(self, shape: LayerShape, cin: int, cout: int) -> Runner:
        """The one-layer network (conv/linear + bias + ReLU) of one table point."""

    @abstractmethod
    def build_model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None) -> Runner:
        """A whole uploaded ONNX model, for end-to-end validation."""

    def close(self) -> None:
        """Release device resources (subclasses release theirs, then call this)."""
        if self._reference_runner is not None:
            self._reference_runner.close()
            self._reference_runner = None

    def description(self) -> DeviceDescription:
        """``describe()`` with the timing mode, which the fingerprint includes."""
        return replace(self.describe(), timing="reference") if self.reference else self.describe()

    @property
    def reference_ms(self) -> float | None:
        """What one run of REFERENCE counts as: measured at first use unless pinned (``pin_reference``)."""
        if not self.reference:
            return None
        if self._reference_ms is None:
            self._reference_ms = measure(self._reference().run_batch, REFERENCE_POLICY).p10_ms
        return self._reference_ms

    def pin_reference(self, ms: float) -> None:
        """Count REFERENCE as ``ms``: a service keeps the value its store's first tables were timed at."""
        if not ms > 0:
            raise ValueError(f"the reference time must be positive, not {ms}")
        self._reference_ms = ms

    def _reference(self) -> Runner:
        if self._reference_runner is None:
            self._reference_runner = self.build_layer(*REFERENCE)
        return self._reference_runner

    def _time(self, runner: Runner, policy: TimingPolicy) -> LatencyStats:
        if not self.reference:
            return measure(runner.run_batch, policy)
        scale = self.reference_ms
        assert scale is not None
        return measure(runner.run_batch, policy, reference=self._reference().run_batch).scaled(scale)

    def time_layer(self, shape: LayerShape, cin: int, cout: int, policy: TimingPolicy) -> LatencyStats:
        """One table point, built, timed and released."""
        runner = self.build_layer(shape, cin, cout)
        try:
            return self._time(runner, policy)
        finally:
            runner.close()

    def time_model(
        self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None, policy: TimingPolicy
    ) -> LatencyStats:
        """End-to-end latency of a whole model."""
        runner = self.build_model(onnx_bytes, input_shapes)
        try:
            return self._time(runner, policy)
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
        d = self.description()
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
            "timing": d.timing,
            **({"reference_ms": self.reference_ms} if self.reference else {}),
            **d.extra,
        }
