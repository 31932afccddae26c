"""The one-layer network as ONNX, shared by every ONNX-consuming backend.

The graph is written with ``onnx.helper`` rather than exported from torch: it
is one conv (or linear) + bias + ReLU, so building it directly takes
microseconds where an exporter takes seconds, and hundreds of points are
measured per table. The dtype lives in the graph itself (tensor types, and
Q/DQ nodes for int8), which is what a strongly typed TensorRT network needs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from profiler_service.shapes import LayerShape

_ONNX_TYPE = {
    "fp32": TensorProto.FLOAT,
    "fp16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16,
    "int8": TensorProto.FLOAT,  # int8 layers take float I/O around explicit Q/DQ
}
# Conv gained bfloat16 in opset 22; older opsets keep the widest TensorRT support.
_OPSET = {"fp32": 17, "fp16": 17, "int8": 17, "bf16": 22}
INPUT_NAME = "x"
OUTPUT_NAME = "y"


def layer_input_shape(shape: LayerShape, cin: int) -> list[int]:
    if shape.op == "linear":
        return [shape.batch, cin] if shape.tokens == 1 else [shape.batch, shape.tokens, cin]
    return [shape.batch, cin, shape.height, shape.width]


def _tensor(name: str, array: np.ndarray, dtype: str) -> TensorProto:
    if dtype == "bf16":
        # numpy has no bfloat16: round-to-nearest-even on the float32 bits.
        bits = array.astype(np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return helper.make_tensor(name, TensorProto.BFLOAT16, array.shape, rounded.tobytes(), raw=True)
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    return numpy_helper.from_array(array.astype(np_dtype), name)


def layer_onnx(shape: LayerShape, cin: int, cout: int, seed: int = 0) -> bytes:
    """Serialized ONNX of conv/linear + bias + ReLU for one table point."""
    shape.check_point(cin, cout)
    rng = np.random.default_rng(seed)
    dtype = shape.dtype
    elem = _ONNX_TYPE[dtype]
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    x_name = INPUT_NAME
    w_name = "w"

    if dtype == "int8":
        # Explicit quantisation: TensorRT and ORT fuse Q/DQ around the conv into an int8 kernel.
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
            numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", [INPUT_NAME, "x_scale", "zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "zero"], ["xdq"]),
        ]
        x_name = "xdq"

    if shape.op == "linear":
        weight = rng.standard_normal((cout, cin)).astype(np.float32) / np.sqrt(cin)
        if shape.tokens > 1:
            weight = weight.T.copy()  # MatMul takes (cin, cout); Gemm transposes itself
    else:
        per_group = 1 if shape.depthwise else cin // shape.groups
        weight = rng.standard_normal((cout, per_group, *shape.kernel)).astype(np.float32)
        weight /= np.sqrt(per_group * shape.kernel[0] * shape.kernel[1])
    bias = rng.standard_normal(cout).astype(np.float32) * 0.01

    if dtype == "int8":
        wq = np.clip(np.round(weight / 0.01), -127, 127).astype(np.int8)
        inits.append(numpy_helper.from_array(wq, "wq"))
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "w_scale", "zero"], [w_name]))
    else:
        inits.append(_tensor(w_name, weight, dtype))
    inits.append(_tensor("b", bias, "fp32" if dtype == "int8" else dtype))

    pre_relu = "pre"
    if shape.op == "linear" and shape.tokens == 1:
        nodes.append(helper.make_node("Gemm", [x_name, w_name, "b"], [pre_relu], transB=1))
    elif shape.op == "linear":
        nodes.append(helper.make_node("MatMul", [x_name, w_name], ["mm"]))
        nodes.append(helper.make_node("Add", ["mm", "b"], [pre_relu]))
    else:
        ph, pw = shape.padding
        nodes.append(
            helper.make_node(
                "Conv",
                [x_name, w_name, "b"],
                [pre_relu],
                kernel_shape=list(shape.kernel),
                strides=list(shape.stride),
                pads=[ph, pw, ph, pw],
                dilations=list(shape.dilation),
                group=shape.conv_groups(cin),
            )
        )
    if dtype == "int8":
        nodes += [
            helper.make_node("Relu", [pre_relu], ["act"]),
            helper.make_node("QuantizeLinear", ["act", "x_scale", "zero"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "x_scale", "zero"], [OUTPUT_NAME]),
        ]
    else:
        nodes.append(helper.make_node("Relu", [pre_relu], [OUTPUT_NAME]))

    graph = helper.make_graph(
        nodes,
        "halp_layer",
        [helper.make_tensor_value_info(INPUT_NAME, elem, layer_input_shape(shape, cin))],
        [helper.make_tensor_value_info(OUTPUT_NAME, elem, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET[dtype])], producer_name="halp")
    model.ir_version = 8 if _OPSET[dtype] < 21 else 10
    return model.SerializeToString()
