"""PyTorch backends: ``torch-cpu`` (eager) and ``torch-cuda`` (CUDA graph + events).

At batch 1 a GPU layer timed alone is dominated by launch overhead (SPEC 4),
so ``torch-cuda`` captures the layer ``GRAPH_REPEATS`` times into one CUDA
graph, replays that graph and divides: what remains is the kernel time the
deployed, graph-launched network pays. Whole uploaded models (``/measure``)
run the same way: their ONNX graph executed with torch's ops (``onnx_torch``),
captured once into a CUDA graph on ``torch-cuda``, eagerly on ``torch-cpu``.
"""

from __future__ import annotations

import time

from profiler_service.backends.base import (
    Backend,
    BackendUnavailable,
    DeviceDescription,
    UnsupportedModel,
    cpu_channel_block,
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
    def __init__(self, call) -> None:
        self._call = call  # one forward pass, its inputs bound

    def run_batch(self, k: int) -> float:
        import torch

        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(k):
                self._call()
            return (time.perf_counter() - start) * 1e3 / k

    def close(self) -> None:
        self._call = None


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
            channel_block=cpu_channel_block(),
            memory_bytes=host_memory_bytes(),
            backend=self.name,
            backend_version=self._torch.__version__,
            threads=self.threads,
        )

    def build_layer(self, shape: LayerShape, cin: int, cout: int) -> _EagerRunner:
        dtype = _torch_dtype(self._torch, shape.dtype)
        module = layer_module(shape, cin, cout).to(dtype)
        x = self._torch.randn(layer_input_shape(shape, cin), dtype=dtype)
        return _EagerRunner(lambda: module(x))

    def build_model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None) -> _EagerRunner:
        graph = _torch_graph(self._torch, onnx_bytes, input_shapes, "cpu", channels_last=False)
        inputs = graph.make_inputs("cpu")
        return _EagerRunner(lambda: graph.run(inputs))


def _torch_graph(torch, onnx_bytes: bytes, input_shapes, device, channels_last: bool):
    from profiler_service.backends.onnx_torch import TorchGraph

    if not input_shapes:
        raise UnsupportedModel("the torch backends need the model's input shapes (the service resolves them)")
    return TorchGraph(torch, onnx_bytes, input_shapes, device, channels_last=channels_last)


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
        if device_index >= torch.cuda.device_count():
            raise BackendUnavailable(f"no GPU {device_index}: this host has {torch.cuda.device_count()}")
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
        return self._capture(lambda: module(x), GRAPH_REPEATS, (module, x))

    def build_model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None) -> _CudaGraphRunner:
        """The uploaded graph with torch's ops in channels_last, as its layers' tables were timed."""
        graph = _torch_graph(self._torch, onnx_bytes, input_shapes, self._device, channels_last=True)
        inputs = graph.make_inputs(self._device)
        return self._capture(lambda: graph.run(inputs), 1, (graph, inputs))

    def _capture(self, call, repeats: int, keepalive: tuple) -> _CudaGraphRunner:
        """``call`` warmed up on a side stream (cudnn.benchmark picks its algorithms), then captured
        ``repeats`` times into one CUDA graph."""
        torch = self._torch
        stream = torch.cuda.Stream(self._device)
        with torch.inference_mode():
            stream.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    call()
            torch.cuda.current_stream(self._device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(repeats):
                    out = call()
        return _CudaGraphRunner(torch, graph, stream, repeats, (*keepalive, out))
