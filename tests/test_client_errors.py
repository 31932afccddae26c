"""The client against servers that break the protocol: one line naming the target, never a traceback."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from pruning_client.remote import ProfilerClient, ProfilerError
from tests.conftest import halp

SHAPE = "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h8w8-b1-fp32"
DEVICE = {"fingerprint": "f" * 16, "backend": "stub", "backend_version": "0", "accelerator": "none"}
JOB = {"id": "j1", "state": "queued", "done": 0, "total": 1}


class Canned(http.server.BaseHTTPRequestHandler):
    """Answers every path from ``answers``: (status, raw body) by path prefix."""

    answers: dict[str, tuple[int, bytes]] = {}

    def _answer(self) -> None:
        path = self.path.split("?")[0]
        status, body = next((a for p, a in self.answers.items() if path.startswith(p)), (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._answer()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[type[Canned]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    Canned.answers = {}
    Canned.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Canned
    server.shutdown()


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    ("answers", "words"),
    [
        ({"/lut/": (200, b"<html>not json")}, ["invalid JSON"]),
        ({"/lut/": (200, json.dumps({"rows": []}).encode())}, ["not a LutTable"]),
        (
            {"/lut/": (202, json.dumps(JOB).encode()), "/jobs/": (200, json.dumps({**JOB, "state": "odd"}).encode())},
            ["not a JobStatus", "state"],
        ),
    ],
    ids=["invalid-json", "wrong-schema", "unknown-job-state"],
)
def test_halp_lut_against_a_broken_server_is_one_line(canned, answers, words):
    canned.answers = answers
    result = halp("lut", SHAPE, "--target", canned.url, "--cin", "8", "--cout", "8")
    assert_one_line_error(result, canned.url, *words)


def test_a_target_that_never_answers_is_reported_in_seconds():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel completes the handshake) and never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        start = time.monotonic()
        result = halp("lut", SHAPE, "--target", url)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert_one_line_error(result, url, "ReadTimeout")
    assert elapsed < 30, f"took {elapsed:.0f} s"


def test_a_url_without_scheme_fails_at_once():
    start = time.monotonic()
    result = halp("lut", SHAPE, "--target", "127.0.0.1:8000")
    assert_one_line_error(result, "http://")
    assert time.monotonic() - start < 15


def test_client_parses_a_cancelled_job_as_an_error(canned):
    canned.answers = {"/jobs/": (200, json.dumps({**JOB, "state": "cancelled", "error": "by request"}).encode())}
    with ProfilerClient(canned.url) as client, pytest.raises(ProfilerError, match="cancelled: by request"):
        client.wait([client.job("j1")])


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("json:loads", ["json:loads", "model factory"]),
        ("math:pi", ["math:pi", "not callable"]),
        ("torch.nn:Identity", ["torch.nn:Identity", "no conv"]),
        ("no_such_module_xyz:f", ["no_such_module_xyz"]),
    ],
)
def test_model_specs_that_are_not_model_factories_are_refused(spec, words):
    from pruning_client.models.registry import ModelError, build_model

    with pytest.raises(ModelError) as info:
        build_model(spec, num_classes=10)
    for word in words:
        assert word in str(info.value)


def test_halp_prune_with_a_bad_model_is_one_line(canned):
    canned.answers = {"/device": (200, json.dumps(DEVICE).encode())}
    result = halp("prune", "--target", canned.url, "--model", "math:pi", "--steps", "1")
    assert_one_line_error(result, "math:pi")


def test_model_names_for_the_help_text_match_the_registry():
    from pruning_client.model_names import MODEL_NAMES
    from pruning_client.models import MODELS

    assert set(MODEL_NAMES) == set(MODELS)


def test_halp_prune_checks_its_targets_before_training():
    """An unreachable target is reported in seconds, not after the model has trained for minutes."""
    start = time.monotonic()
    result = halp("prune", "--target", "http://127.0.0.1:9", "--model", "resnet20", "--pretrain-epochs", "50")
    assert_one_line_error(result, "cannot reach", "http://127.0.0.1:9")
    assert time.monotonic() - start < 60
