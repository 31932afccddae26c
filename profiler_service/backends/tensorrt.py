"""TensorRT 10/11 backend: ONNX -> strongly typed network -> engine, timed with CUDA events.

Written against the TensorRT 10.x/11.x Python API (no ``build_engine``, no
binding indices, no FP16/INT8 builder flags: the dtype is in the ONNX).
TensorRT is imported lazily so CPU machines never load it.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from profiler_service.backends.base import Backend, BackendUnavailable, DeviceDescription, UnsupportedModel
from profiler_service.backends.onnx_layer import layer_onnx
from profiler_service.shapes import LayerShape

WORKSPACE_BYTES = 1 << 30


def _driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _random(torch, shape: list[int], dtype, device):
    """Inputs like real data, in the tensor's own dtype: zeros can take kernels' shortcuts (sparsity,
    denormal-free paths) that real activations never do."""
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(device, dtype)
    if dtype == torch.bool:
        return (torch.rand(shape, generator=gen) > 0.5).to(device)
    return torch.randint(0, 8, shape, generator=gen).to(device, dtype)


class _EngineRunner:
    """Binds torch CUDA buffers to an execution context; replays it on a private stream."""

    def __init__(self, trt, torch, engine, input_shapes: dict[str, list[int]] | None, device) -> None:
        self._torch, self._engine = torch, engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise UnsupportedModel("TensorRT could not create an execution context")
        dtypes = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.bfloat16: torch.bfloat16,
            trt.int8: torch.int8,
            trt.int32: torch.int32,
            trt.int64: torch.int64,
            trt.bool: torch.bool,
        }
        self._buffers = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:  # inputs first: output shapes depend on them
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            shape = list((input_shapes or {}).get(name) or engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise UnsupportedModel(f"input {name!r} has dynamic shape {shape}; pass its shape")
            if not self._context.set_input_shape(name, shape):
                raise UnsupportedModel(f"TensorRT rejected shape {shape} for input {name!r}")
            self._buffers[name] = _random(torch, shape, dtypes[engine.get_tensor_dtype(name)], device)
        for name in names:
            if name not in self._buffers:
                shape = list(self._context.get_tensor_shape(name))
                self._buffers[name] = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(name)], device=device)
        for name, buf in self._buffers.items():
            if not self._context.set_tensor_address(name, buf.data_ptr()):
                raise UnsupportedModel(f"TensorRT rejected the address of tensor {name!r}")
        # Non-default stream: the default one costs extra synchronisation in execute_async_v3.
        self._stream = torch.cuda.Stream(device)
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._enqueue()  # one un-captured run, as capture requires
        torch.cuda.synchronize()
        self._graph = self._capture()

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise UnsupportedModel("TensorRT execute_async_v3 failed")

    def _capture(self):
        """A CUDA graph of one enqueue; None (plain enqueue) when capture fails, as in trtexec."""
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                self._enqueue()
        except (RuntimeError, UnsupportedModel):
            torch.cuda.synchronize()
            return None
        return graph

    def run_batch(self, k: int) -> float:
        with self._torch.cuda.stream(self._stream):
            self._start.record(self._stream)
            for _ in range(k):
                if self._graph is not None:
                    self._graph.replay()
                else:
                    self._enqueue()
            self._end.record(self._stream)
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / k

    def close(self) -> None:
        self._graph = self._context = self._engine = None
        self._buffers.clear()


class TensorRTBackend(Backend):
    name = "tensorrt"
    gpu = True

    def __init__(self, cache_dir: Path, device_index: int = 0) -> None:
        try:
            import tensorrt as trt
        except ImportError as e:
            raise BackendUnavailable(f"TensorRT is not installed (pip install 'halp[tensorrt]'): {e}") from e
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable(f"the TensorRT backend uses torch for CUDA buffers: {e}") from e
        if not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device for TensorRT")
        if device_index >= torch.cuda.device_count():
            raise BackendUnavailable(f"no GPU {device_index}: this host has {torch.cuda.device_count()}")
        torch.cuda.set_device(device_index)  # TensorRT builds and runs on the current device
        self._trt, self._torch, self._device_index = trt, torch, device_index
        self._device = torch.device("cuda", device_index)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._builder = trt.Builder(self._logger)
        self._runtime = trt.Runtime(self._logger)
        self._cache_lock = threading.Lock()
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._cache_path = cache_dir / f"trt-timing-{self.describe().fingerprint}.cache"
        self._cache_bytes = self._cache_path.read_bytes() if self._cache_path.exists() else b""
        self.threads = None

    def describe(self) -> DeviceDescription:
        props = self._torch.cuda.get_device_properties(self._device_index)
        return DeviceDescription(
            accelerator=props.name,
            memory_bytes=int(props.total_memory),
            backend=self.name,
            backend_version=self._trt.__version__,
            extra={
                "cuda": str(self._torch.version.cuda),
                "driver": _driver_version(),
                "compute_capability": f"{props.major}.{props.minor}",
            },
        )

    def _network(self):
        trt = self._trt
        # STRONGLY_TYPED is opt-in on 10.x and always on (value changed) in 11.x: use the name.
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return self._builder.create_network(0 if flag is None else 1 << int(flag))

    def _engine(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None):
        trt = self._trt
        network = self._network()
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UnsupportedModel(f"TensorRT cannot parse the ONNX: {errors}")
        config = self._builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        with self._cache_lock:
            cache = config.create_timing_cache(self._cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
        if dynamic:
            profile = self._builder.create_optimization_profile()
            for tensor in dynamic:
                shape = (input_shapes or {}).get(tensor.name)
                if not shape:
                    raise UnsupportedModel(f"input {tensor.name!r} has dynamic shape; pass its shape")
                profile.set_shape(tensor.name, shape, shape, shape)
            config.add_optimization_profile(profile)
        plan = self._builder.build_serialized_network(network, config)
        if plan is None:
            raise UnsupportedModel("TensorRT could not build an engine for this network")
        self._merge_timing_cache(config, config.get_timing_cache())
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise UnsupportedModel("TensorRT could not deserialize the engine it built")
        return engine

    def _merge_timing_cache(self, config, built) -> None:
        """Fold a build's cache into the one on disk, so later builds skip known tactics."""
        with self._cache_lock:
            merged = config.create_timing_cache(self._cache_bytes)
            merged.combine(built, False)
            data = bytes(merged.serialize())
            tmp = self._cache_path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self._cache_path)
            self._cache_bytes = data

    def build_layer(self, shape: LayerShape, cin: int, cout: int) -> _EngineRunner:
        engine = self._engine(layer_onnx(shape, cin, cout), None)
        return _EngineRunner(self._trt, self._torch, engine, None, self._device)

    def build_model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None) -> _EngineRunner:
        engine = self._engine(onnx_bytes, input_shapes)
        return _EngineRunner(self._trt, self._torch, engine, input_shapes, self._device)
