"""ONNX export of (pruned) models, the format every profiler service measures."""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn

from pruning_client.graph import ExampleInputs, as_inputs


def export_onnx(model: nn.Module, example_inputs: ExampleInputs, dtype: str = "fp32") -> bytes:
    """Serialized ONNX of ``model`` in eval mode at the example's shapes (batch included).

    Uses the TorchScript exporter: for plain CNNs it is exact and exports in
    well under a second, where the dynamo exporter takes several seconds and
    an extra dependency; the dtype is baked in, as strongly typed engines need.
    """
    inputs = as_inputs(model, example_inputs)
    cast = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype)
    if cast is None:
        raise ValueError(f"cannot export {dtype} models directly (int8 needs a quantisation toolchain)")
    was_training = model.training
    model.eval()
    try:
        buffer = io.BytesIO()
        # A cast copy: casting the caller's model there and back would round its weights to the dtype.
        converted = copy.deepcopy(model).to(cast) if cast != torch.float32 else model
        # Not under no_grad: without autograd, nn.MultiheadAttention takes its fused fast path, whose
        # aten::_native_multi_head_attention has no ONNX export; the exporter traces without grads anyway.
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                converted,
                tuple(x.to(cast) for x in inputs),
                buffer,
                dynamo=False,
                input_names=[f"input{i}" if i else "input" for i in range(len(inputs))],
                opset_version=17,
            )
        return buffer.getvalue()
    finally:
        model.train(was_training)
