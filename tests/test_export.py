"""ONNX export leaves the caller's model exactly as it was."""

from __future__ import annotations

import onnx
import torch

from pruning_client.export import export_onnx
from pruning_client.models import resnet20


def test_fp16_export_leaves_the_live_model_bit_identical():
    torch.manual_seed(0)
    model = resnet20(10).train()
    for m in model.modules():  # weights whose fp16 round trip is lossy, as trained weights are
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data += 1e-4 * torch.randn_like(m.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = export_onnx(model, torch.randn(1, 3, 32, 32), "fp16")
    after = model.state_dict()
    assert all(before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]) for k in before)
    assert model.training
    graph = onnx.load_model_from_string(data).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
