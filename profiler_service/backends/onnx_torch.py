"""Whole ONNX models run with torch's own ops, so the torch backends time a model as they time a layer.

On ``torch-cuda`` the tables are CUDA-graph replays of torch layers (cuDNN, channels_last). ONNX
Runtime's CUDA provider is not part of a GPU host's PyTorch stack (``onnxruntime-gpu`` is hundreds
of MB), and its kernels and launch path differ from what the tables timed; a converter such as
``onnx2torch`` drags in torchvision. So the uploaded graph is run node by node with
``torch.nn.functional``: the same kernels as the tables, and on a GPU the whole model replays as one
CUDA graph. Shape arithmetic (``Shape``, ``Gather`` of sizes, ``Concat`` of them for a ``Reshape``)
depends only on the declared input shapes, so it is evaluated once at build time; what runs per
call is tensor kernels only. An operator outside ``OPS`` is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from profiler_service.backends.base import UnsupportedModel

Op = Callable[..., Any]


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ops(torch) -> dict[str, Op]:
    """ONNX op type -> ``fn(inputs, attrs) -> output(s)``, for what CNN exports contain."""
    F = torch.nn.functional

    def conv(x, w, b=None, *, a):
        pads = list(a.get("pads", [0] * 4))
        half = len(pads) // 2
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise UnsupportedModel("Conv with auto_pad is not supported; export with explicit pads")
        if pads[:half] != pads[half:]:  # asymmetric: pad first, (left, right) per dim, last dim first
            x = F.pad(x, [p for d in reversed(range(half)) for p in (pads[d], pads[d + half])])
            pads = [0] * len(pads)
        conv_fn = F.conv2d if w.dim() == 4 else F.conv1d
        return conv_fn(x, w, b, a.get("strides", 1), pads[:half], a.get("dilations", 1), a.get("group", 1))

    def gemm(x, w, c=None, *, a):
        x = x.t() if a.get("transA", 0) else x
        w = w.t() if a.get("transB", 0) else w
        y = a.get("alpha", 1.0) * (x @ w)
        return y if c is None else y + a.get("beta", 1.0) * c

    def pool(kind):
        def run(x, *, a):
            pads = list(a.get("pads", [0] * 4))
            if pads[:2] != pads[2:]:
                raise UnsupportedModel(f"{kind} with asymmetric pads is not supported")
            k, s, ceil = a["kernel_shape"], a.get("strides", 1), bool(a.get("ceil_mode", 0))
            if kind == "MaxPool":
                return F.max_pool2d(x, k, s, pads[:2], a.get("dilations", 1), ceil)
            return F.avg_pool2d(x, k, s, pads[:2], ceil, bool(a.get("count_include_pad", 0)))

        return run

    def clip(x, lo=None, hi=None, *, a):
        return torch.clamp(x, None if lo is None else float(lo), None if hi is None else float(hi))

    def batch_norm(x, scale, bias, mean, var, *, a):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))

    def reshape(x, shape, *, a):
        dims = [int(d) for d in shape.tolist()]
        if not a.get("allowzero", 0):
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    def axes_of(axes, a) -> list[int]:
        return [int(v) for v in (axes.tolist() if axes is not None else a.get("axes", []))]

    def unsqueeze(x, axes=None, *, a):
        for ax in sorted(axes_of(axes, a)):
            x = x.unsqueeze(ax)
        return x

    def squeeze(x, axes=None, *, a):
        dims = axes_of(axes, a)
        return x.squeeze() if not dims else x.squeeze(tuple(dims))

    def reduce_mean(x, axes=None, *, a):
        return x.mean(dim=axes_of(axes, a) or None, keepdim=bool(a.get("keepdims", 1)))

    def slice_(x, starts, ends, axes=None, steps=None, *, a):
        axes_l = axes.tolist() if axes is not None else list(range(len(starts)))
        steps_l = steps.tolist() if steps is not None else [1] * len(starts)
        index = [slice(None)] * x.dim()
        for s, e, ax, st in zip(starts.tolist(), ends.tolist(), axes_l, steps_l, strict=True):
            if st <= 0:
                raise UnsupportedModel("Slice with a non-positive step is not supported")
            n = x.shape[ax]
            index[ax] = slice(max(0, s + n if s < 0 else min(s, n)), max(0, e + n if e < 0 else min(e, n)), st)
        return x[tuple(index)]

    def layer_norm(x, scale, bias=None, *, a):
        axis = a.get("axis", -1) % x.dim()
        return F.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))

    def split(x, sizes=None, *, a):
        axis = a.get("axis", 0)
        parts = sizes.tolist() if sizes is not None else a.get("split")
        if parts is None:
            parts = x.shape[axis] // a["num_outputs"]
        return list(torch.split(x, parts, dim=axis))

    return {
        "Conv": conv,
        "Gemm": gemm,
        "MatMul": lambda x, y, *, a: x @ y,
        "Relu": lambda x, *, a: F.relu(x),
        "Sigmoid": lambda x, *, a: torch.sigmoid(x),
        "Tanh": lambda x, *, a: torch.tanh(x),
        "Erf": lambda x, *, a: torch.erf(x),
        "LeakyRelu": lambda x, *, a: F.leaky_relu(x, a.get("alpha", 0.01)),
        "HardSigmoid": lambda x, *, a: torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1),
        "HardSwish": lambda x, *, a: F.hardswish(x),
        "Clip": clip,
        "Add": lambda x, y, *, a: x + y,
        "Sub": lambda x, y, *, a: x - y,
        "Mul": lambda x, y, *, a: x * y,
        "Div": lambda x, y, *, a: x / y if x.is_floating_point() else torch.div(x, y, rounding_mode="trunc"),
        "Sqrt": lambda x, *, a: torch.sqrt(x),
        "Mod": lambda x, y, *, a: torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y),
        "Equal": lambda x, y, *, a: x == y,
        "Where": lambda c, x, y, *, a: torch.where(c, x, y),
        "Expand": lambda x, shape, *, a: x.expand(torch.broadcast_shapes(x.shape, tuple(shape.tolist()))),
        "Pow": lambda x, y, *, a: torch.pow(x, y),
        "MaxPool": pool("MaxPool"),
        "AveragePool": pool("AveragePool"),
        "GlobalAveragePool": lambda x, *, a: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "GlobalMaxPool": lambda x, *, a: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
        "BatchNormalization": batch_norm,
        "LayerNormalization": layer_norm,
        "Flatten": lambda x, *, a: x.flatten(a.get("axis", 1)) if a.get("axis", 1) else x.reshape(1, -1),
        "Reshape": reshape,
        "Transpose": lambda x, *, a: x.permute(*a.get("perm", list(reversed(range(x.dim()))))),
        "Concat": lambda *xs, a: torch.cat(xs, dim=a["axis"]),
        "Softmax": lambda x, *, a: torch.softmax(x, dim=a.get("axis", -1)),
        "Identity": lambda x, *, a: x,
        "Dropout": lambda x, *_, a: x,
        "Shape": lambda x, *, a: torch.tensor(x.shape[a.get("start", 0) : a.get("end")], dtype=torch.int64),
        "Gather": lambda x, i, *, a: torch.index_select(x, a.get("axis", 0), i.reshape(-1)).reshape(
            [*x.shape[: a.get("axis", 0)], *i.shape, *x.shape[a.get("axis", 0) + 1 :]]
        ),
        "Unsqueeze": unsqueeze,
        "Squeeze": squeeze,
        "ReduceMean": reduce_mean,
        "Slice": slice_,
        "Split": split,
        "Cast": lambda x, *, a: x.to(_TORCH_DTYPES[a["to"]](torch)),
    }


ON_DEVICE = {"Gather": 1, "Where": 0}  # integer/bool inputs the kernel reads on the device (by position)

_TORCH_DTYPES = {  # ONNX TensorProto element types
    1: lambda t: t.float32, 10: lambda t: t.float16, 16: lambda t: t.bfloat16,
    6: lambda t: t.int32, 7: lambda t: t.int64, 9: lambda t: t.bool,
}  # fmt: skip


def _from_numpy(torch, array: np.ndarray):
    return torch.from_numpy(np.array(array, copy=True))


class TorchGraph:
    """An ONNX graph compiled to a list of torch calls; ``run`` takes the inputs in the graph's order.

    Built by one probe pass on ``device`` with the declared shapes: nodes whose inputs are all known
    without the data (initializers, constants, ``Shape`` of a tensor of known shape) are evaluated
    there once, on the CPU; the others become the steps ``run`` replays. Float constants live on the
    device, integer ones (shapes, axes, indices) on the CPU, where ``Reshape`` reads them without a
    device synchronisation (which a CUDA-graph capture forbids).
    """

    def __init__(
        self, torch, onnx_bytes: bytes, shapes: dict[str, list[int]], device, channels_last: bool = False
    ) -> None:
        import onnx
        from onnx import numpy_helper

        self._torch, self._channels_last = torch, channels_last
        model = onnx.load_model_from_string(onnx_bytes)
        graph = model.graph
        ops = _ops(torch)
        known = {*ops, "Constant"}
        unknown = sorted({n.op_type for n in graph.node if n.op_type not in known or n.domain not in ("", "ai.onnx")})
        if unknown:
            raise UnsupportedModel(f"this backend runs whole models with torch ops; unsupported: {', '.join(unknown)}")
        static: dict[str, Any] = {i.name: _from_numpy(torch, numpy_helper.to_array(i)) for i in graph.initializer}
        self.input_specs = []
        for value in (i for i in graph.input if i.name not in static):
            dtype = _TORCH_DTYPES.get(value.type.tensor_type.elem_type)
            if dtype is None or value.name not in shapes:
                raise UnsupportedModel(f"input {value.name!r}: unsupported type or no shape given")
            self.input_specs.append((value.name, shapes[value.name], dtype(torch)))
        self._constants: dict[str, Any] = {}  # static values the steps read, placed for them

        def placed(name: str, on_device: bool = False):
            if name not in self._constants:
                value = static[name]
                if value.is_floating_point():
                    value = self._layout(value.to(device))
                self._constants[name] = value.to(device) if on_device else value
            return self._constants[name]

        self.steps: list[tuple[str, Op, list[str], list[str], dict]] = []  # (op type, fn, inputs, outputs, attrs)
        probe = {name: x for (name, _, _), x in zip(self.input_specs, self.make_inputs(device), strict=True)}
        with torch.inference_mode():
            for node in graph.node:
                attrs = _attrs(node)
                if node.op_type == "Constant":
                    static[node.output[0]] = _from_numpy(torch, numpy_helper.to_array(attrs["value"]))
                    continue
                fixed = node.op_type == "Shape" or all(not n or n in static for n in node.input)
                if fixed:
                    values = [static.get(n, probe.get(n)) if n else None for n in node.input]
                else:
                    device_at = ON_DEVICE.get(node.op_type, -1)
                    values = [
                        None if not n else placed(n, i == device_at) if n in static else probe[n]
                        for i, n in enumerate(node.input)
                    ]
                try:
                    result = ops[node.op_type](*values, a=attrs)
                except UnsupportedModel:
                    raise
                except Exception as e:  # noqa: BLE001 - a malformed or unusual node: say which
                    raise UnsupportedModel(f"{node.op_type} node {node.name!r}: {str(e).splitlines()[0][:200]}") from e
                outs = dict(zip(node.output, result if isinstance(result, list) else [result], strict=False))
                (static if fixed else probe).update(outs)
                if not fixed:
                    self.steps.append((node.op_type, ops[node.op_type], list(node.input), list(node.output), attrs))
        self.outputs = [o.name for o in graph.output]
        for name in self.outputs:  # an output computed at build time (a constant) still has to be there
            if name in static:
                placed(name)

    def make_inputs(self, device) -> list:
        """Random inputs of the declared shapes and dtypes, on ``device``."""
        torch = self._torch
        gen = torch.Generator().manual_seed(0)
        return [self._layout(torch.randn(dims, generator=gen).to(device, dtype)) for _, dims, dtype in self.input_specs]

    def _layout(self, x):
        """4-D float tensors (feature maps, conv weights) in channels_last when asked: cuDNN's fast layout."""
        if self._channels_last and x.dim() == 4 and x.is_floating_point():
            return x.contiguous(memory_format=self._torch.channels_last)
        return x

    def run(self, inputs: list) -> list:
        env = dict(self._constants)
        env.update({name: x for (name, _, _), x in zip(self.input_specs, inputs, strict=True)})
        for _, fn, ins, outs, attrs in self.steps:
            result = fn(*[env[n] if n else None for n in ins], a=attrs)
            env.update(zip(outs, result if isinstance(result, list) else [result], strict=False))
        return [env[n] for n in self.outputs]
