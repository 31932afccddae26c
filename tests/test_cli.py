"""``halp lut`` against a real service: waits with progress, prints, plots; user mistakes are clean errors."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx

from tests.conftest import CONV, halp


def test_lut_measures_prints_and_plots(service, tmp_path):
    png = tmp_path / "stairs.png"
    out = halp("lut", CONV, "--target", service.url, "--cin", "16,32", "--cout", "8..32:8", "--plot", str(png))
    assert out.returncode == 0, out.stderr
    assert CONV in out.stdout and "cin \\ cout" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shown = halp("lut", CONV, "--target", service.url)  # stored table, no measuring
    assert shown.returncode == 0, shown.stderr
    stored = httpx.get(f"{service.url}/lut/{CONV}").json()["points"]
    row16 = next(line for line in shown.stdout.splitlines() if re.match(r"\W*16\b", line))
    printed = [float(v) for v in re.findall(r"\d+\.\d{4}", row16)]
    expected = [round(p["median_ms"], 4) for p in sorted(stored, key=lambda p: p["cout"]) if p["cin"] == 16]
    assert printed == expected  # the stored medians, in cout order


def test_user_mistakes_are_one_line_errors(service):
    for args, message in [
        (("lut", "conv2d-k3", "--target", service.url), "grammar"),
        (("lut", CONV, "--target", service.url, "--cin", "8"), "both --cin and --cout"),
        (("lut", CONV, "--target", service.url, "--cin", "x", "--cout", "8"), "bad channel selection"),
        (("lut", CONV, "--target", service.url), "Not found"),
        (("lut", CONV, "--target", "http://127.0.0.1:9"), "cannot reach"),
        (("serve", "--backend", "cuda-magic"), "unknown backend"),
        (("prune", "--target", service.url, "--joint", "window"), "--joint must be one of full, near, off"),
    ]:
        out = halp(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr


def test_cli_module_does_not_import_torch():
    """`halp --help`, `halp serve` and `halp lut` must not pay for torch (seconds and hundreds of MB)."""
    code = "import sys, pruning_client.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_read_only_store_is_one_line(tmp_path):
    from profiler_service.db import open_store

    db = tmp_path / "ro.db"
    open_store(f"sqlite:///{db}").dispose()  # a real store, then opened read-only (root ignores file modes)
    out = halp("serve", "--backend", "onnxruntime", "--db", f"sqlite:///file:{db}?mode=ro&uri=true")
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "readonly" in lines[0] and str(db) in lines[0], out.stderr


def test_help_shows_defaults_and_no_type_noise():
    shown = halp("prune", "--help", timeout=60)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())  # unwrapped
    assert "<bool>" not in text and "--per-target / --no-per-target" in text
    assert "--latency-ratio <float> target latency / original latency, on every target [default: 0.5]" in text
    assert "--fixed MODULE[,MODULE]" in text and "--target URL" in text
    serve = " ".join(halp("serve", "--help", timeout=60).stdout.split())
    assert "(default 8000; env HALP_PORT)" in serve  # from the service's Settings, not restated
