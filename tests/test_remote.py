"""ProfilerClient and RemoteTarget against real services on loopback."""

from __future__ import annotations

import http.server
import json
import threading
import time

import httpx
import pytest

from pruning_client.cache import TableCache
from pruning_client.remote import FingerprintChanged, ProfilerClient, ProfilerError, RemoteTarget, host_lock
from tests.conftest import CONV, ServiceProcess, free_port

DEVICE = {"fingerprint": "f" * 16, "backend": "stub", "backend_version": "0", "accelerator": "none"}


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """A real HTTP server that fails the first ``failures`` requests with 503, then answers /device."""

    failures = 0
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append(self.path)
        if self.path != "/device":
            self._send(404, {"title": "Not found", "status": 404, "detail": "nothing here"})
        elif type(self).failures > 0:
            type(self).failures -= 1
            self._send(503, {"title": "Unavailable", "status": 503})
        else:
            self._send(200, DEVICE)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    FlakyHandler.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_5xx_answers_are_retried_with_backoff(flaky):
    FlakyHandler.failures = 2
    with ProfilerClient(f"http://127.0.0.1:{flaky.server_port}", retries=3, backoff=0.05) as client:
        start = time.perf_counter()
        assert client.device().fingerprint == DEVICE["fingerprint"]
        assert time.perf_counter() - start >= 0.05 + 0.1  # two back-offs, doubling
    assert FlakyHandler.seen == ["/device"] * 3


def test_4xx_answers_are_not_retried(flaky):
    with ProfilerClient(f"http://127.0.0.1:{flaky.server_port}", retries=3, backoff=0.05) as client:
        with pytest.raises(ProfilerError, match="404") as e:
            client.table(CONV)
    assert e.value.status == 404
    assert len(FlakyHandler.seen) == 1


def test_giving_up_after_retries_says_where(flaky):
    FlakyHandler.failures = 10
    with ProfilerClient(f"http://127.0.0.1:{flaky.server_port}", retries=2, backoff=0.01) as client:
        with pytest.raises(ProfilerError, match="503"):
            client.device()
    assert len(FlakyHandler.seen) == 3


def test_connection_refused_is_retried_until_the_service_is_up(tmp_path):
    service = ServiceProcess(db=tmp_path / "late.db")
    threading.Timer(0.5, service.start).start()
    try:
        with ProfilerClient(service.url, retries=8, backoff=0.5) as client:
            assert client.device().backend == "onnxruntime"
    finally:
        time.sleep(0.1)
        service.stop()


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_tables_are_cached_per_fingerprint_and_only_missing_points_measured(service, tmp_path):
    needed = {CONV: {(16, 8), (16, 16), (32, 8)}}
    with ProfilerClient(service.url) as client:
        first = RemoteTarget(client, TableCache(tmp_path / "cache"))
        got = first.fetch(needed)
        assert set(got[CONV]) == needed[CONV] and first.measured_points == 3
        assert list((tmp_path / "cache" / first.cache_key).glob("*.json"))
        assert first.cache_key.startswith(first.fingerprint + "-ref")  # a CPU service: its store's scale too

        again = RemoteTarget(client, TableCache(tmp_path / "cache"))
        assert again.fetch(needed) == got and again.cached_points == 3 and again.measured_points == 0

        fresh_cache = RemoteTarget(client, TableCache(tmp_path / "other"))
        more = {CONV: needed[CONV] | {(32, 16)}}
        fresh_cache.fetch(more)  # three stored on the service, one new
    assert metric(service.url, "halp_points_measured_total") == 4


def test_two_stores_of_one_fingerprint_never_share_cached_points(make_service, tmp_path):
    """A service restarted without its store measures a new reference time: its ms are on another scale."""
    needed = {CONV: {(16, 8)}}
    first_svc, second_svc = make_service("a.db"), make_service("b.db")
    with ProfilerClient(first_svc.url) as a, ProfilerClient(second_svc.url) as b:
        first, second = RemoteTarget(a, TableCache(tmp_path / "cache")), RemoteTarget(b, TableCache(tmp_path / "cache"))
        assert first.fingerprint == second.fingerprint and first.cache_key != second.cache_key
        first.fetch(needed)
        second.fetch(needed)
    assert second.measured_points == 1 and second.cached_points == 0


def test_a_changed_device_is_refused_by_name(tmp_path):
    port = free_port()
    first = ServiceProcess(db=tmp_path / "a.db", port=port).start()
    try:
        with ProfilerClient(first.url) as client:
            target = RemoteTarget(client, cache=None)
            target.fetch({CONV: {(8, 8)}})
            first.stop()
            # another device on the same address: the CPU backend with two threads has another fingerprint
            second = ServiceProcess(db=tmp_path / "b.db", port=port, threads=2).start()
            try:
                with pytest.raises(FingerprintChanged, match=f"target {first.url} changed device"):
                    target.fetch({CONV: {(8, 16)}})
            finally:
                second.stop()
    finally:
        first.stop()


def test_services_on_one_host_are_timed_one_at_a_time(service, tmp_path):
    """Two CPU services on one machine would each time the other's load: their measurements take turns."""
    assert host_lock("http://127.0.0.1:1") is host_lock("http://localhost:2") is host_lock("http://[::1]:3")
    assert host_lock("http://10.0.0.1:1") is not host_lock("http://127.0.0.1:1")
    with ProfilerClient(service.url) as client:
        target = RemoteTarget(client, TableCache(tmp_path / "cache"))
        done = threading.Event()
        worker = threading.Thread(target=lambda: (target.fetch({CONV: {(8, 24)}}), done.set()))
        with host_lock("http://localhost:9"):  # another target on this host is measuring
            worker.start()
            assert not done.wait(3.0)  # a single point takes well under a second when it may run
        assert done.wait(60.0)
        worker.join()
    assert target.measured_points == 1
