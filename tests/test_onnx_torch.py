"""Whole ONNX models run with torch's ops (what torch-cpu and torch-cuda time for /measure) match ONNX
Runtime; on a GPU the same graph is captured and replayed as one CUDA graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from profiler_service.backends import create_backend
from profiler_service.backends.base import UnsupportedModel
from profiler_service.backends.onnx_torch import TorchGraph
from profiler_service.timing import TimingPolicy, measure
from pruning_client.export import export_onnx
from pruning_client.models import mobilenet_v2, resnet20
from tests.architectures import FAMILIES

MODELS = {
    "resnet20": lambda: resnet20(10),
    "mobilenet_v2": lambda: mobilenet_v2(10),
    **{name: FAMILIES[name][0] for name in ("shufflenet_v2", "densenet", "convnext", "vit", "swin", "googlenet_aux")},
}
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no NVIDIA GPU visible to torch on this machine")


def exported(name: str, batch: int = 2) -> tuple[bytes, np.ndarray]:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    return export_onnx(MODELS[name]().eval(), x), x.numpy()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_ops_compute_what_onnx_runtime_computes(name):
    data, x = exported(name)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"input": x})
    graph = TorchGraph(torch, data, {"input": list(x.shape)}, "cpu")
    (got,) = graph.run([torch.from_numpy(x)])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_shape_arithmetic_is_folded_at_build_time():
    data, x = exported("shufflenet_v2")  # chunk + view/transpose: Shape, Gather, Div, Concat, Reshape
    graph = TorchGraph(torch, data, {"input": list(x.shape)}, "cpu")
    ops = {n.op_type for n in onnx.load_model_from_string(data).graph.node}
    steps = {op for op, *_ in graph.steps}
    assert {"Shape", "Gather", "Reshape"} <= ops
    assert "Shape" not in steps and "Gather" not in steps and "Reshape" in steps  # per call: tensor kernels only


def test_an_operator_outside_the_table_is_refused_by_name():
    node = helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,jk->ik")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModel, match="unsupported: Einsum"):
        TorchGraph(torch, model.SerializeToString(), {"x": [4, 4]}, "cpu")


def test_torch_cpu_times_a_whole_model_with_the_same_ops():
    data, x = exported("resnet20", batch=1)
    runner = create_backend("torch-cpu", threads=1).build_model(data, {"input": list(x.shape)})
    stats = measure(runner.run_batch, TimingPolicy(warmup_ms=5, max_ms=200))
    runner.close()
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_torch_cuda_times_a_whole_model_as_one_cuda_graph(dtype):
    torch.manual_seed(0)
    model, x = resnet20(10).eval(), torch.randn(64, 3, 32, 32)
    backend = create_backend("torch-cuda")
    runner = backend.build_model(export_onnx(model, x, dtype), {"input": list(x.shape)})
    stats = measure(runner.run_batch, TimingPolicy(warmup_ms=20, max_ms=500))
    runner.close()
    assert 0 < stats.median_ms < 20  # ResNet-20 at batch 64 on a datacentre GPU


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_whole_model_matches_the_eager_model_on_the_gpu():
    torch.manual_seed(0)
    model, x = resnet20(10).eval(), torch.randn(8, 3, 32, 32)
    graph = TorchGraph(torch, export_onnx(model, x), {"input": list(x.shape)}, "cuda", channels_last=True)
    (got,) = graph.run([x.cuda().contiguous(memory_format=torch.channels_last)])
    with torch.no_grad():
        expected = model.cuda()(x.cuda())
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("backend", ["torch-cuda", "tensorrt"])
def test_a_gpu_service_measures_models_and_calibrates_a_latency_model(backend, make_service):
    """POST /measure and calibration on each GPU backend, through a real service (on the GPU check)."""
    if backend == "tensorrt":
        pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'halp[tensorrt]')")
    from pruning_client.graph import analyse
    from pruning_client.latency import LatencyModel, LatencyTables
    from pruning_client.remote import ProfilerClient, RemoteTarget
    from pruning_client.targets import Target
    from pruning_client.thinning import pruned_copy

    svc = make_service(backend=backend)
    torch.manual_seed(0)
    model, x, deploy = resnet20(10).eval(), torch.randn(1, 3, 32, 32), torch.randn(16, 3, 32, 32)
    graph = analyse(model, x, batch=16, dtype="fp16")
    keeps = [graph.sizes, np.maximum(8, graph.sizes * 3 // 4 // 8 * 8), np.maximum(8, graph.sizes // 2 // 8 * 8)]
    probes = [(k, export_onnx(pruned_copy(model, x, graph.first_channels(k)), deploy, "fp16")) for k in keeps]
    with ProfilerClient(svc.url) as client:
        remote = RemoteTarget(client)
        gpu = torch.cuda.get_device_properties(0)
        assert remote.device.backend == backend and remote.device.accelerator == gpu.name
        assert remote.device.memory_bytes == gpu.total_memory  # the GPU's, not the host's
        target = Target(remote, LatencyModel(graph, LatencyTables.of(remote)))
        target.calibrate(probes, "16x3x32x32")
    assert target.before.median_ms > 0 and target.latency.calibration.a > 0
    assert len(target.latency.calibration.residuals) == 3
