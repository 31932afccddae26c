"""The ``halp`` command line: thin wrappers over the service factory and the client, one module per job.

Importing it loads neither torch nor the service stack: each command imports what it needs when it runs.
"""

from __future__ import annotations

from pruning_client.cli.app import app

# isort: off
# Each module registers its commands; `halp --help` lists them in this order.
from pruning_client.cli import serve, lut, run, finetune  # noqa: F401, E402
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    app()
