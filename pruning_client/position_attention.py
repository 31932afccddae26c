"""Attention with a learnt bias per head and relative position (Swin, Swin V2, MaxViT), heads prunable.

torchvision's ``ShiftedWindowAttention`` applies q, k and v as one tensor-valued weight inside a
function whose head width follows the embedding width (``C // num_heads``), and MaxViT's
``RelativePositionalMultiHeadAttention`` reshapes its heads back to the embedding width: no head can
go, and the analysis cannot follow the projections. ``BiasedHeadAttention`` computes the same
functions with q, k, v and the output projection as ``nn.Linear`` calls and an inner width of its
own; removing a head removes its column of the position-bias table (or output of Swin V2's bias MLP)
and its logit scale with it. The converters recognise the torchvision modules by their attributes, so
torchvision stays out of the runtime dependencies.
"""

from __future__ import annotations

import math

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from pruning_client.heads import PrunableHeads


class TableBias(nn.Module):
    """A learnt bias per (relative position, head), looked up for every pair of tokens (Swin, MaxViT)."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor, tokens: int) -> None:
        super().__init__()
        self.table = nn.Parameter(table.detach().clone())
        self.register_buffer("index", index.detach().flatten().clone())
        self.tokens = tokens

    def forward(self) -> torch.Tensor:
        """(heads, tokens, tokens)"""
        return self.table[self.index].view(self.tokens, self.tokens, -1).permute(2, 0, 1)

    @torch.no_grad()
    def keep_heads(self, keep: torch.Tensor, drop: list[int]) -> None:
        self.table = nn.Parameter(self.table[:, keep].clone())


class MLPBias(nn.Module):
    """Swin V2's continuous bias: an MLP of log-spaced relative coordinates, squashed to (0, 16)."""

    def __init__(self, mlp: nn.Sequential, coords: torch.Tensor, index: torch.Tensor, tokens: int) -> None:
        super().__init__()
        self.mlp = mlp
        self.register_buffer("coords", coords.detach().clone())
        self.register_buffer("index", index.detach().flatten().clone())
        self.tokens = tokens

    def forward(self) -> torch.Tensor:
        table = self.mlp(self.coords).flatten(0, -2)  # (relative positions, heads)
        return 16 * torch.sigmoid(table[self.index].view(self.tokens, self.tokens, -1).permute(2, 0, 1))

    @torch.no_grad()
    def keep_heads(self, keep: torch.Tensor, drop: list[int]) -> None:
        tp.prune_linear_out_channels(self.mlp[-1], drop)


class BiasedHeadAttention(PrunableHeads):
    """Self-attention over the tokens of ``x`` (..., tokens, dim), with a position bias per head; scaled
    dot products, or with ``logit_scale`` the cosine attention of Swin V2."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        position: TableBias | MLPBias,
        scale: float,
        bias: tuple[bool, bool, bool, bool] = (True, True, True, True),
        logit_scale: torch.Tensor | None = None,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, head_dim, bias)
        self.position, self.scale = position, scale
        self.logit_scale = None if logit_scale is None else nn.Parameter(logit_scale.detach().clone())
        self.attention_dropout, self.dropout = attention_dropout, dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` is added to the scores (..., heads, tokens, tokens), broadcast."""
        shape = (*x.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = (proj(x).view(shape).transpose(-3, -2) for proj in (self.q, self.k, self.v))
        if self.logit_scale is None:
            scores = (q * self.scale) @ k.transpose(-2, -1)
        else:
            scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            scores = scores * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        scores = scores + self.position()
        if mask is not None:
            scores = scores + mask
        probs = F.dropout(torch.softmax(scores, dim=-1), self.attention_dropout, self.training)
        y = (probs @ v).transpose(-3, -2).reshape(*x.shape[:-1], self.num_heads * self.head_dim)
        return F.dropout(self.out_proj(y), self.dropout, self.training)

    @torch.no_grad()
    def _keep_heads(self, keep: torch.Tensor, drop: list[int]) -> None:
        self.position.keep_heads(keep, drop)
        if self.logit_scale is not None:
            self.logit_scale = nn.Parameter(self.logit_scale[keep].clone())


class ShiftedWindowHeadAttention(nn.Module):
    """Swin's (shifted) window attention around a ``BiasedHeadAttention``: pad to whole windows, shift,
    attend within each window (regions that the shift brought together masked apart), and undo it all."""

    def __init__(self, attention: BiasedHeadAttention, window: list[int], shift: list[int]) -> None:
        super().__init__()
        self.attention, self.window, self.shift = attention, list(window), list(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, height, width, channels), returned in that layout."""
        b, h, w, c = x.shape
        (wh, ww), shift = self.window, list(self.shift)
        x = F.pad(x, (0, 0, 0, (-w) % ww, 0, (-h) % wh))
        ph, pw = x.shape[1], x.shape[2]
        shift = [s if size > win else 0 for s, win, size in zip(shift, self.window, (ph, pw), strict=True)]
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        rows, cols = ph // wh, pw // ww
        windows = x.view(b, rows, wh, cols, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, rows * cols, wh * ww, c)
        mask = _shift_mask(ph, pw, self.window, shift, x) if any(shift) else None
        y = self.attention(windows, mask)
        y = y.view(b, rows, cols, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        if any(shift):
            y = torch.roll(y, shifts=(shift[0], shift[1]), dims=(1, 2))
        return y[:, :h, :w, :].contiguous()


def _shift_mask(ph: int, pw: int, window: list[int], shift: list[int], like: torch.Tensor) -> torch.Tensor:
    """(windows, 1, tokens, tokens): -100 between tokens of the regions a cyclic shift made neighbours."""
    region = like.new_zeros((ph, pw))
    bounds = [((0, -win), (-win, -s), (-s, None)) for win, s in zip(window, shift, strict=True)]
    for i, (h0, h1) in enumerate(bounds[0]):
        for j, (w0, w1) in enumerate(bounds[1]):
            region[h0:h1, w0:w1] = 3 * i + j
    (wh, ww) = window
    ids = region.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    apart = ids.unsqueeze(1) != ids.unsqueeze(2)
    return torch.zeros_like(apart, dtype=like.dtype).masked_fill(apart, -100.0).unsqueeze(1)


def _split_projection(attention: PrunableHeads, qkv: nn.Linear, out: nn.Linear) -> None:
    """Load a fused qkv projection (q, k, v rows stacked) and the output projection into ``attention``."""
    attention.load_projections(qkv.weight.chunk(3), qkv.bias.chunk(3) if qkv.bias is not None else (None,) * 3, out)


def from_shifted_window(module: nn.Module) -> ShiftedWindowHeadAttention:
    """torchvision's ``ShiftedWindowAttention`` or ``ShiftedWindowAttentionV2`` (cosine attention,
    bias MLP, no key bias) as the same function with prunable heads."""
    dim, heads = module.qkv.in_features, module.num_heads
    tokens = module.window_size[0] * module.window_size[1]
    v2 = hasattr(module, "cpb_mlp")
    if v2:
        position: TableBias | MLPBias = MLPBias(module.cpb_mlp, module.relative_coords_table,
                                                module.relative_position_index, tokens)  # fmt: skip
    else:
        position = TableBias(module.relative_position_bias_table, module.relative_position_index, tokens)
    qkv_bias, proj_bias = module.qkv.bias is not None, module.proj.bias is not None
    attention = BiasedHeadAttention(
        dim, heads, dim // heads, position, scale=(dim // heads) ** -0.5,
        bias=(qkv_bias, qkv_bias and not v2, qkv_bias, proj_bias),  # V2 zeroes the key bias at every call
        logit_scale=module.logit_scale if v2 else None,
        attention_dropout=module.attention_dropout, dropout=module.dropout,
    ).to(module.qkv.weight)  # fmt: skip
    _split_projection(attention, module.qkv, module.proj)
    converted = ShiftedWindowHeadAttention(attention, module.window_size, module.shift_size)
    return converted.train(module.training)


def from_relative_positional(module: nn.Module) -> BiasedHeadAttention:
    """MaxViT's ``RelativePositionalMultiHeadAttention`` as the same function with prunable heads (it
    scales by the embedding width, not the head's, and so does this)."""
    dim = module.to_qkv.in_features
    position = TableBias(module.relative_position_bias_table, module.relative_position_index, module.max_seq_len)
    attention = BiasedHeadAttention(dim, module.n_heads, module.head_dim, position, scale=module.scale_factor).to(
        module.to_qkv.weight
    )
    _split_projection(attention, module.to_qkv, module.merge)
    return attention.train(module.training)


def is_shifted_window(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("qkv", "proj", "window_size", "shift_size", "num_heads")) and (
        hasattr(module, "relative_position_bias_table") or hasattr(module, "cpb_mlp")
    )


def is_relative_positional(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("to_qkv", "merge", "relative_position_bias_table", "n_heads"))
