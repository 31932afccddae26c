"""The ``halp`` command line: thin wrappers over the service factory and the client, one module per job.

Importing it loads neither torch nor the service stack: each command imports what it needs when it runs.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from pruning_client.cli.app import app

# isort: off
# Each module registers its commands; `halp --help` lists them in this order.
from pruning_client.cli import serve, lut, run, finetune  # noqa: F401, E402
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        app()
        return
    # Under torchrun, leave without interpreter finalization. Once a DDP module has existed, torch
    # (2.13) keeps references to the gloo process group that destroy_process_group() cannot drop, so
    # its threads are still running when the interpreter tears down, and a rank aborted at exit
    # ("terminate called without an active exception", 5 runs in 30 of a bare DDP script on a busy
    # 2-core host; 0 in 30 leaving this way). Every collective has completed by now: the run's
    # closing barrier and destroy_process_group() are in distributed().
    code = _exit_code(app)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _exit_code(command) -> int:
    """What ``command()`` would have exited with, as an int, its traceback printed if it raised."""
    try:
        command()  # click's standalone mode always ends in SystemExit
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0
