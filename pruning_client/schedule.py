"""The pruning schedule's two choices: channels per pruning block, and the budget of every step."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pruning_client.graph import ModelGraph

MIN_TILES = 4  # a group aligns to its targets' tile only when it has at least this many of them


def block_sizes(
    graph: ModelGraph, block_size: int | Sequence[int] | None = None, max_blocks: int = 16, align: int = 8
) -> list[int]:
    """Channels per pruning block of every group: given (one or per group) or automatic.

    Automatic blocks are multiples of ``align`` channels (the targets' ``channel_block``) with at
    most ``max_blocks`` choices per group: kernels tile channels (8 or 16 on CPUs' NCHWc layout,
    8-32 on GPUs), and fewer choices mean fewer table points to measure; the paper
    used 32 for bottleneck convs and 64-128 for residual groups of ResNet-50.
    A group of fewer than ``MIN_TILES`` tiles of ``align`` aligns to 8 instead: a stem of 16
    channels keeps two blocks to choose from where 16-channel tiles would leave it one.
    Every block is a whole number of positions of the group's chunks (a
    grouped conv prunes all its groups alike), so sizes round up to that.
    A held group (``ChannelGroup.held``) is one block: it can only keep everything.
    """
    groups = graph.groups
    if block_size is None:
        tile = [align if g.size >= MIN_TILES * align else 8 for g in groups]
        # a group of heads (``unit`` channels each) already comes in whole kernels' worth: one head a block
        aligns = [math.lcm(t, g.chunks) if g.unit == 1 else 1 for g, t in zip(groups, tile, strict=True)]
        sizes = [max(a, math.ceil(g.size / max_blocks / a) * a) for g, a in zip(groups, aligns, strict=True)]
    else:
        # one size is in layer channels (a head is ``unit`` of them); one per group is in the groups' own
        sizes = [math.ceil(block_size / g.unit) for g in groups] if isinstance(block_size, int) else list(block_size)
        if len(sizes) != len(groups) or min(sizes) < 1:
            raise ValueError(f"block_size: a positive int or one per group ({len(groups)})")
        sizes = [math.ceil(b / g.chunks) * g.chunks for b, g in zip(sizes, groups, strict=True)]
    return [g.size if g.held else b for b, g in zip(sizes, groups, strict=True)]


def exponential_budgets(full: float, target: float, steps: int) -> list[float]:
    """Budgets of steps 1..S shrinking geometrically from ``full`` to ``target`` (as in the paper)."""
    return [math.exp((s / steps) * math.log(target) + (1 - s / steps) * math.log(full)) for s in range(1, steps + 1)]
