"""``halp serve``: the profiler service of this machine's device (the service package does the work)."""

from __future__ import annotations

from typing import Annotated

import typer

from pruning_client.cli.app import app, console, fail


def _help(name: str, text: str) -> str:
    from profiler_service.serve import option_help

    return option_help(name, text)


@app.command()
def serve(
    backend: Annotated[
        str, typer.Option(help=_help("backend", "auto, tensorrt, torch-cuda, onnxruntime or torch-cpu"))
    ] = None,
    db: Annotated[
        str, typer.Option(help=_help("db", "SQLAlchemy URL of the store; default: profiler.db in HALP_CACHE_DIR"))
    ] = None,
    host: Annotated[str, typer.Option(help=_help("host", "bind address"))] = None,
    port: Annotated[int, typer.Option(help=_help("port", "port"))] = None,
    threads: Annotated[
        int, typer.Option(help=_help("threads", "CPU threads, part of the device fingerprint; default all cores"))
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run a profiler service for this machine's device (one process per device).

    Every option also reads from HALP_* environment variables; HALP_API_TOKEN
    makes writes require 'Authorization: Bearer <token>'. Limits of the
    measurement worker: HALP_WORKER_MEMORY_MB, HALP_POINT_DEADLINE_S,
    HALP_MAX_POINT_GMACS, HALP_JOB_DEADLINE_S (see the README).
    """
    from profiler_service.serve import ServeError, run

    overrides = {"backend": backend, "db": db, "host": host, "port": port, "threads": threads}
    try:
        run(overrides, log_level, console.print)
    except ServeError as e:
        raise fail(str(e)) from None
