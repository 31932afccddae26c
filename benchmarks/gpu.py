"""SPEC 7.7 (needs an NVIDIA GPU): torch-cuda staircase and latency-model check, fp16, batch 1 and 64.

* staircase: a 3x3 conv at 56x56 with 64 input channels, cout 8..256, timed by the torch-cuda backend
  (CUDA graph of 20 launches, CUDA events);
* latency model: 20 random 8-channel-aligned ResNet-50 configurations; tables from the torch-cuda
  backend, whole networks timed the same way (channels_last, fp16, one CUDA graph per network).
Results keep the device name. Not run on CPU-only machines: it exits with a message.
"""

from __future__ import annotations

import numpy as np
import torch
from common import parse_args, save_plot, write

from profiler_service.backends import create_backend
from profiler_service.local_target import LocalTarget
from profiler_service.shapes import parse_shape
from profiler_service.timing import TimingPolicy, measure
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet50
from pruning_client.plots import pyplot
from pruning_client.thinning import pruned_copy

POLICY = TimingPolicy(warmup_ms=50, max_ms=2000)


def network_ms(model: torch.nn.Module, batch: int, size: int) -> float:
    """A whole network as deployed on a GPU: fp16, channels_last, replayed from one CUDA graph."""
    model = model.eval().half().cuda().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
    stream = torch.cuda.Stream()
    with torch.inference_mode():
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            model(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run_batch(k: int) -> float:
        start.record(stream)
        for _ in range(k):
            graph.replay()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / k

    return measure(run_batch, POLICY).median_ms


def latency_check(profiler: LocalTarget, batch: int, configs: int, rng) -> dict:
    torch.manual_seed(0)
    model = resnet50()
    x = torch.randn(1, 3, 224, 224)
    graph = analyse(model, x, batch=batch, dtype="fp16")
    latency = LatencyModel(graph, LatencyTables.of(profiler))

    def measured(keep) -> float:
        keep_idx = graph.first_channels(keep)
        return network_ms(pruned_copy(model, x, keep_idx), batch, 224)

    def random_keep() -> np.ndarray:
        return np.array([max(8, int(rng.integers(s // 4, s + 1)) // 8 * 8) for s in graph.sizes])

    latency.calibrate(
        [(graph.sizes, measured(graph.sizes))] + [(k, measured(k)) for k in (random_keep(), random_keep())]
    )
    rows = []
    for _ in range(configs):
        keep = random_keep()
        m, p = measured(keep), latency.predict(keep)
        rows.append({"measured_ms": m, "predicted_ms": p, "error": (p - m) / m})
    errors = np.abs([r["error"] for r in rows])
    print(f"resnet50 fp16 b{batch}: median |error| {np.median(errors):.3f}, worst {errors.max():.3f}")
    return {
        "a": latency.calibration.a, "b": latency.calibration.b, "configs": rows,
        "median_abs_error": float(np.median(errors)), "worst_abs_error": float(errors.max()),
        "table_sum_full_ms": latency.table_sum(graph.sizes), "network_full_ms": measured(graph.sizes),
    }  # fmt: skip


def main() -> None:
    args = parse_args(__doc__)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs an NVIDIA GPU visible to torch; none here")
    backend = create_backend("torch-cuda")
    device = backend.device_json()
    body: dict = {"device": device, "staircase": {}, "latency_model": {}}
    couts = list(range(8, 65, 8)) if args.quick else list(range(8, 257, 1))
    for batch in (1, 64):
        shape = parse_shape(f"conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b{batch}-fp16")
        row = []
        for c in couts:
            runner = backend.build_layer(shape, 64, c)
            row.append(measure(runner.run_batch, POLICY).median_ms)
            runner.close()
        pairs = [(i, j) for i in range(len(row)) for j in range(i + 1, len(row))]
        wrong_way = np.mean([row[j] < row[i] * 0.9 for i, j in pairs])
        body["staircase"][f"b{batch}"] = {
            "cout": couts,
            "median_ms": row,
            "share_larger_faster_by_10pct": float(wrong_way),
        }
        print(f"batch {batch}: {100 * wrong_way:.1f} % of count pairs are >10 % faster at the larger count")

    profiler = LocalTarget(backend, threads=None, policy=POLICY)
    rng = np.random.default_rng(0)
    configs = 3 if args.quick else 20
    for batch in (1, 64):
        body["latency_model"][f"b{batch}"] = latency_check(profiler, batch, configs, rng)
    write(args.out, "gpu", body, args.quick)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, s in body["staircase"].items():
        ax.plot(s["cout"], np.array(s["median_ms"]) / max(s["median_ms"]), label=f"{key} (normalised)")
    ax.set_xlabel("output channels")
    ax.set_ylabel("latency / max")
    ax.set_title(f"3x3 conv, 56x56, cin 64, fp16, torch-cuda on {device['accelerator']}")
    ax.legend()
    save_plot(fig, args.out, "gpu", args.quick)


if __name__ == "__main__":
    main()
