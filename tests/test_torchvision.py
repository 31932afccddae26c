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

from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel
from pruning_client.pruner import HALPPruner
from pruning_client.saliency import magnitude_saliency
from pruning_client.thinning import pruned_copy
from tests.test_architectures import cost_tables
from tests.torchvision_models import models


def small_shufflenet():
    """torchvision.models.ShuffleNetV2 as shufflenet_v2_x1_0 builds it, narrower and shallower; a stage of
    three blocks is what makes the dependency graph divide by zero at the shuffle's ``view``."""
    return models().ShuffleNetV2([3, 2, 2], [24, 48, 96, 192, 256], num_classes=10)


def randomised_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Statistics and affine terms away from (0, 1): a channel mapped to the wrong place then shows."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def prune_to_half_and_export(model: torch.nn.Module, x: torch.Tensor):
    graph = analyse(model, x[:1])
    latency = LatencyModel(graph, cost_tables())
    pruner = HALPPruner(model, x[:1], latency, target_ratio=0.5, steps=2, interval=1, block_size=4, allow_minimum=True)
    for _ in range(2):
        record = pruner.prune_now(magnitude_saliency(graph))
    pruned = pruner.finalize().eval()
    with torch.no_grad():
        out = pruned(x)
    session = ort.InferenceSession(export_onnx(pruned, x), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, out.numpy(), rtol=1e-3, atol=1e-4)
    return graph, record, out


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


def test_every_shufflenet_group_pruned_keeps_the_channels_it_says():
    """Thinned == the original with the dropped channels' BN outputs zeroed: the shuffle's permutation
    maps kept channels to kept channels (a wrong mapping leaves the shapes right and the numbers wrong)."""
    model = randomised_batch_norms(small_shufflenet())
    x = torch.randn(1, 3, 64, 64)
    graph = analyse(model, x)
    for group in (g for g in graph.groups if not g.held):
        keep = group.channels_at(np.arange(group.positions // 2))
        dropped = np.setdiff1d(np.arange(group.size), keep)
        masked = copy.deepcopy(model)
        for item in group.bns:
            bn = masked.get_submodule(item.module)
            rows = item.idxs[np.isin(item.root_idxs, dropped)]
            bn.weight.data[rows], bn.bias.data[rows] = 0.0, 0.0
        thin = pruned_copy(model, x, {group.root: keep})
        with torch.no_grad():
            torch.testing.assert_close(thin(x), masked(x), rtol=1e-4, atol=1e-5, msg=group.root)


@pytest.mark.slow
def test_shufflenet_v2_x1_0_at_224_goes_through_with_what_it_holds_named():
    torch.set_num_threads(1)
    model = models().shufflenet_v2_x1_0().eval()
    graph, record, out = prune_to_half_and_export(model, torch.randn(1, 3, 224, 224))
    assert record.met and out.shape == (1, 1000) and graph.held
