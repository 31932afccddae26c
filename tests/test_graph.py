"""Graph analysis: groups of every reference model and of odd topologies prune to valid, exportable nets."""

from __future__ import annotations

import gc
import time

import numpy as np
import onnx
import pytest
import torch
import torch_pruning as tp
from torch import nn

from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.layers import GraphError
from pruning_client.models import MODELS
from pruning_client.thinning import prune_groups, pruned_copy


class Concat(nn.Module):
    """Two branches concatenated, then a conv over the concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(20, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        y = self.mix(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 4).flatten(1))


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        return self.head(self.pw(self.dw(self.stem(x))).mean((2, 3)))


class TwoConsumers(nn.Module):
    """One branch feeds two convs whose outputs are added (no BN on one side)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.ReLU())
        self.left = nn.Conv2d(10, 6, 3, padding=1)
        self.right = nn.Conv2d(10, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        t = self.trunk(x)
        return self.fc((self.left(t) + self.right(t)).relu().mean((2, 3)))


class SharedLayer(nn.Module):
    """The same conv called twice: its latency counts twice, its channels are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.shared(self.stem(x)).relu()
        y = self.shared(y).relu()
        return self.fc(y.mean((2, 3)))


class GroupedBottleneck(nn.Module):
    """ResNeXt-style: a grouped 3x3 between two 1x1s, with a residual add and a grouped conv feeding a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=4), nn.BatchNorm2d(24), nn.ReLU())
        self.grouped2 = nn.Sequential(nn.Conv2d(24, 12, 3, padding=1, groups=6), nn.BatchNorm2d(12), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(12, 16, 1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        t = self.stem(x)
        y = (t + self.expand(self.grouped2(self.grouped(self.reduce(t))))).relu()
        return self.fc(y.mean((2, 3)))


def module_channels(model: nn.Module, name: str) -> tuple[int, int]:
    m = model.get_submodule(name)
    return (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features)


def prune_randomly_and_check(model: nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    model.eval()
    graph = analyse(model, x)
    assert graph.groups, "nothing prunable found"
    rng = np.random.default_rng(seed)
    kept_positions = [rng.integers(1, g.positions + 1) for g in graph.groups]
    keep = np.array([k * g.chunks for g, k in zip(graph.groups, kept_positions, strict=True)])
    expected_cin, expected_cout = graph.channels(keep)
    output_widths = {name: module_channels(model, name)[1] for name in graph.fixed_layers}
    dropped = [
        rng.choice(g.positions, g.positions - k, replace=False)
        for g, k in zip(graph.groups, kept_positions, strict=True)
    ]
    prune_groups(graph, {g.id: g.channels_at(np.sort(d)) for g, d in zip(graph.groups, dropped, strict=True)})
    with torch.no_grad():
        out = model(x)
    for lc, cin, cout in zip(graph.layers, expected_cin, expected_cout, strict=True):
        assert module_channels(model, lc.module) == (cin, cout), lc.name
        lc.shape.check_point(int(cin), int(cout))  # a point the profiler service can measure
    for name, width in output_widths.items():  # outputs keep their width
        assert module_channels(model, name)[1] == width
    onnx.checker.check_model(onnx.load_model_from_string(export_onnx(model, x)))
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reference_models_prune_to_random_counts(name):
    torch.manual_seed(0)
    model = MODELS[name](num_classes=10)
    size = 224 if name == "vgg16_bn" else 64  # VGG's 7x7 pool needs >= 224 to export
    outputs = prune_randomly_and_check(model, torch.randn(1, 3, size, size))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert outputs[0].shape[0] == 1 and outputs[0].shape[-1] == 10  # class dimension untouched


@pytest.mark.parametrize("cls", [Concat, DepthwiseSeparable, TwoConsumers, SharedLayer, GroupedBottleneck])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_odd_topologies_prune_to_random_counts(cls, seed):
    torch.manual_seed(seed)
    prune_randomly_and_check(cls(), torch.randn(2, 3, 16, 16), seed)


def test_layer_shapes_and_coupling_are_recorded():
    graph = analyse(DepthwiseSeparable(), torch.randn(1, 3, 16, 16), batch=8, dtype="fp16")
    keys = {lc.name: lc.shape.key for lc in graph.layers}
    assert keys["dw.0"] == "conv2d-k3x3-s1x1-p1x1-d1x1-gdw-h8w8-b8-fp16"
    assert keys["stem.0"] == "conv2d-k3x3-s2x2-p1x1-d1x1-g1-h16w16-b8-fp16"
    assert keys["head"] == "linear-t1-b8-fp16"
    assert graph.fixed_layers == ["head"]
    # stem, dw and the pointwise input share one group: the depthwise conv passes channels through
    stem_group = np.flatnonzero(graph.f_out[[lc.name for lc in graph.layers].index("stem.0")])
    dw_row = [lc.name for lc in graph.layers].index("dw.0")
    assert graph.f_in[dw_row, stem_group] == 1 and graph.f_out[dw_row, stem_group] == 1

    shared = analyse(SharedLayer(), torch.randn(1, 3, 8, 8))
    assert [lc.name for lc in shared.layers] == ["stem.0", "shared", "shared#2", "fc"]


def test_grouped_convs_prune_every_conv_group_alike():
    torch.manual_seed(0)
    model = GroupedBottleneck().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = analyse(model, x)
    keys = {lc.name: lc.shape.key for lc in graph.layers}
    assert keys["grouped.0"] == "conv2d-k3x3-s1x1-p1x1-d1x1-g4-h8w8-b1-fp32"
    chunks = {g.root: g.chunks for g in graph.groups}
    # grouped.0's output (4 groups) is grouped2.0's input (6 groups): both splits must hold, lcm = 12
    assert chunks == {"expand.0": 1, "reduce.0": 4, "grouped.0": 12, "grouped2.0": 6}
    group = next(g for g in graph.groups if g.root == "grouped.0")
    dropped = group.channels_at(np.array([1]))
    assert dropped.tolist() == list(range(1, 24, 2))

    # pruning those channels must compute what the unpruned net computes with them zeroed
    hook = model.grouped[1].register_forward_hook(lambda m, i, out: out.index_fill(1, torch.as_tensor(dropped), 0.0))
    with torch.no_grad():
        expected = model(x)
    hook.remove()
    prune_groups(graph, {group.id: dropped})
    assert (model.grouped[0].out_channels, model.grouped2[0].in_channels, model.grouped2[0].groups) == (12, 12, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_uneven_keep_of_a_grouped_conv_is_refused():
    graph = analyse(GroupedBottleneck(), torch.randn(1, 3, 8, 8))
    keep = graph.sizes.copy()
    keep[next(g.id for g in graph.groups if g.root == "reduce.0")] = 22  # 24 channels in 4 chunks: not 22
    with pytest.raises(ValueError, match="4 equal chunks"):
        graph.first_channels(keep)


def test_user_ignored_layers_stay_fixed():
    model = TwoConsumers()
    graph = analyse(model, torch.randn(1, 3, 8, 8), ignored_layers=[model.trunk[0]])
    assert "trunk.0" in graph.fixed_layers
    assert all(g.root != "trunk.0" for g in graph.groups)


def test_string_paddings_become_explicit_and_an_even_same_is_named():
    model = nn.Sequential(nn.Conv2d(3, 8, 5, padding="same", dilation=2), nn.Conv2d(8, 8, 3, padding="valid"))
    graph = analyse(model, torch.randn(1, 3, 16, 16))
    assert [lc.shape.padding for lc in graph.layers] == [(4, 4), (0, 0)]
    even = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 4, padding="same"))
    with pytest.raises(GraphError, match=r"^1 \(Conv2d\): padding='same' with an even kernel"):
        analyse(even, torch.randn(1, 3, 16, 16))


def test_a_dependency_graph_crash_is_a_graph_error_that_names_the_way_out(monkeypatch):
    """Torch-Pruning crashed inside on torchvision's ShuffleNetV2 (ZeroDivisionError) and Swin
    (TypeError); the small versions in tests/architectures.py do not trigger it, so it is simulated."""

    def crash(*args, **kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", crash)
    with pytest.raises(GraphError, match="ZeroDivisionError.*--fixed MODULE"):
        analyse(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.randn(1, 3, 8, 8))


class Hoarder(nn.Module):
    """Slow, and keeps 256 MiB per forward pass: what a group search that explodes does to the analysis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.hoard = nn.Conv2d(3, 8, 3), []

    def forward(self, x):
        self.hoard.append(torch.ones(64 * 2**20))  # written, so resident
        time.sleep(0.6)  # the bounds are checked every 0.25 s
        return self.conv(x)


def test_an_analysis_past_its_time_bound_stops_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("HALP_ANALYSIS_TIMEOUT_S", "0.3")
    with pytest.raises(GraphError, match=r"stopped: it took over 0.3 s \(HALP_ANALYSIS_TIMEOUT_S\).*--fixed"):
        analyse(Hoarder(), torch.randn(1, 3, 8, 8))


def test_an_analysis_past_its_memory_bound_stops_with_a_clear_error(monkeypatch):
    gc.collect()  # what earlier tests left is freed now, not while the bound watches (CI once missed it)
    monkeypatch.setenv("HALP_ANALYSIS_MEMORY_MB", "64")
    with pytest.raises(GraphError, match=r"grew by over 64 MiB \(HALP_ANALYSIS_MEMORY_MB\)"):
        analyse(Hoarder(), torch.randn(1, 3, 8, 8))


class SlowSearch(nn.Module):
    """One root whose group search takes seconds (65,536 channels through 200 elementwise ops) among roots
    that take milliseconds: what a search that explodes looks like to its bound, at a size that ends."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.wide, self.back, self.fc = (
            nn.Conv2d(3, 8, 3),
            nn.Linear(8, 2**16),
            nn.Linear(2**16, 8),
            nn.Linear(8, 2),
        )

    def forward(self, x):
        t = self.conv(x).mean((2, 3))
        w = self.wide(t)
        for _ in range(200):
            w = torch.relu(w) * 0.5
        return self.fc(t + self.back(w))


def test_a_group_search_past_its_bound_holds_that_root_and_the_analysis_goes_on(monkeypatch):
    monkeypatch.setenv("HALP_ANALYSIS_SEARCH_TIMEOUT_S", "0.5")
    monkeypatch.setenv("HALP_ANALYSIS_SEARCH_MEMORY_MB", "100000")  # the time bound is the one under test
    model, x = SlowSearch(), torch.randn(1, 3, 8, 8)
    graph = analyse(model, x)
    assert graph.held == {"wide": "its group search took over 0.5 s (HALP_ANALYSIS_SEARCH_TIMEOUT_S)"}
    assert "wide" in graph.fixed_layers and [g.root for g in graph.groups] == ["back"]  # back: conv, fc, back
    # a thinned copy's analysis skips the held root instead of searching it again, and the rest prunes
    thin = pruned_copy(model, x, graph.first_channels(np.array([4])), ignored_layers=graph.fixed_layers)
    assert thin.conv.out_channels == 4 and thin.wide.out_features == 2**16 and thin(x).shape == (1, 2)
