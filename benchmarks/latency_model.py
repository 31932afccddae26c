"""SPEC 7.2: predicted vs measured end-to-end latency of random pruned configurations, CPU service.

20 random block-aligned (8-channel) configurations each of ResNet-18, ResNet-50 and MobileNetV2 at
224x224, batch 1: tables and whole-model latency both from a local `halp serve --backend onnxruntime
--threads 1` (whole models: median of three measurements); the latency model is calibrated on the
unpruned model and two random thinned copies.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import label_axes, parse_args, profiler_url, save_plot, write

from pruning_client.cache import TableCache
from pruning_client.calibration import CalibrationError
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import MODELS
from pruning_client.plots import pyplot
from pruning_client.remote import ProfilerClient, RemoteTarget
from pruning_client.thinning import pruned_copy

BLOCK = 8
MEASUREMENTS = 3


def random_keep(rng, sizes):
    return np.array([max(BLOCK, int(rng.integers(s // 4, s + 1)) // BLOCK * BLOCK) for s in sizes])


def check_model(name: str, size: int, configs: int, target: RemoteTarget, rng) -> dict:
    torch.manual_seed(0)
    model = MODELS[name](num_classes=1000 if size >= 64 else 10).eval()
    x = torch.randn(1, 3, size, size)
    graph = analyse(model, x)
    latency = LatencyModel(graph, LatencyTables.of(target))
    shape = "x".join(map(str, x.shape))

    def measured(keep) -> float:
        """Median of three service measurements: one alone spreads by +-4 % (more for big models) here."""
        thin = pruned_copy(model, x, graph.first_channels(keep))
        onnx_bytes = export_onnx(thin, x)
        return float(np.median([target.measure(onnx_bytes, shape).median_ms for _ in range(MEASUREMENTS)]))

    start = time.perf_counter()
    probes = [graph.sizes] + [random_keep(rng, graph.sizes) for _ in range(2)]
    calibration: list = []
    for _ in range(3):  # a noise burst can leave three samples without a line: measure them again
        calibration += [(k, measured(k)) for k in probes]
        try:
            fit = latency.calibrate(calibration)
            break
        except CalibrationError as e:
            print(f"  {name}: {e}; measuring the calibration configurations again")
    else:
        raise SystemExit(f"{name}: no line fits the calibration measurements after 3 rounds: the host is too noisy")
    rows = []
    for i in range(configs):
        keep = random_keep(rng, graph.sizes)
        m, p = measured(keep), latency.predict(keep)
        rows.append({"keep": keep.tolist(), "measured_ms": m, "predicted_ms": p, "error": (p - m) / m})
        print(f"  {name} {i + 1}/{configs}: measured {m:.3f} ms, predicted {p:.3f} ms, error {(p - m) / m:+.3f}")
    errors = np.abs([r["error"] for r in rows])
    return {
        "model": name,
        "input": list(x.shape),
        "calibration": {"a": fit.a, "b": fit.b, "residuals": fit.residuals},
        "configs": rows,
        "median_abs_error": float(np.median(errors)),
        "worst_abs_error": float(errors.max()),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    args = parse_args(
        __doc__, lambda p: p.add_argument("--state", type=Path, help="reuse a service store"), target=True
    )
    plan = (
        [("resnet20", 32, 3)]
        if args.quick
        else [("resnet18", 224, 20), ("resnet50", 224, 20), ("mobilenet_v2", 224, 20)]
    )
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state or Path(tmp)
        with profiler_url(args, state) as url, ProfilerClient(url) as client:
            target = RemoteTarget(client, TableCache(state / "cache"))
            results = [check_model(name, size, n, target, rng) for name, size, n in plan]
            device = target.device.model_dump()
    for r in results:
        print(f"{r['model']}: median |error| {r['median_abs_error']:.3f}, worst {r['worst_abs_error']:.3f}")
    write(
        args.out,
        "latency_model",
        {"device": device, "models": results, "targets": {"median": 0.05, "worst": 0.10}},
        args.quick,
    )

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for r in results:
        ax.scatter(
            [c["measured_ms"] for c in r["configs"]], [c["predicted_ms"] for c in r["configs"]], label=r["model"], s=14
        )
    lim = max(max(c["measured_ms"], c["predicted_ms"]) for r in results for c in r["configs"]) * 1.05
    ax.plot([0, lim], [0, lim], "k:", label="predicted = measured")
    label_axes(ax, "measured by the CPU service (ms)", "predicted a * sum(tables) + b (ms)")
    save_plot(fig, args.out, "latency_model", args.quick)


if __name__ == "__main__":
    main()
