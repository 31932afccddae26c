"""SPEC 7.2: predicted vs measured end-to-end latency of random pruned configurations, CPU services.

20 random configurations in `halp prune`'s automatic blocks (aligned to the service's
`channel_block`: 16 channels on an AVX-512 CPU, else 8; at most 16 blocks per group) each of
ResNet-18, ResNet-50, MobileNetV2, ResNeXt-50 32x4d and VGG-16-BN at 224x224, batch 1: tables and
whole-model latency (one `/measure` each, as `halp prune` checks a step) from local
`halp serve --backend onnxruntime --threads 1` services, one per timing, side by side:

  * absolute:  every sample timed on its own (`HALP_TIMING_REFERENCE=false`: the service before);
  * reference: every sample timed between two runs of a reference layer (the CPU default).

Calibrated as `halp prune` calibrates: on the unpruned model, copies thinned to 3/4 and 1/2, and
(where two kinds of layer have time of their own) a copy per kind thinning that kind's groups. Fitted
on the same samples and scored on the same configurations:

  * before:    `a x sum(tables) + b` on the unpruned model and the 3/4 and 1/2 copies (the
               calibration before issue 14);
  * line:      the same line on every probe (the per-kind copies too);
  * per-kind:  a slope per kind of layer (dense, depthwise, grouped, linear), ridge-pulled to the
               line's;
  * chosen:    what `LatencyModel.calibrate` uses: per-kind where its leave-one-out errors on the
               calibration samples halve the line's, else the line.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from common import label_axes, parse_args, save_plot, write

from pruning_client.cache import TableCache
from pruning_client.calibration import Calibration, CalibrationError, fit, fit_per_kind, kind_probe_keeps, probe_keeps
from pruning_client.demo import local_service
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import MODELS
from pruning_client.plots import pyplot
from pruning_client.remote import ProfilerClient, RemoteTarget
from pruning_client.schedule import block_sizes
from pruning_client.thinning import pruned_copy

BEFORE = (1.0, 0.75, 0.5)  # the uniform probes of the calibration before the per-kind copies
FULL = ["resnet18", "resnet50", "mobilenet_v2", "resnext50_32x4d", "vgg16_bn"]
TIMINGS = {"absolute": "false", "reference": "true"}  # label -> HALP_TIMING_REFERENCE of its service


def service_env(timing: str, rel_tol: float) -> dict[str, str]:
    return {"HALP_TIMING_REFERENCE": TIMINGS[timing], "HALP_TIMING_REL_TOL": str(rel_tol)}


def random_keep(rng, sizes, blocks):
    return np.array([max(b, int(rng.integers(s // 4, s + 1)) // b * b) for s, b in zip(sizes, blocks, strict=True)])


def check_model(name: str, size: int, configs: int, targets: dict[str, RemoteTarget], rng) -> dict:
    torch.manual_seed(0)
    model = MODELS[name](num_classes=1000 if size >= 64 else 10).eval()
    x = torch.randn(1, 3, size, size)
    graph = analyse(model, x)
    blocks = {label: block_sizes(graph, align=t.device.channel_block) for label, t in targets.items()}
    if len({tuple(b) for b in blocks.values()}) > 1:
        raise SystemExit("the services tile channels differently: their configurations would differ")
    keeps = [random_keep(rng, graph.sizes, next(iter(blocks.values()))) for _ in range(configs)]
    result: dict = {"model": name, "input": list(x.shape), "block": next(iter(targets.values())).device.channel_block}
    for label, target in targets.items():  # one service after the other, each its own tables
        result[label] = check_timing(f"{name} ({label})", model, x, graph, keeps, target)
    return result


def check_timing(name: str, model, x, graph, keeps: list[np.ndarray], target: RemoteTarget) -> dict:
    """Calibrate as `halp prune` does on ``target``, then predict and measure ``keeps`` there."""
    latency = LatencyModel(graph, LatencyTables.of(target))
    shape = "x".join(map(str, x.shape))
    unpruned = export_onnx(model, x)
    unpruned_ms: list[float] = []  # every timing of the unpruned model in this run

    def measured(keep) -> float:
        """One /measure, as `halp prune` checks a step."""
        onnx_bytes = unpruned if keep is None else export_onnx(pruned_copy(model, x, graph.first_channels(keep)), x)
        return target.measure(onnx_bytes, shape).median_ms

    start = time.perf_counter()
    blocks = block_sizes(graph, align=target.device.channel_block)  # `halp prune`'s automatic blocks here
    kinds = latency.fitted_kinds()
    probes = probe_keeps(graph.sizes, blocks) + kind_probe_keeps(graph.sizes, blocks, latency.kind_shares())
    uniform = len(probe_keeps(graph.sizes, blocks, BEFORE))  # the first probes are the uniform ones
    samples: list = []
    for _ in range(3):  # a noise burst can leave the samples without a line: measure them again
        samples += [(k, measured(k)) for k in probes]
        by_kind = np.array([latency.by_kind(k, kinds) for k, _ in samples])
        ms = np.array([m for _, m in samples])
        try:
            old = np.isin(np.arange(len(samples)) % len(probes), np.arange(uniform))  # before: uniform probes
            models = {"before": fit(by_kind[old].sum(1), ms[old]), "line": fit(by_kind.sum(1), ms)}
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
    print(f"  {name}: fitted kinds {kinds}; before {models['before'].describe()}; chosen {chosen.describe()}")
    rows = []
    for i, keep in enumerate(keeps):
        m, parts = measured(keep), latency.by_kind(keep, kinds)
        unpruned_ms.append(measured(None))  # the host's own spread, as this service reports it
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
        print(f"  {name} {i + 1}/{len(keeps)}: measured {m:.3f} ms; errors {side}; chosen {row['error']:+.3f}")

    def summary(error_key: str, cal: Calibration) -> dict:
        errors = np.abs([r[error_key] for r in rows])
        return {
            "kind": cal.kind, "a": cal.a, "b": cal.b, "slopes": cal.slopes, "residuals": cal.residuals,
            "median_abs_error": float(np.median(errors)), "worst_abs_error": float(errors.max()),
        }  # fmt: skip

    chosen_fit = summary("error", chosen)
    return {
        "timing": target.device.timing,
        "reference_ms": target.device.reference_ms,
        "fitted_kinds": kinds,
        # the calibration measurements: per sample, the tables' sum per fitted kind (+ the rest) and the ms
        "samples": [
            {"keep": k.tolist(), "by_kind_ms": b.tolist(), "measured_ms": float(y)}
            for (k, _), b, y in zip(samples, by_kind, ms, strict=True)
        ],  # fmt: skip
        "calibration": {**chosen_fit, "samples": len(samples)},
        "models": {label: summary(f"{label}_error", cal) for label, cal in models.items() if cal is not None},
        "configs": rows,
        # the unpruned model measured after each configuration (p10, median, p90): the host's spread
        # as this service's timing reports it
        "unpruned_ms_spread": np.percentile(unpruned_ms, [10, 50, 90]).tolist(),
        "median_abs_error": chosen_fit["median_abs_error"],
        "worst_abs_error": chosen_fit["worst_abs_error"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--state", type=Path, help="reuse the services' stores (one folder per timing)")
        parser.add_argument("--models", nargs="+", choices=FULL, default=FULL, help="models to measure (default: all)")
        parser.add_argument(
            "--timings", nargs="+", choices=list(TIMINGS), default=list(TIMINGS),
            help="the services' timing, side by side (default: both)",
        )  # fmt: skip
        parser.add_argument(
            "--rel-tol", type=float, default=0.01,
            help="the local services' HALP_TIMING_REL_TOL (not a --target's): "
            "a measurement stops when a round moves its median less",
        )  # fmt: skip
        parser.add_argument("--tag", help="results as latency_model-TAG.* (a run of some models apart from the rest)")

    args = parse_args(__doc__, options, target=True)
    result_name = f"latency_model-{args.tag}" if args.tag else "latency_model"
    plan = [("resnet20", 32, 3)] if args.quick else [(m, 224, 20) for m in args.models]
    rng = np.random.default_rng(0)
    # VGG-16-BN's ONNX is 553 MB (its 25,088 x 4,096 classifier): above a service's default upload limit
    os.environ.setdefault("HALP_MAX_UPLOAD_BYTES", str(1 << 30))
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        state = args.state or Path(tmp)
        if args.target:
            urls = {"target": args.target}
        else:
            urls = {
                label: stack.enter_context(local_service(state / label, env=service_env(label, args.rel_tol)))
                for label in args.timings
            }
        clients = {label: stack.enter_context(ProfilerClient(url)) for label, url in urls.items()}
        targets = {label: RemoteTarget(c, TableCache(state / label / "cache")) for label, c in clients.items()}
        devices = {label: t.device.model_dump() for label, t in targets.items()}
        for name, size, n in plan:  # each model's results written as soon as they are in
            results.append(check_model(name, size, n, targets, rng))
            write(
                args.out,
                result_name,
                {"devices": devices, "rel_tol": args.rel_tol, "models": results, "partial": True},
                args.quick,
            )
    for r in results:
        for label in targets:
            fits = r[label]["models"] | {"chosen": r[label]["calibration"]}
            side = "; ".join(f"{k} {m['median_abs_error']:.3f} / {m['worst_abs_error']:.3f}" for k, m in fits.items())
            print(f"{r['model']} ({label} timing), median / worst |error|: {side}")
    write(
        args.out,
        result_name,
        {"devices": devices, "rel_tol": args.rel_tol, "models": results, "targets": {"median": 0.03, "worst": 0.08}},
        args.quick,
    )

    plt = pyplot()
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 6), squeeze=False)
    for ax, label in zip(axes[0], targets, strict=True):
        for r in results:
            configs = r[label]["configs"]
            ax.scatter(
                [c["measured_ms"] for c in configs], [c["predicted_ms"] for c in configs], label=r["model"], s=14
            )
        lim = max(max(c["measured_ms"], c["predicted_ms"]) for r in results for c in r[label]["configs"]) * 1.05
        ax.plot([0, lim], [0, lim], "k:", label="predicted = measured")
        ax.set_title(f"{label} timing")
        label_axes(ax, "measured by the CPU service (ms)", "predicted by the chosen latency model (ms)")
    save_plot(fig, args.out, result_name, args.quick)


if __name__ == "__main__":
    main()
