"""``HALPPruner``: latency-constrained iterative pruning as a hook in the user's training loop.

Every ``interval`` calls of ``step()`` (after ``backward()``) it averages the
Taylor saliency gathered since the last pruning step, builds per-group
"keep the top k blocks" choices, solves the knapsack against this step's
budget on every target, checks the choice against the true 2-D table
latency (tightening the budget until it holds) and masks the dropped
channels. ``finalize()`` removes them for real and returns the smaller model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from torch import nn

from pruning_client.distributed import Context, digest, sync_buffers
from pruning_client.graph import ExampleInputs
from pruning_client.joint import solve_joint
from pruning_client.knapsack import Infeasible, solve
from pruning_client.latency import LatencyModel
from pruning_client.layers import GraphError
from pruning_client.masks import MaskHooks
from pruning_client.prunability import hold_unprunable
from pruning_client.saliency import TaylorSaliency
from pruning_client.schedule import block_sizes, exponential_budgets
from pruning_client.thinning import prune_groups, pruned_copy

MAX_TIGHTENING = 30
log = logging.getLogger("halp.pruner")

JOINT_MODES = ("full", "near", "off")  # the joint (cin, cout) solver: every option, near the separable choice, none
JOINT_WINDOW = 2  # "near": options either side of the separable choice it starts from, per group
MAX_JOINT_ROUNDS = 8  # "near": times it may widen that window where its optimum reaches the edge
FULL_GRID_FACTOR = 10  # "full" asks for at most this many new points per separable curve point, else "near"


class BudgetOutOfReach(RuntimeError):
    """A step's budget cannot be met even by the smallest model the blocks allow (and a paired
    re-measurement did not change that): the run stops rather than keep that minimum silently."""


@dataclass
class PruneStep:
    step: int
    iteration: int
    budget_ms: list[float]  # per target
    predicted_ms: list[float]  # per target, true 2-D table latency after a/b calibration
    channels: list[int]  # per group
    saliency_kept: float  # fraction of this step's saliency kept
    tightenings: int
    met: bool = True  # False: the budget was out of reach and the minimum was kept
    ranks_agreed: int = 1  # processes that were checked to hold these masks (torchrun)
    solver: str = "separable"  # or "joint": the joint (cin, cout) optimum near it kept more saliency
    grew: bool = False  # a give-back step: channels pruned earlier could come back

    def describe(self, steps: int) -> str:
        """One progress line; ``steps`` is the schedule's length (later steps are repairs)."""
        label = f"step {self.step}/{steps}" if self.step <= steps else "give-back step" if self.grew else "repair step"
        budget = ", ".join(f"{b:.3f}" for b in self.budget_ms)
        predicted = ", ".join(f"{p:.3f}" for p in self.predicted_ms)
        missed = "" if self.met else " (budget out of reach even with the finest blocks: kept the minimum, as asked)"
        kept = f"saliency kept {100 * self.saliency_kept:.1f} %"
        joint = " (the joint (cin, cout) choice)" if self.solver == "joint" else ""
        return f"{label}: budget {budget} ms, predicted {predicted} ms, {kept}{joint}{missed}"


class HALPPruner:
    def __init__(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        latency_model: LatencyModel | Sequence[LatencyModel],
        target_ratio: float | Sequence[float],
        steps: int = 10,
        interval: int = 10,
        block_size: int | Sequence[int] | None = 8,
        start: int = 0,
        min_keep_blocks: int = 1,
        on_step: Callable[[PruneStep], None] | None = None,
        ctx: Context | None = None,
        joint: str = "full",
        allow_minimum: bool = False,
        recheck: Callable[[list[np.ndarray]], None] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.models = [latency_model] if isinstance(latency_model, LatencyModel) else list(latency_model)
        if not self.models:
            raise ValueError("need at least one latency model (one per target)")
        self.graph = self.models[0].graph
        if any(m.graph is not self.graph for m in self.models) or self.graph.model is not model:
            raise ValueError("every latency model must be built on the graph of this model")
        ratios = [target_ratio] * len(self.models) if isinstance(target_ratio, int | float) else list(target_ratio)
        if len(ratios) != len(self.models) or not all(0 < r <= 1 for r in ratios):
            raise ValueError("target_ratio: one ratio in (0, 1] per target")
        hold_unprunable(self.graph, example_inputs)  # before the blocks: a held group is one block
        sizes = block_sizes(self.graph, block_size)
        if steps < 1 or interval < 1 or min_keep_blocks < 1:
            raise ValueError("steps, interval and min_keep_blocks must be positive")
        if joint not in JOINT_MODES:
            raise ValueError(f"joint: one of {', '.join(JOINT_MODES)}")
        self.model, self.example_inputs = model, example_inputs
        self.steps, self.interval, self.block_sizes, self.start = steps, interval, sizes, start
        self.min_keep_blocks, self.on_step = min_keep_blocks, on_step  # on_step(record) after every step
        self.ctx = ctx or Context()
        self.joint = joint
        # a budget out of reach: ``recheck(masks)`` (rank 0) measures the smallest model the blocks allow
        # (those masks) and refits, and the step is solved again; then the minimum is kept only if
        # ``allow_minimum``, else ``BudgetOutOfReach`` stops the run
        self.allow_minimum, self.recheck = allow_minimum, recheck
        self.names = list(names) if names else [f"target {i}" for i in range(len(self.models))]
        self.saliency = TaylorSaliency(self.graph)
        self.masks = [np.ones(g.size, dtype=bool) for g in self.graph.groups]
        full = self.keep_counts()
        # only rank 0 has the tables; the others learn the budgets from it
        self.full_ms = self.ctx.from_main(lambda: [m.predict(full) for m in self.models])
        self.target_ms = [r * f for r, f in zip(ratios, self.full_ms, strict=True)]
        self.budgets = [exponential_budgets(f, t, steps) for f, t in zip(self.full_ms, self.target_ms, strict=True)]
        self.history: list[PruneStep] = []
        self.iteration = 0
        self._hooks = MaskHooks(self.graph, self.masks)
        self._finalized = False
        self._importance: list[np.ndarray] | None = None
        # each pruned channel's saliency at the step that removed it (its gradient is zero since): what
        # a give-back step ranks the channels it may bring back by
        self._removed = [np.zeros(g.size) for g in self.graph.groups]

    # --- state -----------------------------------------------------------------------------
    def keep_counts(self, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        return np.array([int(m.sum()) for m in (self.masks if masks is None else masks)], dtype=np.int64)

    @property
    def done(self) -> bool:
        return len(self.history) >= self.steps

    def predicted_ms(self) -> list[float]:
        keep = self.keep_counts()
        return [m.predict(keep) for m in self.models]

    # --- the training-loop hook ------------------------------------------------------------
    def step(self) -> PruneStep | None:
        """Call after ``loss.backward()``; prunes on schedule and returns the step it took, if any."""
        if self._finalized:
            raise RuntimeError("the pruner was finalized; the model is already physically pruned")
        self.saliency.accumulate()
        self.iteration += 1
        due = self.iteration >= self.start and (self.iteration - self.start) % self.interval == 0
        return self.prune_now() if due and not self.done else None

    def prune_now(
        self, importance: list[np.ndarray] | None = None, budgets: list[float] | None = None, grow: bool = False
    ) -> PruneStep:
        """Take the next pruning step now, with the saliency gathered so far (or the one given).

        ``budgets`` (ms per target) overrides the schedule: a repair step after
        the schedule when measured latency came out above the prediction, or with
        ``grow`` a give-back step when it came out below: channels pruned earlier
        may come back, ranked by their saliency when they were removed.

        Under several processes (``ctx``) every rank calls this at the same iteration. The saliency
        is the same on every rank without a reduction: it is read from gradients DistributedDataParallel
        has already averaged over the ranks, so it is that of the global minibatch (summing it over the
        ranks would count each minibatch once per rank). BN buffers are made rank 0's, rank 0 decides
        (tables, knapsack, ``on_step``) and broadcasts the masks, and the ranks check they hold the same.
        """
        if importance is None:
            # Right after a step no minibatch has run yet (a repair step): rank by the last saliency.
            importance = (
                self.saliency.averages() if self.saliency.batches or self._importance is None else self._importance
            )
        if budgets is None and self.done:
            raise RuntimeError("the schedule is complete; pass budgets for an extra step")
        chosen = importance
        if self.ctx.world > 1:
            sync_buffers(self.model, self.ctx)
            self.ctx.agree("saliency", digest(*chosen))
        record, masks = self.ctx.from_main(lambda: self._decide(chosen, budgets, grow))
        self._adopt(record, masks, chosen)
        if self.on_step is not None:
            self.ctx.on_main(lambda: self.on_step(record))  # type: ignore[misc]
        return record

    def _decide(
        self, importance: list[np.ndarray], budgets: list[float] | None, grow: bool
    ) -> tuple[PruneStep, list[np.ndarray]]:
        """The next step's masks and record (rank 0's work); a budget out of reach is checked again
        (``recheck``) before it is believed, then stops the run unless ``allow_minimum``."""
        if budgets is None:
            budgets = [b[len(self.history)] for b in self.budgets]
        blocks = list(self.block_sizes)
        record, masks = self._solve_step(importance, budgets, grow)
        if not record.met and self.recheck is not None:
            self.recheck(masks)
            # re-solved on the blocks the step began with: the out-of-reach solve left them as fine as its
            # floor, and a budget the refit brings within reach needs none of those finer curves
            self.block_sizes = blocks
            record, masks = self._solve_step(importance, budgets, grow)
        if not record.met and not self.allow_minimum:
            i = next(i for i, (p, b) in enumerate(zip(record.predicted_ms, budgets, strict=True)) if p > b)
            raise BudgetOutOfReach(
                f"{self.names[i]}: step {record.step}'s budget ({budgets[i] / self.full_ms[i]:.3f} x the unpruned "
                f"latency) is out of reach; the smallest model the blocks allow is predicted at "
                f"{record.predicted_ms[i] / self.full_ms[i]:.3f} x. Use fewer --steps, a finer --block-size or a "
                "looser --latency-ratio (or --allow-minimum to keep that smallest model)"
            )
        if not record.met:
            log.warning(
                "step %d: budget %s ms is out of reach keeping %d block(s) per group; kept the minimum (%s ms)",
                record.step, budgets, self.min_keep_blocks, record.predicted_ms,
            )  # fmt: skip
        return record, masks

    def _solve_step(
        self, importance: list[np.ndarray], budgets: list[float], grow: bool
    ) -> tuple[PruneStep, list[np.ndarray]]:
        """The knapsack's choice for ``budgets``: masks and record (``met`` False at the minimum)."""
        keep_now = self.keep_counts()
        sums_now = [lm.table_sum(keep_now) for lm in self.models]
        capacity = np.array([lm.to_table(b) - s for b, lm, s in zip(budgets, self.models, sums_now, strict=True)])
        floor_ms, reachable = self._floor(importance, budgets, grow)
        while True:
            orders, counts, values, lo = self._choices(importance, grow)
            if not reachable:  # the finest blocks' minimum, without a curve point asked for
                k, predicted, tightenings, met = np.array(lo), floor_ms, 0, False
                break
            # costs are only defined where a group keeps channels: reuse the smallest allowed count below it
            curve_counts = [np.maximum(c, c[m]) for c, m in zip(counts, lo, strict=True)]
            self._prefetch([lm.curve_points(keep_now, curve_counts) for lm in self.models])
            curves = [lm.cost_curves(keep_now, curve_counts) for lm in self.models]
            costs = [np.stack([c[g] for c in curves]) if len(curves) > 1 else curves[0][g] for g in range(len(counts))]
            k, predicted, tightenings = self._solve_within(values, costs, counts, lo, capacity, budgets)
            met = all(p <= b for p, b in zip(predicted, budgets, strict=True))
            if met or not self._finer_blocks(k, lo):
                break
        solver = "separable"
        # not on a give-back step: its options reach back to every pruned channel, and the (cin, cout) grid
        # over them asked a CPU service for 4,368 new points in the GPU kit's rehearsal
        if met and not grow and (joint := self._joint(values, curve_counts, lo, keep_now, k, budgets)) is not None:
            k, predicted, solver = joint
        new_keep = np.array([c[kg] for c, kg in zip(counts, k, strict=True)])
        total = sum(float(v[-1]) for v in values)
        kept_value = sum(float(v[kg]) for v, kg in zip(values, k, strict=True))
        masks = [np.zeros(g.size, dtype=bool) for g in self.graph.groups]
        for group, order, c in zip(self.graph.groups, orders, new_keep, strict=True):
            masks[group.id][group.channels_at(order[: c // group.chunks])] = True
        record = PruneStep(
            step=len(self.history) + 1,
            iteration=self.iteration,
            budget_ms=budgets,
            predicted_ms=predicted,
            channels=new_keep.tolist(),
            saliency_kept=kept_value / total if total > 0 else 1.0,
            tightenings=tightenings,
            met=met,
            solver=solver,
            grew=grow,
        )
        return record, masks

    def _adopt(self, record: PruneStep, masks: list[np.ndarray], importance: list[np.ndarray]) -> None:
        """Make a decided step this rank's state: masks, hooks, history; then check the ranks agree."""
        for mine, new, removed, score in zip(self.masks, masks, self._removed, importance, strict=True):
            leaving = mine & ~new
            removed[leaving] = np.asarray(score)[leaving]
            mine[:] = new
        self._hooks.apply()
        self.history.append(record)
        self._importance = importance
        self.saliency.reset()
        self.ctx.agree("pruning masks", digest(*self.masks))
        record.ranks_agreed = self.ctx.world

    @contextmanager
    def solo(self) -> Iterator[None]:
        """Steps taken inside (on rank 0 alone: the measured repair) skip the collectives; every rank
        then calls ``adopt_main`` to take rank 0's masks and history."""
        ctx, self.ctx = self.ctx, Context()
        try:
            yield
        finally:
            self.ctx = ctx

    def adopt_main(self) -> None:
        """Every rank takes rank 0's masks, history and block sizes (after steps rank 0 took ``solo``)."""
        state = self.ctx.from_main(
            lambda: (self.masks, self.history, self.block_sizes, self._importance, self._removed)
        )
        masks, self.history, self.block_sizes, self._importance, self._removed = state
        for mine, new in zip(self.masks, masks, strict=True):
            mine[:] = new
        if self.history:
            self._hooks.apply()
        self.ctx.agree("pruning masks", digest(*self.masks))
        if self.history:  # the steps rank 0 took alone were never on the others; their outcome now is
            self.history[-1].ranks_agreed = self.ctx.world

    # --- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs to continue the schedule exactly where it was."""
        return {
            "masks": [m.copy() for m in self.masks],
            "history": [dataclasses.asdict(h) for h in self.history],
            "iteration": self.iteration,
            "saliency": self.saliency.state_dict(),
            "importance": self._importance,
            "removed_saliency": [r.copy() for r in self._removed],
            "block_sizes": list(self.block_sizes),
            "full_ms": self.full_ms,
            "target_ms": self.target_ms,
            "budgets": self.budgets,
        }

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in zip(self.masks, state["masks"], strict=True):
            mine[:] = saved
        self.history = [PruneStep(**h) for h in state["history"]]
        self.iteration = state["iteration"]
        self.saliency.load_state_dict(state["saliency"])
        self._importance = state["importance"]
        self._removed = [np.asarray(r) for r in state.get("removed_saliency", self._removed)]  # older checkpoints
        self.block_sizes = list(state["block_sizes"])
        self.full_ms, self.target_ms, self.budgets = state["full_ms"], state["target_ms"], state["budgets"]
        if self.history:
            self._hooks.apply()

    def _choices(self, importance: list[np.ndarray], grow: bool = False):
        """Per group: channel order by saliency, the counts it may keep, their values, the minimum's index.

        Decisions are made per position (the same channel of every chunk of a
        grouped conv's group), in blocks of positions. With ``grow`` the order
        goes on past the kept channels into the pruned ones (by their saliency
        when removed), so keeping more than now brings those back.
        """
        orders, counts, values, lo = [], [], [], []
        for group, mask, block, removed in zip(self.graph.groups, self.masks, self.block_sizes, self._removed,
                                               strict=True):  # fmt: skip
            now = np.where(mask, importance[group.id], removed) if grow else importance[group.id]
            score = now.reshape(group.chunks, group.positions).sum(0)
            kept = np.flatnonzero(mask[: group.positions])
            order = kept[np.argsort(-score[kept], kind="stable")]
            if grow:
                gone = np.flatnonzero(~mask[: group.positions])
                order = np.concatenate([order, gone[np.argsort(-score[gone], kind="stable")]])
            unit = block // group.chunks
            blocks = math.ceil(len(order) / unit)
            c = np.minimum(np.arange(blocks + 1) * unit, len(order))
            orders.append(order)
            counts.append(c * group.chunks)
            values.append(np.concatenate(([0.0], np.cumsum(score[order])))[c])
            lo.append(min(self.min_keep_blocks, blocks))
        return orders, counts, values, lo

    def _floor(self, importance: list[np.ndarray], budgets: list[float], grow: bool) -> tuple[list[float], bool]:
        """Per target, the predicted latency of the smallest model any blocks allow (every unheld group at
        ``min_keep_blocks`` blocks of one position), and whether every budget is within it; where one is
        not, the blocks are left that fine (the minimum kept is then that model).

        Its table points are one per layer. Finding a budget out of reach by halving blocks instead
        asks for every finer block's cost curves first: 6,274 points on a CPU service for ResNet-20,
        minutes of a run spent proving that nothing fits.
        """
        coarse = self.block_sizes
        self.block_sizes = [b if g.held else g.chunks for g, b in zip(self.graph.groups, coarse, strict=True)]
        _, counts, _, lo = self._choices(importance, grow)
        floor = np.array([c[m] for c, m in zip(counts, lo, strict=True)])
        self._prefetch([lm.points_for(floor) for lm in self.models])
        floor_ms = [lm.predict(floor) for lm in self.models]
        reachable = all(p <= b for p, b in zip(floor_ms, budgets, strict=True))
        if reachable:
            self.block_sizes = coarse
        return floor_ms, reachable

    def _finer_blocks(self, k: np.ndarray, lo: list[int]) -> bool:
        """Halve the blocks of the groups held at their minimum; False when none can shrink.

        A budget out of reach with the current blocks is often only out of
        reach of their floor (one 8-channel block of a 16-channel group keeps
        half of it): finer blocks there lower the floor where it binds.
        """
        at_floor = [
            g
            for g in self.graph.groups
            if k[g.id] <= lo[g.id] and self.block_sizes[g.id] // g.chunks > 1 and not g.held
        ]
        for g in at_floor:
            self.block_sizes[g.id] = self.block_sizes[g.id] // g.chunks // 2 * g.chunks
        if at_floor:
            log.info("budget out of reach: halved the blocks of %d group(s) held at their minimum", len(at_floor))
        return bool(at_floor)

    def _solve_within(self, values, costs, counts, lo, capacity, budgets):
        """Solve, then tighten until the true 2-D table latency meets every budget.

        The knapsack sees separable per-group costs; where a layer's cin and
        cout both change the true latency differs, so the capacity shrinks by
        the excess and the solve repeats. Out of reach: the minimum is kept.
        """
        minimum = np.array(lo)
        for tightenings in range(MAX_TIGHTENING):
            try:
                k = solve(values, costs, capacity if len(capacity) > 1 else float(capacity[0]), min_keep=lo)
            except Infeasible:
                k = minimum
            new_keep = np.array([c[kg] for c, kg in zip(counts, k, strict=True)])
            self._prefetch([lm.points_for(new_keep) for lm in self.models])
            predicted = [lm.predict(new_keep) for lm in self.models]
            excess = np.array(
                [lm.to_table(p) - lm.to_table(b) for p, b, lm in zip(predicted, budgets, self.models, strict=True)]
            )
            if (excess <= 0).all() or k is minimum:
                return k, predicted, tightenings
            capacity = capacity - np.maximum(excess, 0) * (1 + 0.25 * tightenings)
        return (
            minimum,
            [lm.predict(np.array([c[m] for c, m in zip(counts, lo, strict=True)])) for lm in self.models],
            tightenings,
        )

    def _joint(self, values, counts, lo, keep_now, k, budgets):
        """The joint (cin, cout) optimum: (choice, predicted ms, "joint") when it keeps more saliency than
        the separable choice ``k`` within the budget, else None.

        "full" solves over every option of every group: exact (to the solver's 0.1 %), and it needs
        every (cin, cout) pair of each layer's groups from the tables, about 7x the separable curves'
        points on ResNet-50 (measured once per device and model: later steps' grids are inside it).
        The grid grows with the square of the options: where it would ask for more than
        ``FULL_GRID_FACTOR`` new points per separable curve point (fine blocks, or blocks halved to
        reach a budget), the step searches "near" instead.
        "near" starts in a window of ``JOINT_WINDOW`` options either side of ``k`` and widens it by
        as much on every side its optimum reaches, until the optimum is inside on every group: a
        fraction of the points, for targets where each point is expensive (a TensorRT engine build),
        and not exact (``benchmarks/joint.py`` measures both). One target only: several are decided
        by the separable choice.
        """
        if self.joint == "off" or len(self.models) != 1:
            return None
        lm, w, budget = self.models[0], JOINT_WINDOW, budgets[0]
        full = self.joint == "full" and self._full_grid_affordable(lm, keep_now, counts)
        top = np.array([len(c) - 1 for c in counts])
        separable_value = sum(float(v[kg]) for v, kg in zip(values, k, strict=True))
        best, best_value = np.asarray(k), separable_value
        first = np.asarray(lo) if full else np.maximum(best - w, lo)
        last = top if full else np.minimum(best + w, top)
        for _ in range(MAX_JOINT_ROUNDS):
            window = [np.arange(a, b + 1) for a, b in zip(first, last, strict=True)]
            problem = lm.joint_problem(keep_now, [c[o] for c, o in zip(counts, window, strict=True)],
                                       [v[o] for v, o in zip(values, window, strict=True)])  # fmt: skip
            if problem is None:
                break
            choice = solve_joint(problem, lm.to_table(budget), incumbent=best - first)
            if choice is None:
                break
            if (value := problem.value(choice)) > best_value * (1 + 1e-9):
                best, best_value = choice + first, value
            low_edge = (best == first) & (first > np.asarray(lo))
            high_edge = (best == last) & (last < top)
            if not (low_edge | high_edge).any():
                break
            first = np.where(low_edge, np.maximum(first - w, lo), first)
            last = np.where(high_edge, np.minimum(last + w, top), last)
        if best_value <= separable_value * (1 + 1e-9):
            return None
        return best, [lm.predict(np.array([c[j] for c, j in zip(counts, best, strict=True)]))], "joint"

    @staticmethod
    def _full_grid_affordable(lm: LatencyModel, keep_now: np.ndarray, counts: list[np.ndarray]) -> bool:
        grid = lm.factor_points(keep_now, counts)
        if grid is None:
            return False
        new = sum(len(v) for v in lm.tables.missing(grid).values())
        curves = sum(len(v) for v in lm.curve_points(keep_now, counts).values())
        if new <= FULL_GRID_FACTOR * curves:
            return True
        log.info("the full (cin, cout) grid would ask for %d new table points (%d for the separable curves): "
                 "searching near the separable choice instead", new, curves)  # fmt: skip
        return False

    def _prefetch(self, needs: list) -> None:
        """Fill every target's missing points at once: remote targets measure in parallel."""
        if len(self.models) == 1:
            self.models[0].require(needs[0])
            return
        with ThreadPoolExecutor(len(self.models)) as pool:
            list(pool.map(lambda pair: pair[0].require(pair[1]), zip(self.models, needs, strict=True)))

    def remove_masks(self) -> None:
        """Detach the mask hooks from the model (the masks stay recorded here)."""
        self._hooks.remove()

    def thinned_copy(self, masks: Sequence[np.ndarray] | None = None) -> nn.Module:
        """A physically pruned deep copy of the current state, or of ``masks`` (for end-to-end measurement)."""
        masks = self.masks if masks is None else masks
        self.remove_masks()
        try:
            keep = {g.root: np.flatnonzero(m) for g, m in zip(self.graph.groups, masks, strict=True)}
            return pruned_copy(self.model, self.example_inputs, keep, ignored_layers=self.graph.fixed_layers)
        finally:
            if self.history:
                self._hooks.apply()

    def finalize(self) -> nn.Module:
        """Remove the masked channels for real; returns the (same, now smaller) model."""
        if self._finalized:
            return self.model
        self.remove_masks()
        remove = {g: np.flatnonzero(~m) for g, m in enumerate(self.masks)}
        try:
            prune_groups(self.graph, remove)
        except GraphError as e:
            raise GraphError(f"cannot finalize: {e}") from None
        self._finalized = True
        return self.model
