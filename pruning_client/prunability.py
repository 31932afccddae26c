"""Which groups can really be pruned: a trial prune of a copy, run forward, before any decision.

The dependency graph can say a group is prunable when the model disagrees: a reshape to a stored
width (``x.view(b, h, w, self.dim)``), heads computed from a fixed embedding size, a channel shuffle
mapped wrongly. Rather than fail in the middle of a run, each such group is found up front by
pruning copies (all candidate groups by one position at once; when that breaks, halves of them,
down to the groups that break) and held: it keeps all its channels and the report says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from pruning_client.graph import ChannelGroup, ExampleInputs, ModelGraph, as_inputs
from pruning_client.layers import flatten
from pruning_client.thinning import pruned_copy

log = logging.getLogger("halp.prunability")


def _shapes(output: object) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in flatten(output) if isinstance(t, torch.Tensor)]


def hold_unprunable(graph: ModelGraph, example_inputs: ExampleInputs) -> list[ChannelGroup]:
    """Mark the groups whose pruning breaks the model's forward pass as held; the ones newly held.

    Done once per graph (``graph.checked``): the first call costs one pruned copy and forward pass
    when every group prunes cleanly, about two per offending group otherwise.
    """
    if graph.checked:
        return []
    model = graph.model
    inputs = as_inputs(model, example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = _shapes(model(*inputs))
        reasons: dict[int, str] = {}

        def works(groups: list[ChannelGroup]) -> bool:
            keep = {g.root: g.channels_at(np.arange(g.positions - 1)) for g in groups}
            try:
                thin = pruned_copy(model, inputs, keep, ignored_layers=graph.fixed_layers).eval()
                with torch.no_grad():
                    got = _shapes(thin(*inputs))
            except Exception as e:  # noqa: BLE001 - any failure of the pruned copy is the answer
                if len(groups) == 1:
                    reasons[groups[0].id] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                return False
            if got != reference and len(groups) == 1:
                reasons[groups[0].id] = f"the output shape changes ({reference} -> {got})"
            return got == reference

        candidates = [g for g in graph.groups if not g.held and g.positions >= 2]
        failing = _failing(candidates, works)
        for g in failing:
            g.held = f"pruning it breaks the forward pass ({reasons.get(g.id, 'only together with other groups')})"
            log.warning("group %s is held: %s", g.root, g.held)
        graph.checked = True
        return failing
    finally:
        model.train(was_training)


def _failing(groups: list[ChannelGroup], works: Callable[[list[ChannelGroup]], bool]) -> list[ChannelGroup]:
    """The groups that break when pruned, found by halving; ones that break only together are all held."""
    if not groups or works(groups):
        return []
    if len(groups) == 1:
        return groups
    mid = len(groups) // 2
    bad = _failing(groups[:mid], works) + _failing(groups[mid:], works)
    if not bad:
        return groups  # each half works alone, the whole does not: hold them all rather than guess
    rest = [g for g in groups if g not in bad]
    return bad + (_failing(rest, works) if rest else [])
