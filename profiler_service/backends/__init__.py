"""Measurement backends behind one interface; ``create_backend`` picks one by name."""

from __future__ import annotations

from pathlib import Path

from profiler_service.backends.base import Backend, BackendUnavailable, Runner, UnsupportedModel

BACKEND_NAMES = ("tensorrt", "torch-cuda", "onnxruntime", "torch-cpu")  # auto tries them in this order


def create_backend(
    name: str,
    threads: int | None = None,
    cache_dir: Path = Path("."),
    device_index: int = 0,
    reference: bool | None = None,
) -> Backend:
    """Build the named backend, or with ``auto`` the first that works here; GPU backends use ``device_index``.

    ``reference``: time relative to a reference layer (drift-compensated); default: on CPU backends only.
    """
    if name == "auto":
        reasons = []
        for candidate in BACKEND_NAMES:
            try:
                return create_backend(candidate, threads, cache_dir, device_index, reference)
            except BackendUnavailable as e:
                reasons.append(f"{candidate}: {e}")
        raise BackendUnavailable("no backend works here: " + "; ".join(reasons))
    backend = _create(name, threads, cache_dir, device_index)
    backend.reference = not backend.gpu if reference is None else reference
    return backend


def _create(name: str, threads: int | None, cache_dir: Path, device_index: int) -> Backend:
    if name == "onnxruntime":
        from profiler_service.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(threads=threads)
    if name == "torch-cpu":
        from profiler_service.backends.torch_backend import TorchCpuBackend

        return TorchCpuBackend(threads=threads)
    if name == "torch-cuda":
        from profiler_service.backends.torch_backend import TorchCudaBackend

        return TorchCudaBackend(device_index)
    if name == "tensorrt":
        from profiler_service.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(cache_dir=cache_dir, device_index=device_index)
    raise BackendUnavailable(f"unknown backend {name!r}; choose auto or one of {', '.join(BACKEND_NAMES)}")


__all__ = ["BACKEND_NAMES", "Backend", "BackendUnavailable", "Runner", "UnsupportedModel", "create_backend"]
