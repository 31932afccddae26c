"""PyTorch backends: ``torch-cpu`` (eager) and ``torch-cuda`` (CUDA graph + events).

At batch 1 a GPU layer timed alone is dominated by launch overhead (SPEC 4),
so ``torch-cuda`` captures the layer ``GRAPH_REPEATS`` times into one CUDA
graph, replays that graph and divides: what remains is the kernel time the
deployed, graph-launched network pays.
"""

from __future__ import annotations

import time

from profiler_service.backends.base import (
    Backend,
    BackendUnavailable,
    DeviceDescription,
    UnsupportedModel,
    cpu_name,
    host_memory_bytes,
)
from profiler_service.backends.onnx_layer import layer_input_shape
from profiler_service.shapes import LayerShape

GRAPH_REPEATS = 20


def _torch_dtype(torch, dtype: str):
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise UnsupportedModel(f"torch backends do not run {dtype} layers")
    return table[dtype]


def layer_module(shape: LayerShape, cin: int, cout: int):
    """The one-layer network as a torch module (float32, on the CPU)."""
    import torch
    from torch import nn

    shape.check_point(cin, cout)
    if shape.op == "linear":
        core = nn.Linear(cin, cout, bias=True)
    else:
        core = nn.Conv2d(
            cin,
            cout,
            kernel_size=shape.kernel,
            stride=shape.stride,
            padding=shape.padding,
            dilation=shape.dilation,
            groups=shape.conv_groups(cin),
            bias=True,
        )
    torch.manual_seed(0)
    return nn.Sequential(core, nn.ReLU(inplace=True)).eval()


class _EagerRunner:
    def __init__(self, module, x) -> None:
        self._module, self._x = module, x

    def run_batch(self, k: int) -> float:
        import torch

        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(k):
                self._module(self._x)
            return (time.perf_counter() - start) * 1e3 / k

    def close(self) -> None:
        self._module = self._x = None


class TorchCpuBackend(Backend):
    name = "torch-cpu"

    def __init__(self, threads: int | None = None) -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable(f"torch is not installed: {e}") from e
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()

    def describe(self) -> DeviceDescription:
        return DeviceDescription(
            accelerator=cpu_name(),
            memory_bytes=host_memory_bytes(),
            backend=self.name,
            backend_version=self._torch.__version__,
            threads=self.threads,
        )

    def build_layer(self, shape: LayerShape, cin: int, cout: int) -> _EagerRunner:
        dtype = _torch_dtype(self._torch, shape.dtype)
        module = layer_module(shape, cin, cout).to(dtype)
        x = self._torch.randn(layer_input_shape(shape, cin), dtype=dtype)
        return _EagerRunner(module, x)

    def build_model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None):
        # Whole uploaded models are ONNX; ONNX Runtime on the same threads runs them.
        from profiler_service.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(threads=self.threads, use_gpu=False).build_model(onnx_bytes, input_shapes)


class _CudaGraphRunner:
    def __init__(self, torch, graph, stream, repeats: int, keepalive: tuple) -> None:
        self._torch, self._graph, self._stream, self._repeats = torch, graph, stream, repeats
        self._keepalive = keepalive  # the graph reads and writes these buffers
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def run_batch(self, k: int) -> float:
        with self._torch.cuda.stream(self._stream):
            self._start.record(self._stream)
            for _ in range(k):
                self._graph.replay()
            self._end.record(self._stream)
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / (k * self._repeats)

    def close(self) -> None:
        self._graph = self._keepalive = None


class TorchCudaBackend(Backend):
    name = "torch-cuda"
    gpu = True

    def __init__(self, device_index: int = 0) -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable(f"torch is not installed: {e}") from e
        if not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA device")
        self._torch = torch
        self._device = torch.device("cuda", device_index)
        torch.backends.cudnn.benchmark = True
        self.threads = None

    def describe(self) -> DeviceDescription:
        torch = self._torch
        props = torch.cuda.get_device_properties(self._device)
        return DeviceDescription(
            accelerator=props.name,
            memory_bytes=int(props.total_memory),
            backend=self.name,
            backend_version=torch.__version__,
            extra={
                "cuda": str(torch.version.cuda),
                "cudnn": str(torch.backends.cudnn.version()),
                "compute_capability": f"{props.major}.{props.minor}",
            },
        )

    def build_layer(self, shape: LayerShape, cin: int, cout: int) -> _CudaGraphRunner:
        torch = self._torch
        dtype = _torch_dtype(torch, shape.dtype)
        fmt = torch.channels_last if shape.op == "conv2d" else torch.contiguous_format
        module = layer_module(shape, cin, cout).to(self._device, dtype, memory_format=fmt)
        x = torch.randn(layer_input_shape(shape, cin), device=self._device, dtype=dtype)
        x = x.contiguous(memory_format=fmt)
        stream = torch.cuda.Stream(self._device)
        with torch.inference_mode():
            stream.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # cudnn.benchmark picks its algorithm on the first calls
                    module(x)
            torch.cuda.current_stream(self._device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(GRAPH_REPEATS):
                    y = module(x)
        return _CudaGraphRunner(torch, graph, stream, GRAPH_REPEATS, (module, x, y))

    def build_model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None):
        from profiler_service.backends.onnxruntime import OnnxRuntimeBackend

        try:
            ort_backend = OnnxRuntimeBackend(use_gpu=True)
        except BackendUnavailable as e:
            raise UnsupportedModel(f"torch-cuda measures whole models through ONNX Runtime's CUDA provider: {e}") from e
        return ort_backend.build_model(onnx_bytes, input_shapes)
