"""Backends: the same one-layer network built and timed by each, on real hardware where present."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from profiler_service.backends import BackendUnavailable, create_backend
from profiler_service.backends.onnx_layer import layer_input_shape, layer_onnx
from profiler_service.backends.torch_backend import layer_module
from profiler_service.shapes import parse_shape
from profiler_service.timing import TimingPolicy, measure

SHAPES = [
    ("conv2d-k3x3-s1x1-p1x1-d1x1-g1-h14w14-b2-fp32", 16, 24),
    ("conv2d-k3x3-s2x2-p1x1-d1x1-gdw-h14w14-b1-fp32", 32, 32),
    ("conv2d-k1x1-s1x1-p0x0-d1x1-g4-h7w7-b1-fp32", 16, 8),
    ("conv2d-k3x3-s1x1-p2x2-d2x2-g1-h9w11-b1-fp32", 8, 8),
    ("linear-t1-b4-fp32", 64, 10),
    ("linear-t7-b2-fp32", 32, 16),
]
QUICK = TimingPolicy(warmup_ms=5, max_ms=200)
HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no NVIDIA GPU visible to torch on this machine")


@pytest.mark.parametrize("key,cin,cout", SHAPES)
def test_onnx_layer_matches_the_torch_layer(key, cin, cout):
    """The ONNX graph and the torch module are the same layer: same output shape, ReLU applied."""
    shape = parse_shape(key)
    session = ort.InferenceSession(layer_onnx(shape, cin, cout), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(layer_input_shape(shape, cin)).astype(np.float32)
    y = session.run(None, {"x": x})[0]
    with torch.inference_mode():
        expected = layer_module(shape, cin, cout)(torch.from_numpy(x))
    assert y.shape == tuple(expected.shape)
    assert (y >= 0).all() and (y > 0).any()


@pytest.mark.parametrize("name", ["onnxruntime", "torch-cpu"])
@pytest.mark.parametrize("key,cin,cout", SHAPES)
def test_cpu_backends_time_every_layer_kind(name, key, cin, cout):
    backend = create_backend(name, threads=1)
    runner = backend.build_layer(parse_shape(key), cin, cout)
    stats = measure(runner.run_batch, QUICK)
    runner.close()
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms


def test_precisions_are_probed_not_assumed():
    assert "fp32" in create_backend("onnxruntime", threads=1).precisions
    assert "int8" in create_backend("onnxruntime", threads=1).precisions  # Q/DQ graph runs on ORT CPU
    torch_cpu = create_backend("torch-cpu", threads=1)
    assert "int8" not in torch_cpu.precisions
    refused = torch_cpu.device_json()["precisions_refused"]  # a dropped dtype says why, in /device
    assert "int8" in refused and "UnsupportedModel" in refused["int8"] and "fp32" not in refused


def test_threads_are_part_of_the_fingerprint():
    one = create_backend("onnxruntime", threads=1).describe().fingerprint
    two = create_backend("onnxruntime", threads=2).describe().fingerprint
    assert one != two
    assert one == create_backend("onnxruntime", threads=1).describe().fingerprint


def test_cpu_backends_time_against_a_reference_by_default_and_it_is_in_the_fingerprint():
    backend = create_backend("onnxruntime", threads=1)
    plain = create_backend("onnxruntime", threads=1, reference=False)
    assert backend.reference and not plain.reference
    assert backend.description().fingerprint != plain.description().fingerprint  # tables of both never mix
    device = backend.device_json()
    assert device["timing"] == "reference" and 0 < device["reference_ms"] < 100
    assert plain.device_json()["timing"] == "absolute" and "reference_ms" not in plain.device_json()

    shape = parse_shape("conv2d-k3x3-s1x1-p1x1-d1x1-g1-h28w28-b1-fp32")
    ratio = backend.time_layer(shape, 64, 64, QUICK).median_ms / backend.reference_ms
    assert 1.5 < ratio < 8  # 4x the reference's multiply-adds (64 vs 32 channels each side)
    measured_reference = backend.reference_ms
    backend.pin_reference(2 * measured_reference)  # a service keeps its store's value: times scale with it
    assert backend.reference_ms == 2 * measured_reference
    assert 0.75 < backend.time_layer(shape, 64, 64, QUICK).median_ms / (2 * measured_reference) / ratio < 1.33
    with pytest.raises(ValueError, match="positive"):
        backend.pin_reference(0.0)


def test_auto_picks_a_working_backend_and_unknown_names_fail_clearly():
    assert create_backend("auto", threads=1).name in ("tensorrt", "torch-cuda", "onnxruntime")
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        create_backend("cuda-magic")


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-machine error path")
def test_gpu_backends_say_why_they_are_unavailable_without_a_gpu():
    with pytest.raises(BackendUnavailable, match="CUDA"):
        create_backend("torch-cuda")
    with pytest.raises(BackendUnavailable):
        create_backend("tensorrt")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_torch_cuda_times_a_layer_with_cuda_graphs(dtype):
    backend = create_backend("torch-cuda")
    assert dtype in backend.precisions
    shape = parse_shape(f"conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b1-{dtype}")
    runner = backend.build_layer(shape, 64, 64)
    stats = measure(runner.run_batch, QUICK)
    assert 0 < stats.median_ms < 1.0  # one small conv on a datacentre GPU
    assert backend.describe().extra["cuda"]


@pytest.mark.gpu
@needs_gpu
def test_tensorrt_builds_and_times_a_strongly_typed_fp16_layer(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'halp[tensorrt]')")
    backend = create_backend("tensorrt", cache_dir=tmp_path)
    shape = parse_shape("conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b1-fp16")
    runner = backend.build_layer(shape, 64, 64)
    stats = measure(runner.run_batch, QUICK)
    assert 0 < stats.median_ms < 1.0
    assert list(tmp_path.glob("trt-timing-*.cache"))  # the timing cache was merged and written


def test_a_gpu_index_the_host_lacks_is_refused_by_name():
    with pytest.raises(BackendUnavailable, match="no GPU 63" if HAS_CUDA else "CUDA"):
        create_backend("torch-cuda", device_index=63)
