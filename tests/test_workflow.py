"""`halp profile`, `halp prune` and `halp report` end to end against a real CPU service."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import onnx
import pytest
import torch

from pruning_client.models import resnet20
from tests.browser import chromium, console_errors, requested_urls
from tests.conftest import ServiceProcess, assert_steps_met_their_budgets, cache_env, halp
from tests.test_remote import metric


def test_profile_asks_only_for_missing_points(service, tmp_path):
    args = ("profile", "--model", "resnet20", "--target", service.url, "--steps", "3", "--latency-ratio", "0.6")
    first = halp(*args, env=cache_env(tmp_path, "c1"))
    assert first.returncode == 0, first.stderr
    measured = metric(service.url, "halp_points_measured_total")
    assert measured > 0
    # a second client with an empty cache: the service already has every point, so it measures none
    second = halp(*args, env=cache_env(tmp_path, "c2"))
    assert second.returncode == 0, second.stderr
    assert metric(service.url, "halp_points_measured_total") == measured


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, shared_services) -> tuple[ServiceProcess, Path, subprocess.CompletedProcess]:
    """One `halp prune` of ResNet-20 on the digits to 0.7 of its latency, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("prune")
    service = shared_services[0]
    out = tmp / "run"
    result = halp(
        "prune", "--model", "resnet20", "--target", service.url, "--latency-ratio", "0.7", "--data", "digits",
        "--steps", "2", "--epochs", "1", "--pretrain-epochs", "3", "--out", str(out), env=cache_env(tmp, "cache"),
    )  # fmt: skip
    return service, out, result


@pytest.mark.slow
def test_prune_writes_a_model_that_meets_the_budget_and_a_report(pruned_run):
    service, out, result = pruned_run
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    (target,) = report["targets"]
    assert (
        target["target"] == service.url
        and target["fingerprint"] == httpx.get(f"{service.url}/device").json()["fingerprint"]
    )
    assert target["accuracy_before"] > 85
    fell = target["accuracy_before"] - target["accuracy_after"]
    assert bool(report["warnings"]) == (fell > 5.0), report["warnings"]  # --max-drop's default
    assert target["speedup"] == pytest.approx(target["latency_before_ms"] / target["latency_after_ms"], rel=1e-3)
    assert target["predicted_after_ms"] > 0
    # the latency model used (a fitted line, or through the unpruned model when noise defines none)
    assert (
        target["latency_model"] in {"line", "per-kind", "anchored"}
        and "latency model" in (out / "report.md").read_text()
    )
    # a CPU service times against its reference layer, and the report says so
    assert target["timing"] == "reference" and "timed against a reference layer" in (out / "report.md").read_text()
    assert len(report["history"]) >= 2 and {h["solver"] for h in report["history"]} <= {"separable", "joint"}
    # every landing round is reported: paired measurement, spread, and the step it led to (or why none)
    landing = report["landing"]
    assert landing and all(len(r["measured"]) == len(r["spread"]) == 1 for r in landing)
    assert all(r["action"] in {"repair", "give back"} for r in landing[:-1])
    for name in ("model.onnx", "model.pt", "report.md", "latency_steps.png", "channels.png", "staircase.png"):
        assert (out / name).stat().st_size > 0, name
    onnx.checker.check_model(onnx.load(out / "model.onnx"))
    model = torch.load(out / "model.pt", weights_only=False)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in resnet20(10).parameters())

    page = (out / "report.html").read_text()
    (out / "report.html").unlink()
    shown = halp("report", str(out))  # writes the views again from report.json
    assert shown.returncode == 0 and "speedup" in shown.stdout and service.url in shown.stdout
    assert (out / "report.html").read_text().count("<svg") == page.count("<svg")


@pytest.mark.slow
def test_report_html_is_one_file_that_opens_offline_in_a_real_browser(pruned_run, tmp_path):
    from selenium.webdriver.common.by import By

    _, out, result = pruned_run
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text()
    # self-contained: every src and href is inline data or a link within the page
    assert re.findall(r'(?:src|href)="(?!data:|#)([^"]*)"', page) == []
    shots = Path(os.environ.get("HALP_SCREENSHOTS", tmp_path))
    with chromium(height=1600) as driver:
        driver.get((out / "report.html").as_uri())
        figures = driver.find_elements(By.CSS_SELECTOR, "figure svg")
        staircases = driver.find_elements(By.CSS_SELECTOR, "figure.staircase svg")
        # steps, calibration (residuals with 3+ samples), channels, and a staircase per layer reported
        assert len(figures) == 2 + bool(report["targets"][0]["calibration_residuals"]) + len(report["staircases"])
        assert report["staircases"] and len(staircases) == len(report["staircases"])
        assert all(f.size["width"] > 300 and f.size["height"] > 150 for f in figures)  # drawn, not collapsed
        text = driver.find_element(By.TAG_NAME, "body").text
        assert report["settings"]["model"] in text and f"{report['targets'][0]['latency_ratio']:.3f}" in text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#steps tbody tr")) == len(report["history"])
        urls = {u for u in requested_urls(driver) if not u.startswith("data:")}
        assert urls == {(out / "report.html").as_uri()}, urls  # nothing else: no network, no file beside it
        assert console_errors(driver) == []
        driver.save_screenshot(str(shots / "report-html.png"))


@pytest.mark.slow
@pytest.mark.usefixtures("quiet_machine")
def test_pruned_model_meets_the_budget_measured_side_by_side(pruned_run):
    """SPEC 7.3: measured after <= 0.7 x measured before x 1.05. Both come from side-by-side /measure
    calls; on a host whose timing wanders by tens of per cent within minutes (seen: p90/p10 of 2.0)
    they drift apart between calibration and the final check, so it is checked on a quiet host."""
    _, out, result = pruned_run
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    (target,) = report["targets"]
    assert target["latency_after_ms"] <= 0.7 * target["latency_before_ms"] * 1.05, target
    # and not far under it, or the report says why (the pairs' spread, another target, the rounds)
    last = report["landing"][-1]
    assert last["measured"][0] >= 0.93 * 0.7 or last["action"].startswith("below the band"), report["landing"]


@pytest.mark.slow
def test_a_budget_out_of_reach_stops_the_run_with_one_line_and_keeps_its_checkpoint(shared_services, tmp_path):
    """Never pruned to the minimum silently: a step whose budget no model the blocks allow can meet
    (after a paired re-measurement) stops the run, names the target, and keeps the last checkpoint."""
    service, out = shared_services[0], tmp_path / "run"
    # one step straight to 0.01 (ResNet-20's smallest model at block 16 is about 0.08): out of reach at
    # once, after the pretraining epoch whose checkpoint must survive
    done = halp(
        "prune", "--model", "resnet20", "--target", service.url, "--latency-ratio", "0.01", "--steps", "1",
        "--epochs", "1", "--pretrain-epochs", "1", "--block-size", "16", "--out", str(out),
        env=cache_env(tmp_path, "cache"),
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    said = done.stderr.strip().splitlines()[-1]
    assert service.url in said and "step 1's budget" in said and "is out of reach" in said, said
    assert "--allow-minimum" in said, said
    assert "measuring the smallest model the blocks allow, in pairs" in done.stderr
    assert (out / "checkpoints" / "last.pt").exists() and not (out / "report.json").exists()


def test_prune_mistakes_are_clear_errors(service, tmp_path):
    for args, message in [
        (("--model", "resnet999"), "unknown model"),
        (("--data", str(tmp_path / "nope")), "neither 'digits' nor an existing directory"),
        (("--latency-ratio", "1.5"), "latency-ratio"),
        (("--dtype", "int4"), "--dtype"),
        (("--model", "resnet20", "--fixed", "stem.0,no.such"), "--fixed: no module named no.such"),
    ]:
        out = halp("prune", "--target", service.url, *args, "--out", str(tmp_path / "x"))
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr
    missing = halp("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    # a bad setting from the environment is refused when the run starts, not after its training
    env = {**os.environ, "HALP_PAIRED_SETS": "0"}
    bad = halp("prune", "--target", service.url, "--out", str(tmp_path / "x"), env=env)
    assert bad.returncode == 2 and "HALP_PAIRED_SETS must be a positive" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and "training" not in bad.stderr


@pytest.mark.slow
def test_per_target_prunes_one_model_per_target_and_reports_each(shared_services, tmp_path):
    """Uncalibrated, as below: calibrated, the 2-thread service's noisy fit once made this test ask for
    6,274 table points (609 s in CI); that is held by the pruner's and calibration's own tests."""
    first, second = shared_services
    out = tmp_path / "run"
    result = halp(
        "prune", "--model", "resnet20", "--target", first.url, "--target", second.url, "--per-target", "--no-calibrate",
        "--latency-ratio", "0.7", "--steps", "1", "--epochs", "0", "--pretrain-epochs", "0", "--out", str(out),
        env=cache_env(tmp_path, "cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for i, service in enumerate((first, second)):
        (target,) = json.loads((out / f"target{i}" / "report.json").read_text())["targets"]
        assert target["target"] == service.url
        assert service.url in result.stdout


@pytest.mark.slow
def test_several_targets_get_one_model_that_meets_every_budget(shared_services, tmp_path):
    """Uncalibrated: a noisy host's fit can put a target's intercept above 0.7 of its latency (a 2-thread
    CPU service fitted 30-60 %), and then no choice meets the budget; calibration has its own tests."""
    first, second = shared_services
    out = tmp_path / "run"
    result = halp(
        "prune", "--model", "resnet20", "--target", first.url, "--target", second.url, "--no-calibrate",
        "--latency-ratio", "0.7", "--steps", "1", "--epochs", "0", "--pretrain-epochs", "0", "--out", str(out),
        env=cache_env(tmp_path, "cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [t["target"] for t in report["targets"]] == [first.url, second.url]
    assert len({t["fingerprint"] for t in report["targets"]}) == 2
    assert_steps_met_their_budgets(report)  # one model, within each target's own budget
    assert not (out / "target0").exists()
