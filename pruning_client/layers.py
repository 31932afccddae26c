"""What graph analysis sees of a forward pass: every conv/linear call, its layer shape, the output layers.

The shape key (SPEC 3) of a call is everything but its channel counts; layers whose output reaches a
model output are the network's answer (classes, boxes) and keep their channels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from profiler_service.shapes import Dtype, LayerShape


class GraphError(ValueError):
    """A model that cannot be analysed (no conv/linear, unsupported layer)."""


def trace_calls(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[list[tuple[str, tuple]], set[str]]:
    """Input sizes of every conv/linear call, and the layers whose output reaches a model output.

    Output layers are found on the autograd graph: walk back from each output
    through parameter-free ops until a conv/linear is met. Their output
    channels are the network's answer (classes, boxes) and must stay fixed.
    """
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[str, tuple]] = []
    grad_fn_owner: dict[object, str] = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls.append((names[module], tuple(args[0].shape)))
        if output.grad_fn is not None:
            grad_fn_owner[output.grad_fn] = names[module]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.enable_grad():
            outputs = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    flat = [t for t in flatten(outputs) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    output_layers: set[str] = set()
    stack, seen = [t.grad_fn for t in flat], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in grad_fn_owner:
            output_layers.add(grad_fn_owner[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return calls, output_layers


def flatten(obj: object) -> Iterable[object]:
    if isinstance(obj, list | tuple):
        for o in obj:
            yield from flatten(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from flatten(o)
    else:
        yield obj


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def conv_groups(m: nn.Module) -> int:
    """Conv groups of a grouped (not depthwise) conv, else 1."""
    return m.groups if isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise(m) else 1


def layer_shape(module: nn.Module, input_size: tuple, batch: int, dtype: Dtype) -> LayerShape:
    if isinstance(module, nn.Linear):
        tokens = int(np.prod(input_size[1:-1])) if len(input_size) > 2 else 1
        return LayerShape(op="linear", batch=batch, dtype=dtype, tokens=tokens)
    assert isinstance(module, nn.Conv2d)
    padding = _explicit_padding(module)
    if module.groups > 1 and module.groups == module.out_channels != module.in_channels:
        # Torch-Pruning takes groups == out_channels for depthwise and would cut its input like its output
        raise GraphError(
            f"conv with groups={module.groups} ({module.in_channels}->{module.out_channels}) is not supported: "
            "only depthwise convs may have groups == out_channels"
        )
    return LayerShape(
        op="conv2d",
        batch=batch,
        dtype=dtype,
        kernel=tuple(module.kernel_size),  # type: ignore[arg-type]
        stride=tuple(module.stride),  # type: ignore[arg-type]
        padding=padding,
        dilation=tuple(module.dilation),  # type: ignore[arg-type]
        groups=0 if is_depthwise(module) else module.groups,
        height=int(input_size[2]),
        width=int(input_size[3]),
    )


def _explicit_padding(module: nn.Conv2d) -> tuple[int, int]:
    """The symmetric padding a conv runs with: ``"valid"`` is none, ``"same"`` half the dilated kernel."""
    if module.padding == "valid":
        return (0, 0)
    if module.padding != "same":
        return tuple(module.padding)  # type: ignore[return-value]
    reach = [d * (k - 1) for k, d in zip(module.kernel_size, module.dilation, strict=True)]
    if any(r % 2 for r in reach):
        raise GraphError("padding='same' with an even kernel pads one side more, which a layer shape cannot say")
    return (reach[0] // 2, reach[1] // 2)
