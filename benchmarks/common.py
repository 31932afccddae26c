"""Shared by the benchmark scripts: arguments, machine facts, result files."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def parse_args(description: str, extra=None, target: bool = False) -> argparse.Namespace:
    """The common options; ``target``: the script may use a running service instead of starting one."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a small run that keeps the script working (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and plots")
    if target:
        parser.add_argument(
            "--target",
            metavar="URL",
            help="a running profiler service to measure on (its stored tables are reused); "
            "default: a local CPU service started for this run",
        )
    if extra:
        extra(parser)
    return parser.parse_args()


@contextmanager
def profiler_url(args: argparse.Namespace, state_dir: Path) -> Iterator[str]:
    """``--target`` when given, else a local CPU service of its own under ``state_dir`` for the run."""
    if args.target:
        yield args.target
        return
    from pruning_client.demo import local_service

    with local_service(state_dir) as url:
        yield url


def hold_if_asked(stage: str) -> None:
    """Stop here for good when ``HALP_BENCHMARK_HOLD`` names a file: write ``stage`` to it, then wait.

    A test that must catch a benchmark mid-run (its service up) waits for the file instead of guessing
    how long the run takes on this host, then kills the run.
    """
    hold = os.environ.get("HALP_BENCHMARK_HOLD")
    if hold:
        Path(hold).write_text(stage)
        threading.Event().wait()


def machine() -> dict:
    import numpy
    import onnxruntime
    import torch

    from profiler_service.backends.base import cpu_name

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _path(out: Path, name: str, quick: bool, suffix: str) -> Path:
    return out / f"{name}{'-quick' if quick else ''}.{suffix}"


def write(out: Path, name: str, body: dict, quick: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = _path(out, name, quick, "json")
    path.write_text(json.dumps({"benchmark": name, "quick": quick, "machine": machine(), **body}, indent=2))
    print(f"wrote {path}")
    return path


def label_axes(ax, xlabel: str, ylabel: str) -> None:
    """Axis labels, legend and a light grid: every benchmark plot's finish."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)


def save_plot(fig, out: Path, name: str, quick: bool) -> Path:
    """The figure beside the JSON of the same run (same name, same -quick suffix)."""
    from pruning_client.plots import save_figure

    return save_figure(fig, _path(out, name, quick, "png"))


def flops_tables():
    """Tables whose every point is the layer's multiply-accumulates: a latency model that is FLOPs."""
    from profiler_service.shapes import parse_shape
    from pruning_client.latency import LatencyTables

    return LatencyTables(
        fetch=lambda need: {k: {p: float(parse_shape(k).macs(*p)) for p in pts} for k, pts in need.items()}
    )
