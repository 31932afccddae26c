"""torchvision's real definitions (not stand-ins) through analyse -> prune -> forward -> ONNX -> ONNX Runtime.

Reduced-depth configurations of the public classes keep each test to seconds; the full models
(``shufflenet_v2_x1_0`` at 224x224) are ``slow``.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pruning_client.attention import convert_attention
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.heads import PrunableHeads
from pruning_client.prunability import hold_unprunable
from pruning_client.thinning import pruned_copy
from tests.test_architectures import finalize_and_check_onnx, prune_to_half
from tests.torchvision_models import models


def small_shufflenet():
    """torchvision.models.ShuffleNetV2 as shufflenet_v2_x1_0 builds it, narrower and shallower; a stage of
    three blocks is what makes the dependency graph divide by zero at the shuffle's ``view``."""
    return models().ShuffleNetV2([3, 2, 2], [24, 48, 96, 192, 256], num_classes=10)


def small_swin():
    """torchvision.models.SwinTransformer as swin_t builds it (shifted windows, patch merging), two stages."""
    return models().SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10
    )


def small_maxvit():
    """torchvision.models.MaxVit as maxvit_t builds it (MBConv, block and grid attention), two stages."""
    return models().MaxVit(
        input_size=(64, 64), stem_channels=16, partition_size=4, block_channels=[16, 32], block_layers=[1, 1],
        head_dim=8, stochastic_depth_prob=0.0, num_classes=10,
    )  # fmt: skip


def small_swin_v2():
    """torchvision.models.SwinTransformer as swin_v2_t builds it (cosine attention, a bias MLP), two stages."""
    tv = models()
    return tv.SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10,
        block=tv.swin_transformer.SwinTransformerBlockV2, downsample_layer=tv.swin_transformer.PatchMergingV2,
    )  # fmt: skip


def with_prunable_heads(build):
    """The model with its attention converted, as every run converts it (``convert_attention``)."""

    def converted():
        model = build()
        assert convert_attention(model), "no attention converted"
        return model

    return converted


def randomised_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Statistics and affine terms away from (0, 1): a channel mapped to the wrong place then shows."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


SMALL = {"shufflenet_v2": small_shufflenet, "swin": small_swin, "swin_v2": small_swin_v2, "maxvit": small_maxvit}
SMALL |= {f"{name}_heads": with_prunable_heads(build) for name, build in
          (("swin", small_swin), ("swin_v2", small_swin_v2), ("maxvit", small_maxvit))}  # fmt: skip
MLP_IN = {"swin": "mlp.0", "maxvit": "mlp_layer.1"}


def _normalised_together(model: torch.nn.Module, thin: torch.nn.Module) -> bool:
    """Whether thinning changed a LayerNorm's width: the group's channels are normalised together, and
    dropping some changes the others' statistics (a residual stream of Swin)."""
    return any(
        isinstance(m, torch.nn.LayerNorm) and m.normalized_shape != thin.get_submodule(n).normalized_shape
        for n, m in model.named_modules()
    )


def prune_to_half_and_export(model: torch.nn.Module, x: torch.Tensor, block_size: int = 4):
    graph, pruner, record = prune_to_half(model, x, block_size)
    return graph, record, finalize_and_check_onnx(pruner, x)


def test_shufflenet_v2_prunes_its_branches_and_holds_the_shuffled_trunk_by_name():
    model = randomised_batch_norms(small_shufflenet())
    x = torch.randn(2, 3, 64, 64)
    graph, record, out = prune_to_half_and_export(model, x)
    assert record.met and out.shape == (2, 10)
    # the trunk runs through the split and the shuffle: its groups are held and say why
    assert graph.held and all("split or shuffle" in why or "cannot map" in why for why in graph.held.values())
    prunable = [g.root for g in graph.groups if not g.held]
    branches = {f"stage2.{b}.branch2.3" for b in range(3)} | {f"stage{s}.{b}.branch2.3" for s in (3, 4) for b in (0, 1)}
    assert branches <= set(prunable)  # each branch's inner width


@pytest.mark.parametrize("family", ["shufflenet_v2", "swin", "maxvit", "swin_heads", "swin_v2_heads", "maxvit_heads"])
def test_every_group_pruned_keeps_the_channels_it_says(family):
    """Thinned == the original with the dropped channels zeroed where they are made (conv/linear rows,
    BN affine terms): the mapping through shuffles and window partitions sends kept channels to kept
    channels (a wrong one leaves the shapes right and the numbers wrong). Groups whose channels a
    LayerNorm normalises together cannot be compared so (dropping one changes the others' statistics)."""
    model = randomised_batch_norms(SMALL[family]())
    x = torch.randn(1, 3, 64, 64)
    graph = analyse(model, x)
    hold_unprunable(graph, x)  # as every run does: what breaks the forward pass is held first
    checked = 0
    for group in (g for g in graph.groups if not g.held):
        keep = group.channels_at(np.arange(group.positions // 2))
        thin = pruned_copy(model, x, {group.root: keep})
        if _normalised_together(model, thin):
            continue
        dropped = np.setdiff1d(np.arange(group.size), keep)
        masked = copy.deepcopy(model)
        for item in group.maskable:
            module = masked.get_submodule(item.module)
            rows = item.idxs[np.isin(item.root_idxs, dropped)]
            module.weight.data[rows] = 0.0
            if module.bias is not None:
                module.bias.data[rows] = 0.0
        with torch.no_grad():
            torch.testing.assert_close(thin(x), masked(x), rtol=1e-4, atol=1e-5, msg=group.root)
        checked += 1
    assert checked >= 3, "too few groups compared for the test to mean anything"


@pytest.mark.parametrize("family", ["swin", "maxvit"])
def test_window_attention_models_prune_their_mlps_and_name_what_they_hold(family):
    """Channels-last window partitions map channels to themselves; a reshape that splits the channel axis
    (heads of q, k, v; the shifted windows' mask by head) holds the groups through it, and so does a
    residual stream whose trial prune breaks the forward pass (torchvision's attention takes its q, k, v
    weight as a tensor, whose input side the dependency graph does not follow)."""
    torch.manual_seed(0)
    model = SMALL[family]().eval()
    x = torch.randn(2, 3, 64, 64)
    graph, record, out = prune_to_half_and_export(model, x)
    assert record.met and out.shape == (2, 10)
    reasons = ("channel axis", "breaks the forward pass")  # found by the mapping, or by the trial prune of each run
    assert graph.held and all(any(r in why for r in reasons) for why in graph.held.values()), graph.held
    hidden = [g for g in graph.groups if not g.held and any(i.module.endswith(MLP_IN[family]) for i in g.producers)]
    assert len(hidden) >= 2, [g.root for g in graph.groups]  # the MLP hidden widths prune


@pytest.mark.parametrize("family", ["swin", "swin_v2", "maxvit"])
def test_torchvision_attention_runs_as_the_same_function_with_its_heads_pruned(family):
    """Swin's window attention (V1, V2) and MaxViT's relative-position attention, converted: the same
    outputs, every attention's heads a group of its own, pruned with their bias-table columns (or
    bias-MLP outputs and logit scales), through ONNX Runtime."""
    torch.manual_seed(0)
    model = SMALL[family]().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    converted = convert_attention(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    graph = analyse(model, x[:1])
    heads = [g for g in graph.groups if isinstance(graph.module(g.root), PrunableHeads)]
    assert len(heads) == len(converted) == 4 and not any(g.held for g in heads)
    # half of every attention's heads out at once (each group's kept channels are checked against the
    # masked original in test_every_group_pruned_keeps_the_channels_it_says), through ONNX Runtime
    thin = pruned_copy(model, x[:1], {g.root: np.arange(g.size // 2) for g in heads}).eval()
    assert [thin.get_submodule(g.root).num_heads for g in heads] == [g.size // 2 for g in heads]
    with torch.no_grad():
        out = thin(x)
    session = ort.InferenceSession(export_onnx(thin, x), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, out.numpy(), rtol=1e-3, atol=1e-4)
    # and the whole pruner on the converted model meets its budget
    _, record, out = prune_to_half_and_export(model, x)
    assert record.met and out.shape == (2, 10)


@pytest.mark.slow
def test_shufflenet_v2_x1_0_at_224_goes_through_with_what_it_holds_named():
    torch.set_num_threads(1)
    model = models().shufflenet_v2_x1_0().eval()
    graph, record, out = prune_to_half_and_export(model, torch.randn(1, 3, 224, 224))
    assert record.met and out.shape == (1, 1000) and graph.held
