"""Multi-head attention whose heads can be removed, and the conversion of ``nn.MultiheadAttention`` to it.

``nn.MultiheadAttention`` ties its inner width to ``embed_dim`` and applies its in-projection as a
bare parameter: no head can go, and a third of a ViT's weights runs where no latency table sees it.
``HeadAttention`` computes the same function with q, k, v and the output projection as
``nn.Linear`` calls (timed by the tables like any linear layer) and an inner width of
``num_heads x head_dim`` of its own, so whole heads can be pruned while the embedding width stays.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from pruning_client.heads import PrunableHeads
from pruning_client.position_attention import (
    from_relative_positional,
    from_shifted_window,
    is_relative_positional,
    is_shifted_window,
)

log = logging.getLogger("halp.attention")


class HeadAttention(PrunableHeads):
    """Drop-in for ``nn.MultiheadAttention`` (same call and returns) whose heads ``prune_heads`` removes."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        if head_dim is None and embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        super().__init__(embed_dim, num_heads, head_dim or embed_dim // num_heads, (bias,) * 4, kdim, vdim)
        self.dropout, self.batch_first = dropout, batch_first

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, n, s = query.shape[0], query.shape[1], key.shape[1]
        q = self.q(query).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(key).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(value).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        mask = self._additive_mask(attn_mask, key_padding_mask, is_causal, b, n, s, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            probs = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            y = F.dropout(probs, dropout, self.training) @ v
            weights = probs.mean(1) if average_attn_weights else probs
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.out_proj(y.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out, weights = out.squeeze(1), None if weights is None else weights.squeeze(0)
        return out, weights

    def _additive_mask(
        self, attn_mask, key_padding_mask, is_causal: bool, b: int, n: int, s: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """``nn.MultiheadAttention``'s masks (True = may not attend, or added floats) as one float mask."""
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(n, s, dtype=torch.bool, device=self.q.weight.device).triu(1)
        masks = []
        if attn_mask is not None:  # (n, s) for every sequence, or (b x heads, n, s)
            masks.append(attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(b, self.num_heads, n, s))
        if key_padding_mask is not None:  # (b, s)
            masks.append(key_padding_mask.reshape(b, 1, 1, s))
        mask = None
        for m in masks:
            if m.dtype == torch.bool:
                m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
            mask = m.to(dtype) if mask is None else mask + m.to(dtype)
        return mask


@torch.no_grad()
def from_multihead(mha: nn.MultiheadAttention) -> HeadAttention | None:
    """The same attention as a ``HeadAttention``; None for the variants it does not reproduce
    (learnt key/value biases, a zero-attention row)."""
    if mha.bias_k is not None or mha.add_zero_attn:
        return None
    bias = mha.in_proj_bias is not None
    attention = HeadAttention(
        mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=bias, dropout=mha.dropout,
        batch_first=mha.batch_first,
    ).to(mha.out_proj.weight)  # fmt: skip
    if mha._qkv_same_embed_dim:
        weights = mha.in_proj_weight.chunk(3)
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    attention.load_projections(weights, mha.in_proj_bias.chunk(3) if bias else (None,) * 3, mha.out_proj)
    attention.train(mha.training)
    return attention


def convert_attention(model: nn.Module) -> list[str]:
    """Replace, in place, every attention whose heads cannot be pruned as it is by the same function with
    prunable heads: ``nn.MultiheadAttention`` by ``HeadAttention``, torchvision's Swin (V1, V2) window
    attention and MaxViT's relative-position attention by ``position_attention``'s. The names of those
    replaced (an ``nn.MultiheadAttention`` it cannot reproduce stays, and is logged)."""
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            attention = from_multihead(module)
            if attention is None:
                log.warning(
                    "%s keeps nn.MultiheadAttention (key/value biases or zero attention): heads not pruned", name
                )
                continue
        elif is_shifted_window(module):
            attention = from_shifted_window(module)
        elif is_relative_positional(module):
            attention = from_relative_positional(module)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, attention)
        replaced.append(name)
    return replaced
