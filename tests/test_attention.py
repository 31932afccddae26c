"""``HeadAttention``: the same function as ``nn.MultiheadAttention``, and whole heads pruned in a ViT."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pruning_client.attention import HeadAttention, convert_attention, from_multihead
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel
from pruning_client.pruner import HALPPruner
from pruning_client.run_settings import RunSettings
from pruning_client.saliency import magnitude_saliency
from pruning_client.ui import SilentUI
from pruning_client.workflow import Run
from tests.architectures import ViT
from tests.test_architectures import cost_tables

PADDED = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])  # the second sequence's last 2 keys are padding
CAUSAL = torch.ones(5, 5, dtype=torch.bool).triu(1)
CALLS = {
    "fast path": {"need_weights": False},
    "weights": {},
    "per-head weights": {"average_attn_weights": False},
    "padding": {"key_padding_mask": PADDED, "need_weights": False},
    "masks and weights": {"key_padding_mask": PADDED, "attn_mask": CAUSAL},
    "float mask": {"attn_mask": torch.randn(5, 5), "need_weights": False},
    "causal": {"attn_mask": CAUSAL, "is_causal": True, "need_weights": False},
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_head_attention_returns_what_multihead_attention_does(batch_first, call):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    converted = from_multihead(mha)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    want, got = mha(x, x, x, **CALLS[call]), converted(x, x, x, **CALLS[call])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert (got[1] is None) == (want[1] is None)
    if want[1] is not None:
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_unbatched_and_cross_attention_with_other_key_widths():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, kdim=8, vdim=12).eval()
    converted = from_multihead(mha)
    q, k, v = torch.randn(5, 16), torch.randn(7, 8), torch.randn(7, 12)
    torch.testing.assert_close(converted(q, k, v)[0], mha(q, k, v)[0], rtol=1e-5, atol=1e-6)
    assert from_multihead(nn.MultiheadAttention(16, 2, add_bias_kv=True)) is None  # not reproduced: kept


def test_removing_heads_is_silencing_them():
    """The pruned attention equals the unpruned one with the removed heads' values zeroed."""
    torch.manual_seed(0)
    attention = HeadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        attention.v.weight[4:8] = 0  # head 1
        attention.v.bias[4:8] = 0
        attention.v.weight[12:] = 0  # head 3
        attention.v.bias[12:] = 0
        want = attention(x, x, x, need_weights=False)[0]
    attention.prune_heads([1, 3])
    assert attention.num_heads == 2 and attention.q.out_features == 8 and attention.out_proj.in_features == 8
    torch.testing.assert_close(attention(x, x, x, need_weights=False)[0], want)
    with pytest.raises(ValueError, match="cannot remove"):
        attention.prune_heads([0, 1])


def test_vit_loses_whole_heads_with_its_residual_width_held():
    """Held residual stream: the budget can only come from the MLPs and the heads, and both give."""
    torch.manual_seed(0)
    model = ViT(dim=32, heads=4).eval()
    x = torch.randn(2, 3, 32, 32)
    want_shape = model(x).shape
    assert convert_attention(model) == ["blocks.0.attention", "blocks.1.attention"]
    graph = analyse(model, x[:1], ignored_layers=[model.embed])
    heads = {g.root: g for g in graph.groups if g.unit > 1}
    assert sorted(heads) == ["blocks.0.attention", "blocks.1.attention"] and graph.unmodelled_weight_share == 0
    assert all(g.size == 4 and g.unit == 8 for g in heads.values())
    q_rows = {lc.module: row for row, lc in enumerate(graph.layers)}
    assert graph.f_out[q_rows["blocks.0.attention.q"], heads["blocks.0.attention"].id] == 8  # a head = 8 rows
    latency = LatencyModel(graph, cost_tables())
    pruner = HALPPruner(model, x[:1], latency, target_ratio=0.3, steps=1, interval=1, block_size=8)
    record = pruner.prune_now(magnitude_saliency(graph))
    assert record.met
    kept = dict(zip([g.root for g in graph.groups], pruner.keep_counts().tolist(), strict=True))
    assert min(kept[root] for root in heads) < 4  # some heads go
    with torch.no_grad():
        masked = model(x)  # pruned heads masked, not yet removed
    pruned = pruner.finalize().eval()
    assert [b.attention.num_heads for b in pruned.blocks] == [kept[root] for root in sorted(heads)]
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == want_shape
    torch.testing.assert_close(out, masked, rtol=1e-4, atol=1e-5)
    session = ort.InferenceSession(export_onnx(pruned, x), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, out.numpy(), rtol=1e-3, atol=1e-4)


class Stages(SilentUI):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def stage(self, text: str) -> None:
        self.lines.append(text)


def test_a_run_converts_multihead_attention_and_fixed_holds_a_whole_block():
    ui = Stages()
    run = Run(RunSettings(targets=["http://127.0.0.1:1"], fixed=["blocks.0"]), ui=ui)
    model = ViT()
    graph = run.analyse(model, torch.randn(1, 3, 32, 32))
    assert any("runs with prunable heads" in line and "blocks.1.attention" in line for line in ui.lines)
    assert isinstance(model.blocks[0].attention, HeadAttention)
    by_root = {g.root: g for g in graph.groups}
    assert by_root["blocks.0.attention"].held == "held by --fixed" and not by_root["blocks.1.attention"].held
    assert "blocks.0.mlp.0" in graph.fixed_layers and not any(g.root == "blocks.0.mlp.0" for g in graph.groups)
    assert any(g.root == "blocks.1.mlp.0" for g in graph.groups)
