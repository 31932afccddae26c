"""torchvision's own model definitions, imported without torchvision's compiled ops.

``import torchvision`` loads its C++ operators (nms, roi_align), which are built against one torch and
fail to register against the CPU torch of this project's test environment ("operator torchvision::nms
does not exist"). The model definitions are pure Python: a bare package object standing for
``torchvision`` lets ``torchvision.models`` import from the installed files without running
``torchvision/__init__.py``. Test-only (``torchvision==0.28.0`` is in the ``dev`` extra), never used by the
library.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def models() -> types.ModuleType:
    """``torchvision.models``; the test skips with the reason where torchvision is not installed."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision.models"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchvision is not installed (pip install -e '.[dev]' installs torchvision==0.28.0)")
    if "torchvision" not in sys.modules:
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["torchvision"] = package
    return importlib.import_module("torchvision.models")
