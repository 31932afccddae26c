"""The heads of an attention as the rest of the project sees them: four projections and a head count."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn


class PrunableHeads(nn.Module):
    """q, k, v and an output projection as ``nn.Linear`` calls, with an inner width of ``num_heads x
    head_dim`` of its own: the heads that the graph groups (``graph._head_group``) and ``prune_heads``
    removes. Subclasses say what else holds a slot per head (``_keep_heads``)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        bias: tuple[bool, bool, bool, bool] = (True, True, True, True),  # q, k, v, out_proj
        kdim: int | None = None,
        vdim: int | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q = nn.Linear(embed_dim, inner, bias[0])
        self.k = nn.Linear(kdim or embed_dim, inner, bias[1])
        self.v = nn.Linear(vdim or embed_dim, inner, bias[2])
        self.out_proj = nn.Linear(inner, embed_dim, bias[3])

    @torch.no_grad()
    def load_projections(self, weights, biases, out: nn.Linear) -> None:
        """Take the weights of an attention being converted: q, k, v ``weights`` and ``biases`` (None where
        it has none, or where this one has none: Swin V2's key), and its output projection ``out``."""
        for linear, w, b in zip((self.q, self.k, self.v), weights, biases, strict=True):
            linear.weight.copy_(w)
            if linear.bias is not None and b is not None:
                linear.bias.copy_(b)
        self.out_proj.weight.copy_(out.weight)
        if self.out_proj.bias is not None and out.bias is not None:
            self.out_proj.bias.copy_(out.bias)

    @torch.no_grad()
    def prune_heads(self, heads: Sequence[int]) -> None:
        """Remove the given heads: their rows of q, k, v, their columns of the output projection, and
        whatever else has a slot per head."""
        drop = sorted(set(int(h) for h in heads))
        if not set(drop) <= set(range(self.num_heads)) or len(drop) >= self.num_heads:
            raise ValueError(f"cannot remove heads {drop} of {self.num_heads}")
        channels = [h * self.head_dim + d for h in drop for d in range(self.head_dim)]
        for linear in (self.q, self.k, self.v):
            tp.prune_linear_out_channels(linear, channels)
        tp.prune_linear_in_channels(self.out_proj, channels)
        self._keep_heads(torch.tensor([h for h in range(self.num_heads) if h not in drop]), drop)
        self.num_heads -= len(drop)

    def _keep_heads(self, keep: torch.Tensor, drop: list[int]) -> None:
        """Keep only heads ``keep`` of the other per-head state (none here)."""
