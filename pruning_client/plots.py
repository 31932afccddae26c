"""Plots of latency tables (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from profiler_service.schemas import LutTable

MAX_CURVES = 4


def staircase_plot(table: LutTable, path: Path, marked_cout: int | None = None) -> Path:
    """Latency against cout for a few cin, with the p10-p90 band: the staircase of SPEC 1."""
    plt = pyplot()

    cins = sorted({p.cin for p in table.points})
    if len(cins) > MAX_CURVES:  # spread the curves over the range
        cins = [cins[round(i * (len(cins) - 1) / (MAX_CURVES - 1))] for i in range(MAX_CURVES)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for cin in cins:
        pts = sorted((p for p in table.points if p.cin == cin), key=lambda p: p.cout)
        xs = [p.cout for p in pts]
        line = ax.step(xs, [p.median_ms for p in pts], where="mid", label=f"cin={cin}")[0]
        ax.fill_between(
            xs, [p.p10_ms for p in pts], [p.p90_ms for p in pts], step="mid", alpha=0.2, color=line.get_color()
        )
    if marked_cout is not None:
        ax.axvline(marked_cout, color="k", linestyle="--", label=f"chosen cout={marked_cout}")
    ax.set_xlabel("output channels (cout)")
    ax.set_ylabel("latency (ms, median; band p10-p90)")
    ax.set_title(f"{table.shape}\n{table.backend} {table.fingerprint}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def figure_svg(fig) -> str:
    """The figure as an SVG document, for pages that must open with no file or network beside them."""
    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    return buffer.getvalue()


def report_figures(report: dict) -> dict[str, object]:
    """Every figure of a run's report (its report.json), by file stem."""
    figures = {"latency_steps": latency_steps_figure(report), "channels": channels_figure(report)}
    if any(t.get("calibration_residuals") for t in report["targets"]):
        figures["calibration"] = calibration_figure(report)
    for i, staircase in enumerate(report_staircases(report)):
        figures[staircase_stem(i)] = chosen_staircase_figure(staircase)
    return figures


def staircase_stem(i: int) -> str:
    return "staircase" if i == 0 else f"staircase-{i + 1}"


def report_staircases(report: dict) -> list[dict]:
    """The staircases a report holds (reports before ``staircases`` held one, as ``staircase``)."""
    return report.get("staircases") or ([report["staircase"]] if report.get("staircase") else [])


def latency_steps_figure(report: dict):
    """Predicted and measured latency at each pruning step, per target, against the budgets."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [h["step"] for h in report["history"]]
    for t, target in enumerate(report["targets"]):
        label = target["target"]
        line = ax.plot(steps, [h["predicted_ms"][t] for h in report["history"]], "o-", label=f"predicted {label}")[0]
        ax.plot(
            steps, [h["budget_ms"][t] for h in report["history"]], ":", color=line.get_color(), label=f"budget {label}"
        )
        measured = [(h["step"], h["measured_ms"][t]) for h in report["history"] if h.get("measured_ms")]
        if measured:
            ax.plot(*zip(*measured, strict=True), "s--", color=line.get_color(), label=f"measured {label}")
        ax.axhline(target["latency_after_ms"], color=line.get_color(), alpha=0.4, label=f"final measured {label}")
    ax.set_xlabel("pruning step")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def calibration_figure(report: dict):
    """The latency model's leave-one-out errors on the paired samples, per target: how far a prediction
    the schedule trusted could be from the measurement."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for t, target in enumerate(report["targets"]):
        errors = 100 * np.asarray(target.get("calibration_residuals") or [])
        ax.scatter(errors, np.full(len(errors), t) + np.linspace(-0.15, 0.15, len(errors)), s=14, alpha=0.7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(report["targets"])), [t["target"] for t in report["targets"]], fontsize=8)
    ax.set_xlabel("leave-one-out error of the latency model (% of the measured latency)")
    ax.grid(alpha=0.3, axis="x")
    return fig


def channels_figure(report: dict):
    """Output channels of every layer before and after pruning."""
    plt = pyplot()
    names = list(report["channels"])
    before = [report["channels"][n]["before"][1] for n in names]
    after = [report["channels"][n]["after"][1] for n in names]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.25), 4.5))
    xs = range(len(names))
    ax.bar(xs, before, color="lightgray", label="before")
    ax.bar(xs, after, color="tab:blue", label="after")
    ax.set_xticks(list(xs), names, rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.legend()
    return fig


def chosen_staircase_figure(staircase: dict):
    """One layer's measured latency against cout at its final cin, with the count HALP kept."""
    plt = pyplot()
    xs, ys = zip(*staircase["points"], strict=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step(xs, ys, where="mid")
    ax.axvline(staircase["chosen_cout"], color="k", linestyle="--", label=f"kept cout={staircase['chosen_cout']}")
    ax.set_xlabel(f"output channels of {staircase['layer']} (cin={staircase['cin']})")
    ax.set_ylabel("latency (ms)")
    ax.set_title(staircase["shape"], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def detections_plot(before, after, dataset, path: Path, images: int = 4, min_score: float = 0.3) -> Path:
    """Ground truth (dashed) and the detections of the unpruned (top) and pruned (bottom) model."""
    import torch

    from pruning_client.data import IMAGENET_MEAN, IMAGENET_STD

    plt = pyplot()
    samples = [dataset[i] for i in range(min(images, len(dataset)))]
    batch = torch.stack([x for x, _ in samples])
    fig, axes = plt.subplots(2, len(samples), figsize=(3 * len(samples), 6.4), squeeze=False)
    for row, (label, model) in enumerate((("unpruned", before), ("pruned", after))):
        was = model.training
        model.eval()
        with torch.no_grad():
            predictions = model(batch.to(next(model.parameters()).device))
        model.train(was)
        for ax, (x, target), pred in zip(axes[row], samples, predictions, strict=True):
            ax.imshow((x * IMAGENET_STD + IMAGENET_MEAN).clamp(0, 1).permute(1, 2, 0).numpy())
            for x1, y1, x2, y2 in target["boxes"].tolist():
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ls="--", ec="white", lw=1))
            keep = pred["scores"] >= min_score
            for (x1, y1, x2, y2), c, s in zip(
                pred["boxes"][keep].tolist(), pred["labels"][keep].tolist(), pred["scores"][keep].tolist(), strict=True
            ):
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1.2))
                name = dataset.category_names[c - 1]
                ax.text(x1, y1, f"{name} {s:.2f}", color="red", fontsize=7, va="bottom")
            ax.set_axis_off()
        axes[row][0].set_title(f"{label} (score >= {min_score})", fontsize=9, loc="left")
    return save_figure(fig, path)
