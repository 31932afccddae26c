"""Model construction from a registry name or ``module:factory``, and weight loading."""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

from pruning_client.models import MODELS


class ModelError(ValueError):
    """A model name, factory or weights file that cannot be used."""


def build_model(spec: str, num_classes: int) -> nn.Module:
    """``resnet18`` (see MODELS) or ``package.module:factory``; the factory gets num_classes if it takes it.

    The current directory is importable, as for ``python -m``: ``mymodels:tiny`` finds ``./mymodels.py``.
    """
    if spec in MODELS:
        return MODELS[spec](num_classes=num_classes)
    if ":" not in spec:
        raise ModelError(f"unknown model {spec!r}: use one of {', '.join(sorted(MODELS))} or module:factory")
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ModelError(f"cannot load {spec!r}: {e}") from None
    if not callable(factory):
        raise ModelError(f"{spec} is a {type(factory).__name__}, not callable: give a function that builds the model")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    try:
        model = factory(num_classes=num_classes) if "num_classes" in params else factory()
    except TypeError as e:
        raise ModelError(f"{spec} cannot be called as a model factory (no arguments, or num_classes=): {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    if not any(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules()):
        raise ModelError(f"{spec} built a {type(model).__name__} with no conv or linear layer: nothing to prune")
    return model


def _load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None


def load_model(path: Path) -> nn.Module:
    """A whole pickled model, architecture included (the ``model.pt`` that ``halp prune`` writes)."""
    obj = _load(path)
    if not isinstance(obj, nn.Module):
        raise ModelError(f"{path} holds no model (a state_dict has no architecture): use halp prune's model.pt")
    return obj


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """A state_dict, or a whole pickled model (as ``halp prune`` saves), from ``path``."""
    obj = _load(path)
    if isinstance(obj, nn.Module):
        return obj
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds neither a state_dict nor a model")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"weights {path} do not fit the model: {str(e).splitlines()[0]}") from None
    return model
