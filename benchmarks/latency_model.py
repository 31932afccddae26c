"""SPEC 7.2: predicted vs measured end-to-end latency of random pruned configurations, CPU service.

20 random configurations in `halp prune`'s automatic blocks (aligned to the service's
`channel_block`: 16 channels on an AVX-512 CPU, else 8; at most 16 blocks per group) each of
ResNet-18, ResNet-50, MobileNetV2, ResNeXt-50 32x4d and VGG-16-BN at 224x224, batch 1: tables and
whole-model latency both from a
local `halp serve --backend onnxruntime --threads 1` (whole models: three rounds side by side with
the unpruned model, see `measured`).
Calibrated as `halp prune` calibrates: on the unpruned model, copies thinned to 3/4 and 1/2, and
(where two kinds of layer have time of their own) a copy per kind thinning that kind's groups.
Side by side on the same samples and configurations:

  * line:      `a x sum(tables) + b` (the model before per-kind slopes);
  * per-kind:  a slope per kind of layer (dense, depthwise, grouped, linear), ridge-pulled to the
               line's;
  * chosen:    what `LatencyModel.calibrate` uses: per-kind where its leave-one-out errors on the
               calibration samples beat the line's, else the line.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import label_axes, parse_args, profiler_url, save_plot, write

from pruning_client.cache import TableCache
from pruning_client.calibration import CalibrationError, fit, fit_per_kind, kind_probe_keeps, probe_keeps
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import MODELS
from pruning_client.plots import pyplot
from pruning_client.remote import ProfilerClient, RemoteTarget
from pruning_client.schedule import block_sizes
from pruning_client.thinning import pruned_copy

ROUNDS = 3  # side-by-side rounds per configuration


def random_keep(rng, sizes, blocks):
    return np.array([max(b, int(rng.integers(s // 4, s + 1)) // b * b) for s, b in zip(sizes, blocks, strict=True)])


def check_model(name: str, size: int, configs: int, target: RemoteTarget, rng) -> dict:
    torch.manual_seed(0)
    model = MODELS[name](num_classes=1000 if size >= 64 else 10).eval()
    x = torch.randn(1, 3, size, size)
    graph = analyse(model, x)
    latency = LatencyModel(graph, LatencyTables.of(target))
    shape = "x".join(map(str, x.shape))

    unpruned = export_onnx(model, x)
    reference: list[float] = []  # every timing of the unpruned model in this model's run

    def measured(keep) -> float:
        """Side by side with the unpruned model: the median over ROUNDS of (configuration / unpruned),
        times the unpruned model's median over the run. The host drifts by up to 30 % within a
        minute (unpruned ResNet-18 measured 27-35 ms in eight calls in a row); a ratio of timings
        taken a second apart does not."""
        onnx_bytes = export_onnx(pruned_copy(model, x, graph.first_channels(keep)), x)
        ratios = []
        for _ in range(ROUNDS):
            ref = target.measure(unpruned, shape).median_ms
            reference.append(ref)
            ratios.append(target.measure(onnx_bytes, shape).median_ms / ref)
        return float(np.median(ratios) * np.median(reference))

    start = time.perf_counter()
    block = target.device.channel_block
    blocks = block_sizes(graph, align=block)  # `halp prune`'s automatic blocks on this service
    kinds = latency.fitted_kinds()
    probes = probe_keeps(graph.sizes, blocks) + kind_probe_keeps(graph.sizes, blocks, latency.kind_shares())
    samples: list = []
    for _ in range(3):  # a noise burst can leave the samples without a line: measure them again
        samples += [(k, measured(k)) for k in probes]
        by_kind = np.array([latency.by_kind(k, kinds) for k, _ in samples])
        ms = [m for _, m in samples]
        try:
            models = {"line": fit(by_kind.sum(1), ms)}
            break
        except CalibrationError as e:
            print(f"  {name}: {e}; measuring the calibration configurations again")
    else:
        raise SystemExit(f"{name}: no line fits the calibration measurements after 3 rounds: the host is too noisy")
    try:
        models["per-kind"] = fit_per_kind(by_kind, ms, kinds) if kinds else None
    except CalibrationError as e:
        print(f"  {name}: no per-kind model ({e})")
        models["per-kind"] = None
    chosen = latency.calibrate(samples)
    print(f"  {name}: fitted kinds {kinds}; line {models['line'].describe()}; chosen {chosen.describe()}")
    rows = []
    for i in range(configs):
        keep = random_keep(rng, graph.sizes, blocks)
        m, parts = measured(keep), latency.by_kind(keep, kinds)
        row = {"keep": keep.tolist(), "measured_ms": m, "by_kind_ms": parts.tolist()}
        for label, cal in models.items():
            if cal is not None:
                latency.calibration = cal
                row[f"{label}_ms"] = latency.predict(keep)
                row[f"{label}_error"] = (row[f"{label}_ms"] - m) / m
        latency.calibration = chosen
        row["predicted_ms"] = latency.predict(keep)
        row["error"] = (row["predicted_ms"] - m) / m
        rows.append(row)
        side = ", ".join(f"{k} {row[f'{k}_error']:+.3f}" for k in models if f"{k}_error" in row)
        print(f"  {name} {i + 1}/{configs}: measured {m:.3f} ms; errors {side}; chosen {row['error']:+.3f}")

    def summary(key: str) -> dict | None:
        if f"{key}_error" not in rows[0]:
            return None
        errors = np.abs([r[f"{key}_error"] for r in rows])
        return {"median_abs_error": float(np.median(errors)), "worst_abs_error": float(errors.max())}

    chosen_errors = np.abs([r["error"] for r in rows])
    return {
        "model": name,
        "input": list(x.shape),
        "block": block,
        "fitted_kinds": kinds,
        "calibration": {
            "kind": chosen.kind,
            "a": chosen.a,
            "b": chosen.b,
            "slopes": chosen.slopes,
            "residuals": chosen.residuals,
            "samples": len(samples),
        },
        "line": {
            "a": models["line"].a,
            "b": models["line"].b,
            "residuals": models["line"].residuals,
            **summary("line"),
        },
        "per_kind": None
        if models["per-kind"] is None
        else {
            "slopes": models["per-kind"].slopes,
            "b": models["per-kind"].b,
            "residuals": models["per-kind"].residuals,
            **summary("per-kind"),
        },
        "configs": rows,
        # the host's own spread: the unpruned model's timings over the run (p10, median, p90)
        "unpruned_ms_spread": np.percentile(reference, [10, 50, 90]).tolist(),
        "median_abs_error": float(np.median(chosen_errors)),
        "worst_abs_error": float(chosen_errors.max()),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    args = parse_args(
        __doc__, lambda p: p.add_argument("--state", type=Path, help="reuse a service store"), target=True
    )
    plan = (
        [("resnet20", 32, 3)]
        if args.quick
        else [(m, 224, 20) for m in ("resnet18", "resnet50", "mobilenet_v2", "resnext50_32x4d", "vgg16_bn")]
    )
    rng = np.random.default_rng(0)
    # VGG-16-BN's ONNX is 553 MB (its 25,088 x 4,096 classifier): above a service's default upload limit
    os.environ.setdefault("HALP_MAX_UPLOAD_BYTES", str(1 << 30))
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state or Path(tmp)
        with profiler_url(args, state) as url, ProfilerClient(url) as client:
            target = RemoteTarget(client, TableCache(state / "cache"))
            device = target.device.model_dump()
            for name, size, n in plan:  # each model's results written as soon as they are in
                results.append(check_model(name, size, n, target, rng))
                write(args.out, "latency_model", {"device": device, "models": results, "partial": True}, args.quick)
    for r in results:
        per_kind = r["per_kind"] or {"median_abs_error": float("nan"), "worst_abs_error": float("nan")}
        print(f"{r['model']}: line median |error| {r['line']['median_abs_error']:.3f} worst "
              f"{r['line']['worst_abs_error']:.3f}; per-kind {per_kind['median_abs_error']:.3f} / "
              f"{per_kind['worst_abs_error']:.3f}; chosen ({r['calibration']['kind']}) "
              f"{r['median_abs_error']:.3f} / {r['worst_abs_error']:.3f}")  # fmt: skip
    write(
        args.out,
        "latency_model",
        {"device": device, "models": results, "targets": {"median": 0.03, "worst": 0.08}},
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
    label_axes(ax, "measured by the CPU service (ms)", "predicted by the chosen latency model (ms)")
    save_plot(fig, args.out, "latency_model", args.quick)


if __name__ == "__main__":
    main()
