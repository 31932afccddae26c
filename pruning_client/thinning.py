"""Removing channels for real: a group's channels cut from every module that carries them."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from torch import nn

from pruning_client.graph import ExampleInputs, ModelGraph, analyse
from pruning_client.heads import PrunableHeads
from pruning_client.index_mapping import tolerant_index_mapping
from pruning_client.layers import GraphError


def prune_groups(graph: ModelGraph, remove: dict[int, np.ndarray]) -> nn.Module:
    """Physically remove channels (indices in each group's own numbering) from ``graph.model``.

    Each group search maps indices again, through the ops the analysis could not map too: tolerated
    as there (no group pruned here runs through one; those are held).
    """
    with tolerant_index_mapping():
        for gid, idxs in remove.items():
            if len(idxs) == 0:
                continue
            group = graph.groups[gid]
            if len(idxs) >= group.size:
                raise GraphError(f"group {gid} ({group.root}) would lose all {group.size} channels")
            root = graph.module(group.root)
            if isinstance(root, PrunableHeads):
                root.prune_heads(idxs)
                continue
            handler = graph.dg.get_pruner_of_module(root).prune_out_channels
            graph.dg.get_pruning_group(root, handler, sorted(int(i) for i in idxs)).prune()
    return graph.model


def pruned_copy(
    model: nn.Module,
    example_inputs: ExampleInputs,
    keep: dict[str, np.ndarray],
    ignored_layers: Sequence[str] = (),
) -> nn.Module:
    """A physically thinned deep copy; ``keep`` maps a group's root module name to the channels it keeps."""
    clone = copy.deepcopy(model)
    graph = analyse(clone, example_inputs, ignored_layers=[clone.get_submodule(n) for n in ignored_layers])
    by_root = {g.root: g for g in graph.groups}
    remove = {}
    for root, kept in keep.items():
        group = by_root[root]
        remove[group.id] = np.setdiff1d(np.arange(group.size), kept)
    return prune_groups(graph, remove)
