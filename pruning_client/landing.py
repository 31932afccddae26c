"""Landing on the budget after the schedule: each target times the pruned model against the unpruned
one (paired), and the pruner corrects towards the budget from either side.

The latency model predicts the budget met; a target may still measure more
(fusion the tables cannot see, a calibration off at small sizes), or less, and
latency below the budget is accuracy given away for nothing. Each round measures
every target in pairs, adds the pairs to the calibration samples (refit on all
of them), then takes one step: a repair step aimed under the budget where a
target measures over it, a give-back step (pruned channels brought back) where
every target measures below the band by more than the pairs' own spread.
A repair the smallest model cannot meet ends the landing with the model as it is, over budget and
said so in the report: at the end of a run, throwing the trained model away (or cutting it to the
floor) on a measurement the pairs' spread may explain helps nobody.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from pruning_client.pruner import BudgetOutOfReach, HALPPruner
from pruning_client.targets import Paired, Target, interleaved, parallel

MAX_ROUNDS = 5
LOW = 0.93  # the band: final measured ratio within [LOW r, r]
AIM = 0.965  # where a correction aims, as a fraction of r: the band's middle
OVER = 0.99  # a measured ratio over OVER r is repaired (the final comparison's spread stays under r)


def side_by_side(targets: Sequence[Target], unpruned: bytes, pruned: bytes, input_shape: str) -> list:
    """(before, after) results per target, timed alternately on each."""
    return parallel(lambda t: tuple(interleaved(t.profiler, [unpruned, pruned], input_shape)), targets)


@dataclass
class Round:
    """One landing round: what each target measured, and the step it led to."""

    measured: list[float]  # per target: pruned / unpruned, paired
    spread: list[float]  # per target: the pairs' half range, relative
    action: str  # "repair", "give back", or why no step was taken ("landed", "below the band on ...")
    budgets_ms: list[float] | None = None  # the step's budgets, in predicted ms

    def describe(self, ratio: float) -> str:
        measured = ", ".join(f"{m:.3f} (+-{100 * s:.1f} %)" for m, s in zip(self.measured, self.spread, strict=True))
        return f"measured {measured} x unpruned for a budget of {ratio:g}: {self.action}"


def land_on_budget(
    pruner: HALPPruner,
    targets: Sequence[Target],
    unpruned: bytes,
    export: Callable[[], bytes],
    latency_ratio: float,
    input_shape: str,
    stage: Callable[[str], None],
) -> list[dict]:
    """Rounds of paired measurement and one correcting step, until every target measures within
    [LOW r, r] (or below it by no more than its pairs can tell), or ``MAX_ROUNDS``; the rounds,
    for the report. ``export`` gives the pruner's current model as ONNX in the deployment dtype.

    A give-back step is taken only while rounds remain to measure it and repair it if it went over.
    """
    rounds: list[Round] = []
    r = latency_ratio
    for i in range(MAX_ROUNDS):
        keep, candidate = pruner.keep_counts(), export()
        pairs: list[Paired] = parallel(lambda t, c=candidate: t.measure_against(unpruned, c, input_shape), targets)
        for t, pair in zip(targets, pairs, strict=True):
            t.learn(keep, pair)
        measured, spread = [p.ratio for p in pairs], [p.spread for p in pairs]
        below = [m < LOW * r for m in measured]
        # below the band by more than the pairs' spread: the shortfall is real, not noise
        short = [m < LOW * r and (LOW * r - m) / m > s for m, s in zip(measured, spread, strict=True)]
        if max(measured) > OVER * r:  # a budget is a promise: repaired even in the last round
            action, scale = "repair", [min(1.0, AIM * r / m) for m in measured]
        elif all(short) and i < MAX_ROUNDS - 2:
            action, scale = "give back", [AIM * r / m for m in measured]
        else:
            rounds.append(Round(measured, spread, _why_stopped(targets, below, short, all(short))))
            stage(f"landing round {i + 1}: {rounds[-1].describe(r)}")
            break
        budgets = [p * f for p, f in zip(pruner.predicted_ms(), scale, strict=True)]
        rounds.append(Round(measured, spread, action, budgets))
        stage(f"landing round {i + 1}: {rounds[-1].describe(r)} to " + ", ".join(f"{b:.3f}" for b in budgets) + " ms")
        try:
            pruner.prune_now(budgets=budgets, grow=action == "give back")
        except BudgetOutOfReach as e:  # the trained model is kept and reported over budget, not cut to the floor
            rounds[-1].action = f"repair out of reach, model kept as it is: {e}"
            stage(f"landing round {i + 1}: {rounds[-1].action}")
            break
    return [asdict(x) for x in rounds]


def _why_stopped(targets: Sequence[Target], below: list[bool], short: list[bool], out_of_rounds: bool) -> str:
    if not any(below):
        return "landed"
    where = ", ".join(t.profiler.url for t, b in zip(targets, below, strict=True) if b)
    if out_of_rounds:
        return f"below the band on {where}: out of rounds"
    if not any(short):
        return f"below the band on {where}, by less than the pairs' spread: not told apart from the band"
    return f"below the band on {where}: another target is at its budget, so no channel can come back"
