"""report.html: a run's report as one self-contained page (inline CSS and SVG, no script, no request)."""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from pruning_client import plots
from pruning_client.report import rows

_ENV = Environment(loader=PackageLoader("pruning_client", "templates"), autoescape=select_autoescape(["html"]))


def _inline_svg(document: str) -> str:
    """An SVG file's ``<svg>`` element, without the XML prologue that HTML does not take."""
    return document[document.index("<svg") :]


def _png_data_uri(path: Path) -> str | None:
    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" if path.exists() else None


def html(body: dict, svgs: dict[str, str], out: Path) -> str:
    """The page of ``body`` (report.json) with the figures ``svgs`` (by stem, ``plots.report_figures``);
    ``out`` is the run's directory, for the task's own picture (detections.png)."""
    targets = body["targets"]
    history = [
        {**h, "label": _step_label(h, body["settings"]["steps"]), "measured_ms": h.get("measured_ms") or []}
        for h in body["history"]
    ]
    return _ENV.get_template("report.html").render(
        body=body,
        settings=body["settings"],
        targets=targets,
        rows=rows(targets),
        history=history,
        figures={stem: _inline_svg(svg) for stem, svg in svgs.items()},
        staircases=[(plots.staircase_stem(i), s) for i, s in enumerate(plots.report_staircases(body))],
        detections=_png_data_uri(out / "detections.png"),
    )


def _step_label(step: dict, steps: int) -> str:
    if step["step"] <= steps:
        return f"{step['step']}/{steps}"
    return "give-back" if step.get("grew") else "repair"
