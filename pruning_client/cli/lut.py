"""``halp lut``: one layer shape's latency table on a target, measured where missing, printed and plotted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from profiler_service.schemas import CHANNELS_SYNTAX, LutRequest, LutTable, parse_channels
from profiler_service.shapes import GRAMMAR, InvalidLayerShape, parse_shape
from pruning_client.cli.app import app, console, err, fail
from pruning_client.remote import ProfilerClient, ProfilerError
from pruning_client.ui import RichUI


def _print_table(table: LutTable) -> None:
    couts = sorted({p.cout for p in table.points})
    console.print(f"[bold]{table.shape}[/] on {table.backend} ({table.fingerprint}), median latency in ms")
    if len(couts) <= 12:
        grid = Table("cin \\ cout", *map(str, couts))
        by_cin: dict[int, dict[int, float]] = {}
        for p in table.points:
            by_cin.setdefault(p.cin, {})[p.cout] = p.median_ms
        for cin, row in sorted(by_cin.items()):
            grid.add_row(str(cin), *(f"{row[c]:.4f}" if c in row else "" for c in couts))
    else:
        grid = Table("cin", "cout", "median", "p10", "p90", "runs")
        for p in table.points:
            stats = (f"{v:.4f}" for v in (p.median_ms, p.p10_ms, p.p90_ms))
            grid.add_row(str(p.cin), str(p.cout), *stats, str(p.runs))
    console.print(grid)


@app.command()
def lut(
    shape: Annotated[str, typer.Argument(help=f"layer shape key: {GRAMMAR}")],
    target: Annotated[str, typer.Option(help="profiler service URL")] = "http://127.0.0.1:8000",
    cin: Annotated[str, typer.Option(help=f"input channels to measure: {CHANNELS_SYNTAX}")] = None,
    cout: Annotated[str, typer.Option(help=f"output channels to measure: {CHANNELS_SYNTAX}")] = None,
    plot: Annotated[Path, typer.Option(help="write a staircase plot (latency against cout) to this PNG")] = None,
    token: Annotated[str, typer.Option(help="bearer token (default: HALP_API_TOKEN)")] = None,
) -> None:
    """Measure (if needed) and show the latency table of one layer shape on a target.

    With --cin and --cout the grid is requested and any missing point is
    measured while a progress bar runs; without them the stored table is shown.
    """
    try:
        key = parse_shape(shape).key
        cins = parse_channels(cin) if cin else None
        couts = parse_channels(cout) if cout else None
    except (InvalidLayerShape, ValueError) as e:
        raise fail(str(e)) from None
    if (cins is None) != (couts is None):
        raise fail("give both --cin and --cout to measure a grid, or neither to show the stored table")
    try:
        with ProfilerClient(target, token=token) as client:
            if cins is None:
                table = client.table(key)
            else:
                with RichUI(err) as ui:

                    def show(done: int, total: int) -> None:
                        ui.bar("lut", f"measuring {key}", done, total)

                    table = client.ensure(key, LutRequest(cin=cins, cout=couts), progress=show)
    except ProfilerError as e:
        raise fail(str(e)) from None
    _print_table(table)
    if plot:
        from pruning_client.plots import staircase_plot

        staircase_plot(table, plot)
        console.print(f"plot written to {plot}")
