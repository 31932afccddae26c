"""Coverage: every architecture family in ``architectures`` goes through analyse -> prune to half its
predicted latency -> forward with its original output shape -> ONNX export -> ONNX Runtime agreement."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.pruner import HALPPruner
from pruning_client.saliency import magnitude_saliency
from tests.architectures import FAMILIES

# What each family cannot prune, and why (checked exactly, so a change in coverage shows):
HELD = {
    "shufflenet_v2": {"body.1.branch.2.0": "channel axis"},  # the split-and-shuffled trunk: its view splits channels
    # nn.MultiheadAttention as given: the residual stream is held (heads need embed_dim % heads == 0); as
    # `halp prune` runs it (vit_heads, HeadAttention) nothing is held
    "vit": {"blocks.1.mlp.2": "embed_dim"},
    # window attention: q, k, v reshaped into heads (the channel axis split), and the residual streams
    # reshaped to stored widths (found by the trial prune)
    "maxvit": {"body.1.qkv": "channel axis", "body.2.qkv": "channel axis", "body.2.proj": "breaks the forward pass"},
    "swin": {**{n: "channel axis" for n in ("stage1.0.qkv", "stage1.1.qkv", "stage2.qkv")},
             **{n: "breaks the forward pass" for n in ("stage1.1.mlp.2", "stage2.mlp.2")}},
}  # fmt: skip
UNMODELLED = {"googlenet_aux": 0.78, "vit": 0.26}  # aux head (training only); attention's in-projection


def cost_tables() -> LatencyTables:
    """Every layer costs a fixed 5 units plus cin x cout: the budget then needs real pruning."""
    return LatencyTables(fetch=lambda need: {k: {p: 5.0 + p[0] * p[1] for p in pts} for k, pts in need.items()})


def prune_to_half(model: torch.nn.Module, x: torch.Tensor, block_size: int = 4):
    """analyse -> ``HALPPruner`` to half the predicted latency on ``cost_tables``, in 2 steps: the graph,
    the pruner and its last step."""
    graph = analyse(model, x[:1])
    latency = LatencyModel(graph, cost_tables())
    pruner = HALPPruner(model, x[:1], latency, target_ratio=0.5, steps=2, interval=1, block_size=block_size,
                         allow_minimum=True)  # fmt: skip
    for _ in range(2):
        record = pruner.prune_now(magnitude_saliency(graph))
    return graph, pruner, record


def finalize_and_check_onnx(pruner: HALPPruner, x: torch.Tensor) -> torch.Tensor:
    """The pruned model's output on ``x``, once ONNX Runtime has been checked to agree with it."""
    pruned = pruner.finalize().eval()
    with torch.no_grad():
        out = pruned(x)
    session = ort.InferenceSession(export_onnx(pruned, x), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, out.numpy(), rtol=1e-3, atol=1e-4)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_prunes_to_half_and_exports(family):
    factory, size = FAMILIES[family]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, 3, size, size)
    expected_shape = model(x).shape
    graph, pruner, record = prune_to_half(model, x)
    held = HELD.get(family, {})
    assert sorted(graph.held) == sorted(held)
    assert all(why in graph.held[root] for root, why in held.items()), graph.held
    assert graph.unmodelled_weight_share == pytest.approx(UNMODELLED.get(family, 0.0), abs=0.01)
    pruned_groups = [g for g, k in zip(graph.groups, pruner.keep_counts(), strict=True) if k < g.size]
    assert pruned_groups and not any(g.held for g in pruned_groups)
    # half the predicted latency, unless what is held costs more than that: then the least that can be kept
    assert record.met or (held and pruner.keep_counts().tolist() == latency_floor(graph, pruner))
    assert finalize_and_check_onnx(pruner, x).shape == expected_shape


def latency_floor(graph, pruner) -> list[int]:
    """Channels per group when every prunable group keeps one block and every held one keeps all."""
    return [g.size if g.held else min(g.size, b) for g, b in zip(graph.groups, pruner.block_sizes, strict=True)]
