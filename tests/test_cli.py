"""``halp lut`` against a real service: waits with progress, prints, plots; user mistakes are clean errors."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import CONV


def halp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pruning_client.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_lut_measures_prints_and_plots(service, tmp_path):
    png = tmp_path / "stairs.png"
    out = halp("lut", CONV, "--target", service.url, "--cin", "16,32", "--cout", "8..32:8", "--plot", str(png))
    assert out.returncode == 0, out.stderr
    assert CONV in out.stdout and "cin \\ cout" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shown = halp("lut", CONV, "--target", service.url)  # stored table, no measuring
    assert shown.returncode == 0 and "0." in shown.stdout


def test_user_mistakes_are_one_line_errors(service):
    for args, message in [
        (("lut", "conv2d-k3", "--target", service.url), "grammar"),
        (("lut", CONV, "--target", service.url, "--cin", "8"), "both --cin and --cout"),
        (("lut", CONV, "--target", service.url, "--cin", "x", "--cout", "8"), "bad channel selection"),
        (("lut", CONV, "--target", service.url), "Not found"),
        (("lut", CONV, "--target", "http://127.0.0.1:9"), "cannot reach"),
        (("serve", "--backend", "cuda-magic"), "unknown backend"),
    ]:
        out = halp(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr
