"""ONNX Runtime backend: the CPU default.

CPU only: a GPU service is ``torch-cuda`` or ``tensorrt``, whose whole-model timing matches how their
tables are timed; ORT's CUDA provider would time neither the same way nor name the GPU it runs on.
"""

from __future__ import annotations

import os
import time

import numpy as np

from profiler_service.backends.base import (
    Backend,
    BackendUnavailable,
    DeviceDescription,
    UnsupportedModel,
    cpu_channel_block,
    cpu_name,
    host_memory_bytes,
)
from profiler_service.backends.onnx_layer import layer_onnx
from profiler_service.shapes import LayerShape

_NUMPY_DTYPE = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class _SessionRunner:
    def __init__(self, session, input_shapes: dict[str, list[int]] | None) -> None:
        import onnxruntime as ort

        self._session = session
        self._binding = session.io_binding()
        rng = np.random.default_rng(0)
        for inp in session.get_inputs():
            shape = (input_shapes or {}).get(inp.name) or inp.shape
            if any(not isinstance(d, int) or d <= 0 for d in shape):
                raise UnsupportedModel(f"input {inp.name!r} has dynamic shape {inp.shape}; pass its shape explicitly")
            if inp.type not in _NUMPY_DTYPE:
                raise UnsupportedModel(f"input {inp.name!r} has unsupported type {inp.type}")
            data = rng.random(shape).astype(_NUMPY_DTYPE[inp.type])
            value = ort.OrtValue.ortvalue_from_numpy(data, "cpu", 0)
            self._binding.bind_ortvalue_input(inp.name, value)
        for out in session.get_outputs():
            self._binding.bind_output(out.name, "cpu")

    def run_batch(self, k: int) -> float:
        run = self._session.run_with_iobinding
        start = time.perf_counter()
        for _ in range(k):
            run(self._binding)
        return (time.perf_counter() - start) * 1e3 / k

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable(f"onnxruntime is not installed: {e}") from e
        self._ort = ort
        self._providers = ["CPUExecutionProvider"]
        self.threads = threads or os.cpu_count() or 1

    def describe(self) -> DeviceDescription:
        return DeviceDescription(
            accelerator=cpu_name(),
            channel_block=cpu_channel_block(),
            memory_bytes=host_memory_bytes(),
            backend=self.name,
            backend_version=self._ort.__version__,
            threads=self.threads,
            extra={"providers": ",".join(self._providers)},
        )

    def _session(self, onnx_bytes: bytes):
        opts = self._ort.SessionOptions()
        opts.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        try:
            return self._ort.InferenceSession(onnx_bytes, opts, providers=self._providers)
        except Exception as e:  # ORT raises its own exception types for every model problem
            raise UnsupportedModel(f"onnxruntime cannot load the model: {e}") from e

    def build_layer(self, shape: LayerShape, cin: int, cout: int) -> _SessionRunner:
        return _SessionRunner(self._session(layer_onnx(shape, cin, cout)), None)

    def build_model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None) -> _SessionRunner:
        return _SessionRunner(self._session(onnx_bytes), input_shapes)
