"""Masked channels during pruning with fine-tuning: forward hooks zero them until they are removed for real.

A mask per group (True = kept) says which channels survive; every module that
outputs those channels (the group's convs, linears and norms) has its outputs
multiplied by the mask, so the network trains as if already pruned while its
shapes stay unchanged.

Hooks rather than masked parameters, also under DistributedDataParallel: DDP runs
the wrapped module's forward, so the hooks on its submodules fire on every rank;
they change no parameter, so DDP's initial broadcast and gradient buckets see the
model they were built for; and a masked channel's weights get zero gradient from
its zeroed output, identically on every rank. Masking the weights instead would
need the mask re-applied after every optimizer step (momentum and weight decay
move them) and kept out of DDP's parameter checks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pruning_client.graph import ModelGraph


class MaskHooks:
    def __init__(self, graph: ModelGraph, masks: list[np.ndarray]) -> None:
        self.graph, self.masks = graph, masks  # the masks are the caller's, read at every apply()
        self._module_masks: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def apply(self) -> None:
        """Zero pruned channels at every output that carries them (conv/linear/BN of the group)."""
        masks: dict[str, torch.Tensor] = {}
        for group, mask in zip(self.graph.groups, self.masks, strict=True):
            dropped = np.flatnonzero(~mask)
            for item in group.maskable:
                module = self.graph.module(item.module)
                width = module.weight.shape[0] if getattr(module, "weight", None) is not None else module.num_features
                m = masks.setdefault(item.module, torch.ones(width))
                m[torch.as_tensor(item.idxs[np.isin(item.root_idxs, dropped)])] = 0.0
        self._module_masks = masks
        if not self._handles:
            for name in masks:
                self._handles.append(self.graph.module(name).register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            mask = self._module_masks[name].to(output.device, output.dtype)
            shape = [1] * output.dim()
            shape[-1 if isinstance(module, nn.Linear) else 1] = -1
            return output * mask.view(shape)

        return hook

    def remove(self) -> None:
        """Detach the hooks from the model (the masks stay as they are)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
