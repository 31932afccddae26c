"""The ``halp`` application: one typer app, its consoles, and the one-line error every command uses."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    help="HALP: hardware-aware latency pruning. Profile layer latency on target devices, prune to a budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: typer's rich panels print a "<bool>" type beside every flag
)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)
