"""The measured check after the schedule: each target times the pruned model against the unpruned one.

The latency model predicts the budget met; a target may still measure more
(fusion the tables cannot see, a calibration off at small sizes). Where it
does, the pruner takes a repair step aimed lower by the measured miss, up to
``MAX_REPAIRS`` times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pruning_client.pruner import HALPPruner
from pruning_client.targets import Target, interleaved, parallel

MAX_REPAIRS = 3
HEADROOM = 0.96  # aim this far under the target, so the final comparison's spread stays under it


def side_by_side(targets: Sequence[Target], unpruned: bytes, pruned: bytes, input_shape: str) -> list:
    """(before, after) results per target, timed alternately on each."""
    return parallel(lambda t: tuple(interleaved(t.profiler, [unpruned, pruned], input_shape)), targets)


def repair_to_measured_budget(
    pruner: HALPPruner,
    targets: Sequence[Target],
    unpruned: bytes,
    export: Callable[[], bytes],
    latency_ratio: float,
    input_shape: str,
    stage: Callable[[str], None],
) -> None:
    """Repair steps until every target measures the pruned model within its budget, or ``MAX_REPAIRS``.

    ``export`` gives the pruner's current model as ONNX in the deployment dtype.
    """
    for _ in range(MAX_REPAIRS):
        pairs = side_by_side(targets, unpruned, export(), input_shape)
        over = [a.median_ms / (b.median_ms * latency_ratio * HEADROOM) for b, a in pairs]
        if max(over) <= 1.0:
            break
        budgets = [p / max(o, 1.0) for p, o in zip(pruner.predicted_ms(), over, strict=True)]
        stage(f"measured {max(over):.3f}x the target: repair step to " + ", ".join(f"{b:.3f}" for b in budgets))
        pruner.prune_now(budgets=budgets)
