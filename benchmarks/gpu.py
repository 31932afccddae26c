"""SPEC 7.7 (needs an NVIDIA GPU): torch-cuda staircase and latency-model check, fp16, batch 1 and 64.

* staircase: a 3x3 conv at 56x56 with 64 input channels, cout 8..256, timed by the torch-cuda backend
  (CUDA graph of 20 launches, CUDA events);
* latency model: 20 random 8-channel-aligned ResNet-50 configurations; tables from the backend, whole
  networks timed by the same backend's ``build_model`` (what a service's POST /measure runs: the ONNX
  executed with torch's ops in channels_last, replayed from one CUDA graph).

``--backend onnxruntime`` or ``torch-cpu`` rehearses the script on a CPU at small sizes (ResNet-20 at
32x32, fp32, batch 1 and 2), so it cannot rot between GPU runs. Results keep the device name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from common import label_axes, parse_args, save_plot, write

from profiler_service.backends import BackendUnavailable, create_backend
from profiler_service.local_target import LocalTarget
from profiler_service.shapes import parse_shape
from profiler_service.timing import TimingPolicy, measure
from pruning_client.calibration import CalibrationError, anchored
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet20, resnet50
from pruning_client.plots import pyplot
from pruning_client.thinning import pruned_copy


@dataclass(frozen=True)
class Plan:
    dtype: str
    batches: tuple[int, int]
    model: str
    size: int
    couts: list[int]
    configs: int
    policy: TimingPolicy


def plan_for(gpu: bool, quick: bool) -> Plan:
    if gpu:
        couts = list(range(8, 65, 8)) if quick else list(range(8, 257))
        policy = TimingPolicy(warmup_ms=50, max_ms=2000)
        return Plan("fp16", (1, 64), "resnet50", 224, couts, 3 if quick else 20, policy)
    policy = TimingPolicy(warmup_ms=5, max_ms=300, rel_tol=0.05)
    return Plan("fp32", (1, 2), "resnet20", 32, list(range(8, 41, 8)), 2, policy)


def staircase(backend, plan: Plan, batch: int) -> dict:
    shape = parse_shape(f"conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b{batch}-{plan.dtype}")
    row = []
    for c in plan.couts:
        runner = backend.build_layer(shape, 64, c)
        row.append(measure(runner.run_batch, plan.policy).median_ms)
        runner.close()
    pairs = [(i, j) for i in range(len(row)) for j in range(i + 1, len(row))]
    wrong_way = float(np.mean([row[j] < row[i] * 0.9 for i, j in pairs]))
    print(f"batch {batch}: {100 * wrong_way:.1f} % of count pairs are >10 % faster at the larger count")
    return {"cout": plan.couts, "median_ms": row, "share_larger_faster_by_10pct": wrong_way}


def latency_check(backend, plan: Plan, batch: int, rng) -> dict:
    torch.manual_seed(0)
    model = (resnet50() if plan.model == "resnet50" else resnet20(10)).eval()
    x = torch.randn(1, 3, plan.size, plan.size)
    deploy = torch.randn(batch, 3, plan.size, plan.size)
    graph = analyse(model, x, batch=batch, dtype=plan.dtype)  # type: ignore[arg-type]
    latency = LatencyModel(graph, LatencyTables.of(LocalTarget(backend, policy=plan.policy)))

    def measured(keep) -> float:
        onnx_bytes = export_onnx(pruned_copy(model, x, graph.first_channels(keep)), deploy, plan.dtype)
        return backend.time_model(onnx_bytes, {"input": list(deploy.shape)}, plan.policy).median_ms

    def random_keep() -> np.ndarray:
        return np.array([max(8, int(rng.integers(s // 4, s + 1)) // 8 * 8) for s in graph.sizes])

    full_ms = measured(graph.sizes)
    fitted = "line"
    try:
        latency.calibrate([(graph.sizes, full_ms)] + [(k, measured(k)) for k in (random_keep(), random_keep())])
    except CalibrationError as e:  # a noisy host: what a run does then (targets.Target.calibrate)
        latency.calibration, fitted = anchored(latency.table_sum(graph.sizes), full_ms), f"anchored ({e})"
        print(f"{plan.model} b{batch}: no line fits, anchored at the unpruned model: {e}")
    rows = []
    for _ in range(plan.configs):
        keep = random_keep()
        m, p = measured(keep), latency.predict(keep)
        rows.append({"measured_ms": m, "predicted_ms": p, "error": (p - m) / m})
    errors = np.abs([r["error"] for r in rows])
    print(f"{plan.model} {plan.dtype} b{batch}: median |error| {np.median(errors):.3f}, worst {errors.max():.3f}")
    return {
        "model": plan.model, "fit": fitted, "a": latency.calibration.a, "b": latency.calibration.b, "configs": rows,
        "median_abs_error": float(np.median(errors)), "worst_abs_error": float(errors.max()),
        "table_sum_full_ms": latency.table_sum(graph.sizes), "network_full_ms": full_ms,
    }  # fmt: skip


def main() -> None:
    def options(parser) -> None:
        parser.add_argument(
            "--backend", default="torch-cuda",
            help="torch-cuda (the benchmark); onnxruntime or torch-cpu rehearse it on a CPU at small sizes",
        )  # fmt: skip

    args = parse_args(__doc__, options)
    gpu = args.backend in ("torch-cuda", "tensorrt")
    try:
        backend = create_backend(args.backend, threads=None if gpu else 1)
    except BackendUnavailable as e:
        raise SystemExit(f"benchmarks/gpu.py: backend {args.backend} is unavailable here: {e}") from None
    plan = plan_for(gpu, args.quick)
    device = backend.device_json()
    rng = np.random.default_rng(0)
    body: dict = {
        "device": device,
        "backend": args.backend,
        "staircase": {f"b{b}": staircase(backend, plan, b) for b in plan.batches},
        "latency_model": {f"b{b}": latency_check(backend, plan, b, rng) for b in plan.batches},
    }
    name = "gpu" if gpu else f"gpu-rehearsal-{args.backend}"
    write(args.out, name, body, args.quick)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, s in body["staircase"].items():
        ax.plot(s["cout"], np.array(s["median_ms"]) / max(s["median_ms"]), label=f"{key} (normalised)")
    ax.set_title(f"3x3 conv, 56x56, cin 64, {plan.dtype}, {args.backend} on {device['accelerator']}")
    label_axes(ax, "output channels", "latency / max")
    save_plot(fig, args.out, name, args.quick)


if __name__ == "__main__":
    main()
