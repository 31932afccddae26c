"""The ``halp`` command line: thin wrappers over the service factory and the client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from profiler_service.schemas import CHANNELS_SYNTAX, JobStatus, LutRequest, LutTable, parse_channels
from profiler_service.shapes import GRAMMAR, InvalidLayerShape, parse_shape
from pruning_client.remote import ProfilerClient, ProfilerError

app = typer.Typer(
    help="HALP: hardware-aware latency pruning. Profile layer latency on target devices, prune to a budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


@app.command()
def serve(
    backend: Annotated[str, typer.Option(help="auto, tensorrt, torch-cuda, onnxruntime or torch-cpu")] = None,
    db: Annotated[str, typer.Option(help="SQLAlchemy URL, e.g. sqlite:///halp.db (HALP_DB)")] = None,
    host: Annotated[str, typer.Option(help="bind address (HALP_HOST)")] = None,
    port: Annotated[int, typer.Option(help="port (HALP_PORT)")] = None,
    threads: Annotated[int, typer.Option(help="CPU backends: threads, part of the device fingerprint")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run a profiler service for this machine's device (one process per device).

    Every option also reads from HALP_* environment variables; HALP_API_TOKEN
    makes writes require 'Authorization: Bearer <token>'.
    """
    import uvicorn
    from pydantic import ValidationError

    from profiler_service.app import create_app
    from profiler_service.backends import BackendUnavailable, create_backend
    from profiler_service.settings import Settings

    overrides = {"backend": backend, "db": db, "host": host, "port": port, "threads": threads}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        built = create_backend(settings.backend, settings.threads, settings.cache_dir)
    except ValidationError as e:
        raise _fail(f"bad setting: {e}") from None
    except BackendUnavailable as e:
        raise _fail(str(e)) from None
    url = f"http://{settings.host}:{settings.port}"
    console.print(
        f"HALP profiler: backend [bold]{built.name}[/], store {settings.db_url}\n"
        f"  try: curl {url}/device   |   halp lut conv2d-k3x3-s1x1-p1x1-d1x1-g1-h28w28-b1-fp32 "
        f"--target {url} --cin 64 --cout 8..128:8   |   docs: {url}/docs"
    )
    uvicorn.run(create_app(settings, built), host=settings.host, port=settings.port, log_level=log_level)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
    )


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
        raise _fail(str(e)) from None
    if (cins is None) != (couts is None):
        raise _fail("give both --cin and --cout to measure a grid, or neither to show the stored table")
    try:
        with ProfilerClient(target, token=token) as client:
            if cins is None:
                table = client.table(key)
            else:
                with progress_bar() as bar:
                    task = bar.add_task(f"measuring {key}", total=None)

                    def show(job: JobStatus) -> None:
                        bar.update(task, completed=job.done, total=job.total)

                    table = client.ensure(key, LutRequest(cin=cins, cout=couts), progress=show)
    except ProfilerError as e:
        raise _fail(str(e)) from None
    _print_table(table)
    if plot:
        from pruning_client.plots import staircase_plot

        staircase_plot(table, plot)
        console.print(f"plot written to {plot}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
