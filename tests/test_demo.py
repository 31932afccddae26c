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
