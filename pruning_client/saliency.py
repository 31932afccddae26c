"""First-order Taylor saliency per channel of each coupled group (Molchanov et al., 2019).

A channel's importance is ``(sum_p w_p * dL/dw_p)^2`` over its parameters:
the batch-norm gamma and beta where a BN follows, else the producing
conv/linear filter and bias. It is summed over every layer of the coupled
group and averaged over the minibatches since the last pruning step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pruning_client.graph import ChannelGroup, ModelGraph


def _channel_taylor(module: nn.Module) -> torch.Tensor | None:
    """Per-output-channel w*g summed over the channel's parameters (before squaring)."""
    weight = getattr(module, "weight", None)
    if weight is None or weight.grad is None:
        return None
    contrib = (weight * weight.grad).reshape(weight.shape[0], -1).sum(1)
    bias = getattr(module, "bias", None)
    if bias is not None and bias.grad is not None:
        contrib = contrib + bias * bias.grad
    return contrib.detach()


class TaylorSaliency:
    """Accumulates per-channel importance of every group; call ``accumulate()`` after backward."""

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        self._sums = [torch.zeros(g.size, dtype=torch.float64) for g in graph.groups]
        self._index = [self._sources(g) for g in graph.groups]
        self.batches = 0

    def _sources(self, group: ChannelGroup) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
        if group.held:  # never pruned, and its index mapping may be the reason
            return []
        items = group.bns or group.producers  # BN gamma/beta where present, else the filters
        return [(self.graph.module(it.module), torch.as_tensor(it.idxs), torch.as_tensor(it.root_idxs)) for it in items]

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add this minibatch's importance; a minibatch whose gradients overflowed (AMP) is left out."""
        parts = [
            (total, root, contrib[idxs].double().cpu() ** 2)
            for total, sources in zip(self._sums, self._index, strict=True)
            for module, idxs, root in sources
            if (contrib := _channel_taylor(module)) is not None
        ]
        if not all(bool(torch.isfinite(p).all()) for _, _, p in parts):
            return
        for total, root, p in parts:
            total.index_add_(0, root, p)
        self.batches += 1

    def state_dict(self) -> dict:
        return {"sums": [s.clone() for s in self._sums], "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in zip(self._sums, state["sums"], strict=True):
            mine.copy_(saved)
        self.batches = state["batches"]

    def averages(self) -> list[np.ndarray]:
        n = max(self.batches, 1)
        return [(s / n).numpy() for s in self._sums]

    def reset(self) -> None:
        for s in self._sums:
            s.zero_()
        self.batches = 0


@torch.no_grad()
def magnitude_saliency(graph: ModelGraph) -> list[np.ndarray]:
    """Data-free stand-in for Taylor saliency (|gamma| of the BNs, else filter norms).

    Used to rehearse a pruning run before any training (``halp profile``), so
    the tables that run will ask for can be measured ahead of time.
    """
    out = []
    for group in graph.groups:
        total = torch.zeros(group.size, dtype=torch.float64)
        for item in [] if group.held else group.bns or group.producers:
            weight = graph.module(item.module).weight.detach()
            per_channel = weight.abs() if weight.dim() == 1 else weight.reshape(weight.shape[0], -1).norm(dim=1)
            total.index_add_(0, torch.as_tensor(item.root_idxs), per_channel[torch.as_tensor(item.idxs)].double())
        out.append(total.numpy())
    return out
