"""Tiny ONNX models that ask a profiler service for far more than their size suggests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from profiler_service.backends.onnx_layer import layer_onnx
from profiler_service.shapes import parse_shape

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8).SerializeToString()


def conv_3x8x8() -> bytes:
    """A well-behaved conv with a static 1x3x8x8 input."""
    return layer_onnx(parse_shape("conv2d-k3x3-s1x1-p1x1-d1x1-g1-h8w8-b1-fp32"), 3, 8)


def dynamic_relu() -> bytes:
    """Every dimension but the channels is dynamic: the caller decides how big the input is."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])
    return _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])


def constant_of_shape(elements: tuple[int, ...]) -> bytes:
    """A constant shape makes ConstantOfShape allocate ``prod(elements)`` floats (64 GiB for 16 x 2^30)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(len(elements))])
    shape = numpy_helper.from_array(np.array(elements, dtype=np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"]), helper.make_node("Add", ["big", "x"], ["y"])]
    return _model(nodes, [x], [y], [shape])


def expand(elements: int) -> bytes:
    """Expand a one-element input to ``elements`` floats (4 GiB for 2^30)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    shape = numpy_helper.from_array(np.array([elements], dtype=np.int64), "shape")
    return _model([helper.make_node("Expand", ["x", "shape"], ["y"])], [x], [y], [shape])


def data_dependent_alloc(elements: float) -> bytes:
    """The allocation size comes from the input's value, so no static check can see it coming.

    The service fills inputs with values in [0, 1); ``x + elements`` cast to int64 is the size.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    offset = numpy_helper.from_array(np.array([elements], dtype=np.float32), "offset")
    nodes = [
        helper.make_node("Add", ["x", "offset"], ["size_f"]),
        helper.make_node("Cast", ["size_f"], ["size"], to=TensorProto.INT64),
        helper.make_node("ConstantOfShape", ["size"], ["big"]),
        helper.make_node("Add", ["big", "x"], ["y"]),
    ]
    return _model(nodes, [x], [y], [offset])


def endless_loop(trips: int = 10**12) -> bytes:
    """An ONNX Loop of ``trips`` iterations adding one each time: runs for days."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1]),
        ],
        [numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")],
    )
    inits = [
        numpy_helper.from_array(np.array(trips, dtype=np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    loop = helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)
    return _model([loop], [x], [y], inits)


def check(data: bytes) -> bytes:
    onnx.checker.check_model(onnx.load_model_from_string(data))
    return data
