"""The demo's private service: up on a free loopback port, gone again however the block ends."""

from __future__ import annotations

import httpx
import pytest

from pruning_client.demo import local_service


def test_local_service_is_stopped_on_failure(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), local_service(tmp_path) as url:
        assert httpx.get(f"{url}/device").json()["backend"] == "onnxruntime"
        raise RuntimeError("boom")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)
    assert (tmp_path / "profiler.db").exists()


def test_two_demos_at_once_get_two_stores(tmp_path, monkeypatch):
    from pruning_client.demo import demo_store

    monkeypatch.setenv("HALP_CACHE_DIR", str(tmp_path))
    with demo_store() as first, demo_store() as second:
        assert first == tmp_path / "demo"
        assert second != first and second.is_dir()
    with demo_store() as again:  # the shared store is free again
        assert again == first
