"""HALP pruning client: latency tables from profiler services, pruning to a latency budget.

The names below are the public API; they load on first use, so `halp serve` and `halp --help`
do not pay for torch and Torch-Pruning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "analyse": "pruning_client.graph",
    "ModelGraph": "pruning_client.graph",
    "LatencyModel": "pruning_client.latency",
    "LatencyTables": "pruning_client.latency",
    "HALPPruner": "pruning_client.pruner",
    "solve": "pruning_client.knapsack",
    "solve_paper": "pruning_client.knapsack",
    "ProfilerClient": "pruning_client.remote",
    "ProfilerError": "pruning_client.remote",
    "RemoteTarget": "pruning_client.remote",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pruning_client' has no attribute {name!r}")
