"""Outputs of a pruning run: model files, report.json, report.md, plots; and reading them back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pruning_client import plots
from pruning_client.calibration import Calibration

if TYPE_CHECKING:
    from pruning_client.graph import ModelGraph
    from pruning_client.latency import LatencyModel
    from pruning_client.targets import Target

REPORT_JSON = "report.json"


@dataclasses.dataclass
class TargetReport:
    target: str
    fingerprint: str
    backend: str
    accelerator: str
    latency_before_ms: float
    latency_before_p10_ms: float
    latency_before_p90_ms: float
    latency_after_ms: float
    latency_after_p10_ms: float
    latency_after_p90_ms: float
    predicted_after_ms: float
    target_ms: float
    speedup: float
    # the latency model: "line" (a x tables' sum + b fitted), "per-kind" (a slope per kind of layer),
    # "anchored" (through the unpruned model: no line fitted) or "tables" (uncalibrated); its
    # leave-one-out residuals
    latency_model: str
    calibration_a: float
    calibration_b: float
    calibration_residuals: list[float]
    calibration_slopes: dict[str, float]  # per-kind: each fitted kind's slope (the others at calibration_a)
    # (measured - sum of the layer tables) / measured, unpruned: what runs outside the timed layers
    # (attention, norms, pooling) net of what fusion saves; large means the intercept carries much
    latency_outside_tables: float
    points_measured: int
    points_cached: int
    # the service's timing: "reference" (every time relative to a reference layer: drift-compensated) or "absolute"
    timing: str = "absolute"
    # quality in percent, per task: top-1 (classification) or COCO mAP@0.5 and mAP@[.5:.95] (detection)
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    map50_before: float | None = None
    map50_after: float | None = None
    map_before: float | None = None
    map_after: float | None = None

    @property
    def ratio(self) -> float:
        return self.latency_after_ms / self.latency_before_ms


def target_reports(
    targets: Sequence[Target],
    final: Sequence[tuple],
    keep: np.ndarray,
    target_ms: Sequence[float],
    quality: tuple[dict[str, float], dict[str, float]],
) -> list[TargetReport]:
    """One report per target: ``final`` holds its (before, after) measurements, ``quality`` the task's
    metrics (before, after), e.g. ``({"accuracy": 91.0}, {"accuracy": 90.2})``."""
    metrics = {f"{k}_before": v for k, v in quality[0].items()} | {f"{k}_after": v for k, v in quality[1].items()}
    return [
        TargetReport(
            target=t.profiler.url,
            fingerprint=t.profiler.fingerprint,
            backend=t.profiler.device.backend,
            accelerator=t.profiler.device.accelerator,
            latency_before_ms=b.median_ms,
            latency_before_p10_ms=b.p10_ms,
            latency_before_p90_ms=b.p90_ms,
            latency_after_ms=a.median_ms,
            latency_after_p10_ms=a.p10_ms,
            latency_after_p90_ms=a.p90_ms,
            predicted_after_ms=t.latency.predict(keep),
            target_ms=goal,
            speedup=b.median_ms / a.median_ms,
            latency_model=t.latency.calibration.kind,
            calibration_a=t.latency.calibration.a,
            calibration_b=t.latency.calibration.b,
            calibration_slopes=t.latency.calibration.slopes,
            calibration_residuals=t.latency.calibration.residuals,
            latency_outside_tables=1 - t.latency.table_times(t.latency.graph.sizes).sum() / b.median_ms,
            points_measured=t.profiler.measured_points,
            points_cached=t.profiler.cached_points,
            timing=t.profiler.device.timing,
            **metrics,
        )
        for t, (b, a), goal in zip(targets, final, target_ms, strict=True)
    ]


def staircases(
    latency: LatencyModel, graph: ModelGraph, channels_before: dict[str, tuple[int, int]], count: int = 3
) -> list[dict]:
    """The rows of the slowest dense layers at their final cin, over cout up to their original counts:
    the layers whose channels weigh most in the budget (layers of one shape at one cin draw one row, and
    the others are named with it). Drawn from the points the run fetched (the knapsack priced every cout
    at the cin it chose); only the slowest row fetches a grid of 32 where fewer than 4 points are known,
    the others are left out then (each point would be a measurement on the target)."""
    per_layer = latency.layer_latency(graph.sizes)
    dense = [i for i, lc in enumerate(graph.layers) if lc.shape.op == "conv2d" and lc.shape.groups != 0]
    rows: dict[tuple[str, int, int], list] = {}
    for i in sorted(dense, key=lambda i: -per_layer[i]):
        lc = graph.layers[i]
        rows.setdefault((lc.shape.key, lc.cin, channels_before[lc.name][1]), []).append(lc)
    out = []
    for (key, cin, original), layers in rows.items():
        known = {c for (k, c) in latency.tables.points.get(key, {}) if k == cin and c <= original}
        couts = known | {lc.cout for lc in layers}
        if len(couts) < 4:
            if out:
                continue
            couts |= set(range(max(1, original // 32), original + 1, max(1, original // 32)))
        couts = sorted(couts)
        out.append({
            "layer": layers[0].name, "shape": key, "cin": cin, "chosen_cout": layers[0].cout,
            "same_row": [{"layer": lc.name, "cout": lc.cout} for lc in layers[1:]],
            "points": [[c, ms] for c, ms in zip(couts, latency.row(key, cin, couts), strict=True)],
        })  # fmt: skip
        if len(out) == count:
            break
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "token"}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_report(
    out: Path,
    *,
    settings,
    reports: list[TargetReport],
    history,
    measured_steps: list[list[float]],
    channels_before: dict[str, tuple[int, int]],
    channels_after: dict[str, tuple[int, int]],
    model: nn.Module,
    onnx_bytes: bytes,
    staircases: list[dict],
    seconds: float,
    graph: dict | None = None,
    world: int = 1,
    training: dict | None = None,
    task: dict | None = None,
    landing: list[dict] | None = None,
    warnings: list[str] | None = None,
) -> Path:
    """Write the run's outputs; ``graph`` notes what was held out of pruning or the latency model,
    ``task`` what the task adds (detection: host post-processing time, the detections plot)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model, out / "model.pt")  # architecture + weights: the pruned shapes are not a registry model
    (out / "model.onnx").write_bytes(onnx_bytes)
    body = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": _jsonable(dataclasses.asdict(settings)),
        "processes": world,  # training processes (torchrun); the pruning decisions were rank 0's
        "training": training or {},  # per phase run in this process: images (all ranks), seconds, images/s
        "targets": [{**dataclasses.asdict(r), "latency_ratio": r.ratio} for r in reports],
        "history": [
            {**dataclasses.asdict(h), "measured_ms": measured_steps[i] if i < len(measured_steps) else None}
            for i, h in enumerate(history)
        ],
        "channels": {
            name: {"before": list(channels_before[name]), "after": list(channels_after.get(name, (0, 0)))}
            for name in channels_before
        },
        "staircases": staircases,
        "warnings": warnings or [],  # what a person should look at before deploying (quality_warnings)
        "landing": landing or [],  # the rounds after the schedule: paired measurements, repair or give-back
        "graph": graph or {},
        "task": {"name": settings.task, **(task or {})},
        "seconds": seconds,
    }
    (out / REPORT_JSON).write_text(json.dumps(body, indent=2))
    write_views(out, body)
    return out


def write_views(out: Path, body: dict) -> list[Path]:
    """What a person reads, all made from report.json's ``body``: report.md with its PNG plots, and
    report.html, one file with the same plots as inline SVG that opens offline, from disk."""
    from pruning_client.report_html import html

    written = [out / "report.md", out / "report.html"]
    written[0].write_text(markdown(body))
    svgs = {}
    for stem, fig in plots.report_figures(body).items():
        svgs[stem] = plots.figure_svg(fig)
        written.append(plots.save_figure(fig, out / f"{stem}.png"))
    written[1].write_text(html(body, svgs, out))
    return written


def quality_warnings(quality: tuple[dict[str, float], dict[str, float]], max_drop: float) -> list[str]:
    """The metrics that fell by more than ``max_drop`` points: pruned too far, or fine-tuned too little."""
    before, after = quality
    return [
        f"{k} fell {before[k] - after[k]:.2f} points ({before[k]:.2f} -> {after[k]:.2f} %), more than --max-drop "
        f"{max_drop:g}"
        for k in before
        if k in after and before[k] - after[k] > max_drop
    ]


def load_report(directory: Path) -> dict:
    path = Path(directory) / REPORT_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {directory} the --out of a finished halp prune?") from None
    except ValueError as e:
        raise ValueError(f"{path} is not a readable report: {e}") from None


def _spread(t: dict, when: str) -> str:
    return f"{t[f'latency_{when}_ms']:.3f} [{t[f'latency_{when}_p10_ms']:.3f}-{t[f'latency_{when}_p90_ms']:.3f}]"


def _latency_model(t: dict) -> str:
    cal = Calibration(t["calibration_a"], t["calibration_b"], kind=t.get("latency_model", "line"),
                      slopes=t.get("calibration_slopes") or {})  # fmt: skip
    errors = np.abs(t.get("calibration_residuals") or [])
    if not len(errors):
        return cal.describe()
    on = f"{len(errors)} paired samples: median {100 * np.median(errors):.1f} %, worst {100 * errors.max():.1f} %"
    return f"{cal.describe()}, leave-one-out errors on {on}"


ROWS = [
    ("latency before (ms)", lambda t: _spread(t, "before")),
    ("latency after (ms)", lambda t: _spread(t, "after")),
    ("predicted after (ms)", lambda t: f"{t['predicted_after_ms']:.3f}"),
    ("target (ms)", lambda t: f"{t['target_ms']:.3f}"),
    ("after / before", lambda t: f"{t['latency_ratio']:.3f}"),
    ("speedup", lambda t: f"{t['speedup']:.2f}x"),
    ("accuracy before (%)", lambda t: _percent(t, "accuracy_before")),
    ("accuracy after (%)", lambda t: _percent(t, "accuracy_after")),
    ("mAP@0.5 before (%)", lambda t: _percent(t, "map50_before")),
    ("mAP@0.5 after (%)", lambda t: _percent(t, "map50_after")),
    ("mAP@[.5:.95] before (%)", lambda t: _percent(t, "map_before")),
    ("mAP@[.5:.95] after (%)", lambda t: _percent(t, "map_after")),
    ("latency model", _latency_model),
    ("outside the layer tables", lambda t: f"{100 * t.get('latency_outside_tables', 0.0):+.0f} %"),
    ("device", lambda t: f"{t['backend']} on {t['accelerator']} ({t['fingerprint']}{_timing(t)})"),
    ("table points measured / cached", lambda t: f"{t['points_measured']} / {t['points_cached']}"),
]  # fmt: skip


def _timing(t: dict) -> str:
    return ", timed against a reference layer" if t.get("timing") == "reference" else ""


def _percent(t: dict, key: str) -> str | None:
    return None if t.get(key) is None else f"{t[key]:.2f}"


def rows(targets: list[dict]) -> list[tuple[str, list[str]]]:
    """The report table's rows for these targets: (label, cells), without the task's absent metrics."""
    out = [(label, [fmt(t) for t in targets]) for label, fmt in ROWS]
    return [(label, cells) for label, cells in out if any(c is not None for c in cells)]


def markdown(body: dict) -> str:
    s = body["settings"]
    lines = [
        f"# HALP pruning report: {s['model']} on {s['data']}",
        "",
        f"Latency ratio {s['latency_ratio']}, batch {s['batch']}, {s['dtype']}, {s['steps']} pruning steps, "
        f"{s['epochs']} fine-tuning epochs; {body['seconds']:.0f} s; {body['created']}.",
        "",
        *(f"> **warning:** {w}\n" for w in body.get("warnings", [])),
        "| | " + " | ".join(t["target"] for t in body["targets"]) + " |",
        "|---|" + "---|" * len(body["targets"]),
    ]
    for label, cells in rows(body["targets"]):
        lines.append(f"| {label} | " + " | ".join(c or "-" for c in cells) + " |")
    lines += ["", "Latencies are medians measured by each target's profiler service, with [p10-p90].", ""]
    task = body.get("task") or {}
    if "host_postprocess_ms" in task:
        lines += [
            f"Box decoding and NMS run on the host, outside the measured network: {task['host_postprocess_ms']:.2f} ms "
            f"per batch of {s['batch']} on {task['host']}.",
            "",
            "![detections before and after pruning](detections.png)",
            "",
        ]
    graph = body.get("graph") or {}
    if graph.get("held"):
        lines += ["## Held out of pruning", "", "| group of | why |", "|---|---|"]
        lines += [f"| {root} | {why} |" for root, why in graph["held"].items()] + [""]
    if graph.get("unmodelled_weight_share", 0) > 0.01:
        share = 100 * graph["unmodelled_weight_share"]
        lines += [f"{share:.0f} % of the weights run outside the conv/linear layers the tables time.", ""]
    if body.get("landing"):
        lines += ["## Landing on the budget", "",
                  "Each round times the pruned model against the unpruned one, interleaved, on every target.", "",
                  "| round | pruned / unpruned (+- spread) | then |", "|---|---|---|"]  # fmt: skip
        for i, r in enumerate(body["landing"], 1):
            measured = ", ".join(
                f"{m:.3f} (+-{100 * e:.1f} %)" for m, e in zip(r["measured"], r["spread"], strict=True)
            )
            lines.append(f"| {i} | {measured} | {r['action']} |")
        lines.append("")
    lines += ["## Channels per layer", "", "| layer | before (cin, cout) | after (cin, cout) |", "|---|---|---|"]
    for name, c in body["channels"].items():
        lines.append(f"| {name} | {tuple(c['before'])} | {tuple(c['after'])} |")
    lines += ["", "![latency per step](latency_steps.png)", "", "![channels](channels.png)", ""]
    if any(t.get("calibration_residuals") for t in body["targets"]):
        lines += ["![the latency model's leave-one-out errors](calibration.png)", ""]
    for i, s in enumerate(plots.report_staircases(body)):
        lines += [f"![staircase of {s['layer']}]({plots.staircase_stem(i)}.png)", ""]
    return "\n".join(lines)
