"""Torch-Pruning's index-mapping pass, made to hold what it cannot map instead of stopping the analysis.

The dependency graph follows channels through concatenations, splits, reshapes and slices by index
arithmetic on inferred channel counts. On torchvision's ShuffleNetV2 (``view`` to five dimensions for the
channel shuffle) that arithmetic divides by zero, on Swin-S a concatenation's inferred widths include
None: one op it cannot map used to end the whole analysis. Here each op's mapping that fails is recorded
and skipped; every channel group that passes through such an op is then held (``unmapped``), so nothing
is pruned through a mapping that was never computed, and the rest of the model still prunes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import wraps

from torch_pruning.dependency import index_mapping

# The per-op passes ``index_mapping.update_index_mapping`` dispatches to (by module global, so wrapping
# the globals is enough).
_PASSES = tuple(name for name in dir(index_mapping) if name.startswith("update_") and name != "update_index_mapping")


@contextmanager
def tolerant_index_mapping() -> Iterator[dict[object, str]]:
    """Within the block, an op whose mapping fails is recorded (node -> why) in the yielded dict."""
    failed: dict[object, str] = {}
    originals = {name: getattr(index_mapping, name) for name in _PASSES}

    def tolerant(name: str, update):
        @wraps(update)
        def wrapper(graph, node):
            try:
                return update(graph, node)
            except Exception as e:  # noqa: BLE001 - any op it cannot map is held, whatever the error
                failed[node] = f"{type(e).__name__}: {e}"[:160]
                return None

        return wrapper

    for name, update in originals.items():
        setattr(index_mapping, name, tolerant(name, update))
    try:
        yield failed
    finally:
        for name, update in originals.items():
            setattr(index_mapping, name, update)


def unmapped(items: Iterable, failed: dict[object, str]) -> str | None:
    """Why a group cannot be trusted when one of its dependencies runs through an op left unmapped."""
    for item in items:
        for node in (item.dep.source, item.dep.target):
            if node in failed:
                return f"its channels pass through {node.name}, which the dependency graph cannot map ({failed[node]})"
    return None
