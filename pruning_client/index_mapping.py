"""Torch-Pruning's index-mapping pass, made to hold what it cannot map instead of stopping the analysis.

The dependency graph follows channels through concatenations, splits, reshapes and slices by index
arithmetic on inferred channel counts. On torchvision's ShuffleNetV2 (``view`` to five dimensions for the
channel shuffle) that arithmetic divides by zero, on Swin-S a concatenation's inferred widths include
None: one op it cannot map used to end the whole analysis. Here each op's mapping that fails is recorded
and skipped; every channel group that passes through such an op is then held (``unmapped``), so nothing
is pruned through a mapping that was never computed, and the rest of the model still prunes.

Reshapes are judged on the shapes they really had (recorded while the graph is traced), not on
inferred counts alone: one that keeps the channel axis (the first after the batch, or the last, as in
Swin's and MaxViT's ``(B, H, W, C)`` window partitions) maps channels to themselves; a flatten into a
classifier is left to Torch-Pruning; any other moves the channel axis and is unmappable. Read as a
flatten, each window partition multiplied a group's indices by the window's size, and a residual
stream crossing a few of them grew past a gigabyte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import wraps

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import index_mapping, shape_infer

# The per-op passes ``index_mapping.update_index_mapping`` dispatches to (by module global, so wrapping
# the globals is enough).
_PASSES = tuple(name for name in dir(index_mapping) if name.startswith("update_") and name != "update_index_mapping")


_SHAPES = "_halp_op_shapes"
# ATen's own matmul kernels on >2-D inputs: the views around them are not seen from Python
_MATMUL = re.compile(r"(Addmm|Mm|Bmm)Backward\d*$")
_RESHAPE = re.compile("view|reshape", re.IGNORECASE)


class UnmappableReshape(ValueError):
    pass


class _ShapesSeen(TorchFunctionMode):
    """Each reshape's input and output shapes, keyed by the output's ``grad_fn`` (a graph node's)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[object, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        grad_fn = getattr(out, "grad_fn", None)
        # only reshapes are looked up (Torch-Pruning's test for one); each entry keeps its grad_fn alive
        if grad_fn is not None and _RESHAPE.search(grad_fn.name()) and args and isinstance(args[0], torch.Tensor):
            self.shapes.setdefault(grad_fn, (tuple(args[0].shape), tuple(out.shape)))
        return out


def _reshape_by_shapes(update):
    """Torch-Pruning's reshape pass where the reshape is a flatten; identity where it keeps the channels."""

    def reshape(graph, node):
        seen = getattr(graph, _SHAPES, {}).get(node.grad_fn)
        if seen is None:
            if any(_MATMUL.match(n.grad_fn.name()) for n in node.outputs if n.grad_fn is not None):
                return None  # made inside a linear or matmul on a >2-D input: it folds the leading dimensions only
            return update(graph, node)
        channels = next(
            (c for n in node.inputs if (c := shape_infer.infer_out_channels_recursively(graph, n, [0]))), None
        )
        if channels is None:
            return update(graph, node)
        before, after = seen
        if (before[1:2] == after[1:2] == (channels,)) or (before[-1] == after[-1] == channels):
            return None  # the channel axis is untouched: indices map to themselves
        if len(after) == 2 and before[0] == after[0]:
            return update(graph, node)  # into a classifier
        raise UnmappableReshape(f"{before} -> {after} splits or merges the channel axis")

    return reshape


@contextmanager
def tolerant_index_mapping(unchanged: bool = False) -> Iterator[dict[object, str]]:
    """Within the block, an op whose mapping fails is recorded (node -> why) in the yielded dict.

    ``unchanged``: no channel is removed within the block (building the graph, searching its groups),
    so each graph is mapped once. Torch-Pruning maps the whole graph again before every group search;
    with its channel inference recursing through every op, that was 99 s of the 110 s Swin-T's
    trial prunes took.
    """
    failed: dict[object, str] = {}
    originals = {name: getattr(index_mapping, name) for name in (*_PASSES, "update_index_mapping")}
    mapped: set[int] = set()

    def once(update_all):
        @wraps(update_all)
        def wrapper(graph):
            if id(graph) not in mapped:
                mapped.add(id(graph))
                update_all(graph)

        return wrapper

    def tolerant(update):
        @wraps(update)
        def wrapper(graph, node):
            try:
                return update(graph, node)
            except Exception as e:  # noqa: BLE001 - any op it cannot map is held, whatever the error
                failed[node] = f"{type(e).__name__}: {e}"[:160]
                return None

        return wrapper

    for name in _PASSES:
        update = originals[name]
        if name == "update_reshape_index_mapping":
            update = _reshape_by_shapes(update)
        setattr(index_mapping, name, tolerant(update))
    if unchanged:
        index_mapping.update_index_mapping = once(originals["update_index_mapping"])
    try:
        yield failed
    finally:
        for name, update in originals.items():
            setattr(index_mapping, name, update)


def dependency_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph, with the shapes each op really had kept on it (for reshapes);
    build it inside ``tolerant_index_mapping``."""
    dg = tp.DependencyGraph()
    recorder = _ShapesSeen()
    setattr(dg, _SHAPES, recorder.shapes)  # filled by the trace below, read by its index mapping
    with recorder:
        return dg.build_dependency(model, example_inputs=inputs, verbose=False)


def unmapped(items: Iterable, failed: dict[object, str]) -> str | None:
    """Why a group cannot be trusted when one of its dependencies runs through an op left unmapped."""
    for item in items:
        for node in (item.dep.source, item.dep.target):
            if node in failed:
                return f"its channels pass through {node.name}, which the dependency graph cannot map ({failed[node]})"
    return None
