"""Graph analysis: any ``nn.Module`` -> coupled channel groups + the conv/linear layers they size.

Coupling comes from Torch-Pruning's dependency graph (residual adds,
concatenations, depthwise and grouped convs, batch norms, flatten into a
classifier).
On top of it this module records, for every conv/linear *call* seen in a
forward pass, its layer-shape key and how its channel counts depend on the
groups: ``cin = cin0 - sum_g F_in[l, g] * (n_g - k_g)`` (and likewise cout),
where ``k_g`` is the number of channels group g keeps.
"""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from profiler_service.shapes import Dtype, LayerShape
from pruning_client.analysis_limits import AnalysisLimits, AnalysisTooLarge, Guard, SearchTooLarge, bounded
from pruning_client.heads import PrunableHeads
from pruning_client.index_mapping import dependency_graph, tolerant_index_mapping, unmapped
from pruning_client.layers import GraphError, conv_groups, is_depthwise, layer_shape, trace_calls

ExampleInputs = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass
class GroupItem:
    """One coupled module inside a group: its own channel indices and the group channel each maps to."""

    module: str
    idxs: np.ndarray
    root_idxs: np.ndarray


@dataclass
class ChannelGroup:
    id: int
    root: str  # module whose output channels define the group
    size: int  # channels when analysed
    bns: list[GroupItem] = field(default_factory=list)  # batch norms on the group's channels (saliency)
    producers: list[GroupItem] = field(default_factory=list)  # conv/linear whose outputs are the group
    maskable: list[GroupItem] = field(default_factory=list)  # conv/linear/BN outputs to zero when pruned
    # A grouped conv on either side splits the channels into equal chunks, one per conv group; every
    # chunk must keep the same positions, or the conv's groups would differ in width.
    chunks: int = 1
    held: str | None = None  # why the group keeps all its channels, when it cannot be pruned
    # Layer channels per group channel: 1, or head_dim for the heads of a ``PrunableHeads`` (root), whose
    # group channels are its heads and whose items map each head's channels to it.
    unit: int = 1

    @property
    def positions(self) -> int:
        """Channels per chunk: the unit a pruning decision keeps or drops (in every chunk at once)."""
        return self.size // self.chunks

    def channels_at(self, positions: np.ndarray) -> np.ndarray:
        """The group channels of the given within-chunk positions, in every chunk (sorted if they are)."""
        p = np.asarray(positions, dtype=np.int64)
        return (np.arange(self.chunks)[:, None] * self.positions + p[None, :]).ravel()


@dataclass
class LayerCall:
    """One execution of a conv/linear module (a module called twice gives two)."""

    name: str
    module: str
    shape: LayerShape
    cin: int
    cout: int


@dataclass
class ModelGraph:
    model: nn.Module
    dg: tp.DependencyGraph
    groups: list[ChannelGroup]
    layers: list[LayerCall]
    f_in: np.ndarray  # (L, G): channels of layer l's input per channel of group g
    f_out: np.ndarray  # (L, G)
    fixed_layers: list[str]  # output layers (and user-ignored ones): channels never pruned
    # roots whose group search failed or passed its bound -> why: their channels are kept (and they are
    # in ``fixed_layers``, so the analyses of pruned copies skip them rather than search them again)
    unsearched: dict[str, str] = field(default_factory=dict)
    checked: bool = False  # whether ``prunability.hold_unprunable`` has tried every group

    @property
    def unmodelled_weight_share(self) -> float:
        """Share of the weight matrices/kernels (parameters of 2+ dims) outside every traced conv/linear call.

        Those run as something the tables do not time (attention's in-projection used as a bare
        parameter, an auxiliary head that only runs in training); the report says how much.
        """
        called = {lc.module for lc in self.layers}
        total = unmodelled = 0
        for name, p in self.model.named_parameters():
            if p.dim() >= 2:
                total += p.numel()
                unmodelled += 0 if name.rpartition(".")[0] in called else p.numel()
        return unmodelled / total if total else 0.0

    @property
    def held(self) -> dict[str, str]:
        """Root -> reason of every group that keeps all its channels (unsearched roots included)."""
        return {g.root: g.held for g in self.groups if g.held} | self.unsearched

    @property
    def sizes(self) -> np.ndarray:
        return np.array([g.size for g in self.groups], dtype=np.int64)

    def channels(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cin, cout) of every layer call when group g keeps ``keep[g]`` channels."""
        removed = self.sizes - np.asarray(keep, dtype=np.int64)
        cin = np.array([lc.cin for lc in self.layers]) - np.rint(self.f_in @ removed).astype(np.int64)
        cout = np.array([lc.cout for lc in self.layers]) - np.rint(self.f_out @ removed).astype(np.int64)
        return cin, cout

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def first_channels(self, keep: np.ndarray) -> dict[str, np.ndarray]:
        """Root -> kept channels when group g keeps ``keep[g]``: the first positions of each chunk.

        The thinned copies that calibrate and check the latency model use this:
        latency depends on counts, not on which channels survive.
        """
        out = {}
        for group, k in zip(self.groups, np.asarray(keep, dtype=np.int64), strict=True):
            if not 0 < k <= group.size or k % group.chunks:
                raise ValueError(f"group {group.root} cannot keep {k} of {group.size} in {group.chunks} equal chunks")
            out[group.root] = group.channels_at(np.arange(k // group.chunks))
        return out


def as_inputs(model: nn.Module, example_inputs: ExampleInputs) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple on the model's device (examples are made on the CPU; models train
    on an accelerator)."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return tuple(x.to(device) for x in inputs)


def analyse(
    model: nn.Module,
    example_inputs: ExampleInputs,
    batch: int | None = None,
    dtype: Dtype = "fp32",
    ignored_layers: Sequence[nn.Module] = (),
) -> ModelGraph:
    """Groups and layer calls of ``model``; ``batch``/``dtype`` are the deployment's, for the keys."""
    was_training = model.training
    model.eval()  # tracing must not update BN statistics, and must work at batch 1
    try:
        return _analyse(model, as_inputs(model, example_inputs), batch, dtype, ignored_layers)
    finally:
        model.train(was_training)


def _analyse(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], batch: int | None, dtype: Dtype, ignored_layers
) -> ModelGraph:
    batch = batch or int(inputs[0].shape[0])
    calls, output_layers = trace_calls(model, inputs)
    if not calls:
        raise GraphError("the model runs no nn.Conv2d or nn.Linear: nothing to prune")
    names = {m: n for n, m in model.named_modules()}
    # a held container (``--fixed blocks.3``) holds every conv/linear in it
    fixed = set(output_layers) | {names[m] for held in ignored_layers for m in held.modules() if _is_layer(m)}
    heads = {n: m for n, m in model.named_modules() if isinstance(m, PrunableHeads)}
    # heads are grouped here, not by the dependency graph: their q, k, v outputs are no group's root, nor
    # is a layer of a position bias (Swin V2's MLP: its output is a slot per head)
    not_roots = fixed | {
        f"{n}.{sub}" for n, attention in heads.items() for sub, m in attention.named_modules()
        if _is_layer(m) and sub != "out_proj"
    }  # fmt: skip
    limits, guard = AnalysisLimits.from_env(), Guard()  # a bad setting is its own error, not the model's
    try:
        with warnings.catch_warnings(), bounded(limits, guard), tolerant_index_mapping(unchanged=True) as unmappable:
            warnings.simplefilter("ignore")
            dg = dependency_graph(model, inputs)
            tp_groups, unsearched = _search_groups(dg, {model.get_submodule(n) for n in not_roots}, guard)
    except (AnalysisTooLarge, Exception) as e:  # noqa: BLE001 - it fails deep inside on what it cannot map
        if guard.tripped:
            raise GraphError(
                f"the dependency-graph analysis was stopped: {guard.tripped}; window attention can make its group "
                "search explode: hold those blocks out of pruning with --fixed MODULE[,MODULE]"
            ) from None
        raise GraphError(
            f"the dependency graph cannot follow this model's channels ({type(e).__name__}: {str(e)[:200]}); "
            "hold the part that fails out of pruning with --fixed MODULE"
        ) from None
    held_roots = {names[m]: why for m, why in unsearched.items()}

    groups: list[ChannelGroup] = []
    in_terms: dict[str, dict[int, float]] = {}
    out_terms: dict[str, dict[int, float]] = {}
    for tp_group in tp_groups:
        root_module = tp_group[0].dep.target.module
        size = len(tp_group[0].idxs)
        group = ChannelGroup(id=len(groups), root=names[root_module], size=size)
        for item in tp_group.items:
            module = item.dep.target.module
            if module not in names:  # tracing ops (add, concat, reshape)
                continue
            entry = GroupItem(
                names[module],
                np.array([int(i) for i in item.idxs], dtype=np.int64),
                np.array(item.root_idxs, dtype=np.int64),
            )
            is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
            factor = len(entry.idxs) / size
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                group.bns.append(entry)
                group.maskable.append(entry)
            elif isinstance(module, nn.Conv2d | nn.Linear):
                terms = out_terms if is_out else in_terms
                terms.setdefault(entry.module, {})[group.id] = factor
                if is_out:
                    group.producers.append(entry)
                    group.maskable.append(entry)
                    if is_depthwise(module):  # one pruner handles both sides of a depthwise conv
                        in_terms.setdefault(entry.module, {})[group.id] = factor
                if (split := conv_groups(module)) > 1:
                    _check_grouped_side(group, entry, module, is_out)
                    group.chunks = math.lcm(group.chunks, split)
        if size % group.chunks:
            raise GraphError(f"group {group.root}: {size} channels do not split into {group.chunks} equal chunks")
        group.held = unmapped(tp_group.items, unmappable) or _incoherent(group, model)
        groups.append(group)
    for name, attention in heads.items():
        groups.append(_head_group(len(groups), name, attention, fixed, in_terms, out_terms))

    layers: list[LayerCall] = []
    f_in = np.zeros((len(calls), len(groups)))
    f_out = np.zeros((len(calls), len(groups)))
    seen: dict[str, int] = {}
    for row, (name, size_in) in enumerate(calls):
        module = model.get_submodule(name)
        seen[name] = seen.get(name, 0) + 1
        call_name = name if seen[name] == 1 else f"{name}#{seen[name]}"
        cin = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
        cout = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        try:
            shape = layer_shape(module, size_in, batch, dtype)
        except GraphError as e:
            raise GraphError(f"{name} ({type(module).__name__}): {e}") from None
        layers.append(LayerCall(call_name, name, shape, cin, cout))
        for gid, factor in in_terms.get(name, {}).items():
            f_in[row, gid] = factor
        for gid, factor in out_terms.get(name, {}).items():
            f_out[row, gid] = factor
    return ModelGraph(model, dg, groups, layers, f_in, f_out, sorted(fixed | held_roots.keys()), held_roots)


def _search_groups(
    dg: tp.DependencyGraph, not_roots: set[nn.Module], guard: Guard
) -> tuple[list[tp.Group], dict[nn.Module, str]]:
    """Torch-Pruning's ``get_all_groups``, one root at a time under the search bounds; and the roots that failed.

    A root whose search fails or passes its bound keeps its channels, as does any group that holds
    its outputs; the analysis goes on with the rest instead of stopping.
    """
    skip = not_roots | set(dg.IGNORED_LAYERS_IN_TRACING)
    visited: set[nn.Module] = set()
    groups, failed = [], {}
    for module in list(dg.module2node):
        if module in skip or module in visited or not isinstance(module, tp.ops.TORCH_CONV | tp.ops.TORCH_LINEAR):
            continue
        pruner = dg.get_pruner_of_module(module)
        if pruner is None or (width := pruner.get_out_channels(module)) is None:
            continue
        try:
            with guard.search():
                group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except (SearchTooLarge, Exception) as e:  # noqa: BLE001 - the root that fails is held, whatever it was
            if guard.tripped:  # the whole analysis's bound: stop
                raise
            failed[module] = guard.search_tripped or f"the dependency graph fails on it ({type(e).__name__}: {e})"[:240]
            gc.collect()  # what the search built is garbage now; free it before the next one is measured
            continue
        outputs = {dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)}
        visited |= outputs
        if not outputs & (skip | failed.keys()):
            groups.append(group)
    return groups, failed


def _is_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d | nn.Linear)


def _head_group(
    gid: int, name: str, attention: PrunableHeads, fixed: set[str], in_terms: dict, out_terms: dict
) -> ChannelGroup:
    """The heads of one attention: a group of ``num_heads`` channels, each ``head_dim`` rows of q, k and v
    and as many columns of the output projection."""
    group = ChannelGroup(id=gid, root=name, size=attention.num_heads, unit=attention.head_dim)
    channels = np.arange(attention.num_heads * attention.head_dim)
    for proj in ("q", "k", "v"):
        item = GroupItem(f"{name}.{proj}", channels, channels // attention.head_dim)
        group.producers.append(item)
        group.maskable.append(item)
        out_terms.setdefault(item.module, {})[gid] = attention.head_dim
    in_terms.setdefault(f"{name}.out_proj", {})[gid] = attention.head_dim
    if fixed & {f"{name}.{p}" for p in ("q", "k", "v", "out_proj")}:
        group.held = "held by --fixed"
    return group


def _incoherent(group: ChannelGroup, model: nn.Module) -> str | None:
    """Why the group's index mapping cannot be trusted, if it cannot: channels mapped out of range.

    Torch-Pruning follows channels through concatenations and reshapes by index arithmetic; through a
    channel split followed by a shuffle it maps some outside the group or the module (ShuffleNetV2).
    """
    for item in group.bns + group.producers:
        module = model.get_submodule(item.module)
        width = getattr(module, "out_channels", None) or getattr(module, "out_features", None) or module.num_features
        if len(item.root_idxs) and (item.root_idxs.max() >= group.size or item.idxs.max() >= width):
            return f"the dependency graph maps its channels out of range at {item.module} (a channel split or shuffle)"
    return None


def _check_grouped_side(group: ChannelGroup, entry: GroupItem, module: nn.Conv2d, is_out: bool) -> None:
    """A grouped conv's side must be exactly the group's channels in the group's own order.

    Chunks are defined in the group's numbering; through a concatenation or a
    reordering they would not line up with the conv's groups.
    """
    width = module.out_channels if is_out else module.in_channels
    if len(entry.idxs) != group.size or width != group.size or not np.array_equal(entry.idxs, entry.root_idxs):
        raise GraphError(
            f"grouped conv {entry.module} (groups={module.groups}) takes part of a concatenation or a reordered "
            "group, which is not supported"
        )
