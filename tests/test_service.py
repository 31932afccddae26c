"""The profiler service end to end: a real server, a real SQLite file, real ONNX Runtime timing."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from profiler_service.backends.onnx_layer import layer_onnx
from profiler_service.shapes import parse_shape
from profiler_service.timing import TimingPolicy
from profiler_service.worker import Worker, WorkerConfig
from tests.conftest import CONV, wait_job

GRID = {"cin": [16, 32], "cout": [8, 16, 24]}


def test_grid_is_measured_stored_and_served(service):
    with httpx.Client(base_url=service.url) as c:
        r = c.post(f"/lut/{CONV}", json=GRID)
        assert r.status_code == 202
        assert r.headers["location"].startswith("/jobs/")
        job = wait_job(c, r.headers["location"])
        assert job["state"] == "done" and job["done"] == job["total"] == 6

        table = c.get(f"/lut/{CONV}").json()
        assert table["shape"] == CONV and table["unit"] == "ms" and table["backend"] == "onnxruntime"
        assert table["fingerprint"] == c.get("/device").json()["fingerprint"]
        assert {(p["cin"], p["cout"]) for p in table["points"]} == {(a, b) for a in GRID["cin"] for b in GRID["cout"]}
        for p in table["points"]:
            assert 0 < p["p10_ms"] <= p["median_ms"] <= p["p90_ms"]
            assert p["runs"] >= 10

        again = c.post(f"/lut/{CONV}", json=GRID)
        assert again.status_code == 200
        assert len(again.json()["points"]) == 6
        (summary,) = c.get("/luts").json()
        assert summary["shape"] == CONV and summary["points"] == 6 and summary["last_job"] == job["id"]
        selected = c.get(f"/lut/{CONV}", params={"cin": "16", "cout": "8..16"}).json()
        assert {(p["cin"], p["cout"]) for p in selected["points"]} == {(16, 8), (16, 16)}


def test_table_survives_restart(make_service):
    svc = make_service()
    with httpx.Client(base_url=svc.url) as c:
        wait_job(c, c.post(f"/lut/{CONV}", json=GRID).headers["location"])
        before = c.get(f"/lut/{CONV}").json()
        device = c.get("/device").json()
    assert device["timing"] == "reference" and device["reference_ms"] > 0  # CPU default: drift-compensated
    svc.stop()
    svc.start()
    with httpx.Client(base_url=svc.url) as c:
        assert c.get(f"/lut/{CONV}").json() == before
        assert c.post(f"/lut/{CONV}", json=GRID).status_code == 200
        # the new worker measured its own reference, but counts it as the store's first: old and new
        # points share one scale
        assert c.get("/device").json() == device


def test_a_worker_restart_keeps_the_pinned_reference(tmp_path):
    config = WorkerConfig("onnxruntime", 1, str(tmp_path), 2**30, TimingPolicy(warmup_ms=5, max_ms=100))
    worker = Worker(config)
    try:
        measured = worker.start()["reference_ms"]
        assert worker.pin_reference(3 * measured, 60)["reference_ms"] == 3 * measured
        ratio = worker.layer(CONV, 16, 16, 60).median_ms
        worker.kill()  # as after a hostile upload
        again = worker.layer(CONV, 16, 16, 60).median_ms  # a fresh child, started with the pinned value
        assert worker.restarts == 1 and worker.device["reference_ms"] == 3 * measured
        assert 0.6 < again / ratio < 1.6  # same scale (on a fresh child's own reference it would be ~3x off)
    finally:
        worker.close()


def test_unfinished_job_resumes_after_crash(make_service):
    svc = make_service()
    grid = {"cin": [32, 64], "cout": list(range(8, 129, 8))}  # 32 points, several seconds
    with httpx.Client(base_url=svc.url) as c:
        location = c.post(f"/lut/{CONV}", json=grid).headers["location"]
        while c.get(location).json()["done"] < 2:
            time.sleep(0.05)
    svc.stop(signal.SIGKILL)  # no shutdown hook runs
    svc.start()
    with httpx.Client(base_url=svc.url) as c:
        job = wait_job(c, location)
        assert job["state"] == "done" and job["done"] == 32
        assert len(c.get(f"/lut/{CONV}").json()["points"]) == 32


def test_identical_concurrent_requests_join_one_job(service):
    grid = {"cin": [48], "cout": list(range(8, 97, 8))}
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=service.url) as c:
            answers.append(c.post(f"/lut/{CONV}", json=grid))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = {r.json()["id"] for r in answers if r.status_code == 202}
    assert len(jobs) == 1, [r.json() for r in answers]
    with httpx.Client(base_url=service.url) as c:
        wait_job(c, f"/jobs/{jobs.pop()}")
        metrics = c.get("/metrics").text
    assert "halp_jobs_submitted_total 1.0" in metrics
    assert "halp_points_measured_total 12.0" in metrics  # each point measured once


def test_malformed_and_over_limit_requests_get_422(service):
    with httpx.Client(base_url=service.url) as c:
        bad = c.get("/lut/conv2d-k3x3-fp32")
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert "conv2d-k{KH}x{KW}" in bad.json()["detail"] and bad.json()["grammar"]

        too_many = c.post(f"/lut/{CONV}", json={"cin": list(range(1, 102)), "cout": list(range(1, 101))})
        assert too_many.status_code == 422
        assert "at most 10000" in too_many.json()["detail"]

        huge = "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h4096w4096-b4096-fp32"
        over_memory = c.post(f"/lut/{huge}", json={"cin": [16384], "cout": [16384]})
        assert over_memory.status_code == 422 and "budget" in over_memory.json()["detail"]

        assert c.post(f"/lut/{CONV}", json={"cin": [0], "cout": [8]}).status_code == 422
        assert c.post(f"/lut/{CONV}", json={"cin": [8]}).status_code == 422
        assert c.post(f"/lut/{CONV}", json={"points": []}).status_code == 422
        assert c.get(f"/lut/{CONV}").status_code == 404  # nothing measured yet
        assert c.get("/jobs/nope").status_code == 404


def test_writes_need_the_token_when_one_is_set(make_service):
    svc = make_service(env={"HALP_API_TOKEN": "s3cret"})
    with httpx.Client(base_url=svc.url) as c:
        denied = c.post(f"/lut/{CONV}", json=GRID)
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        wrong = c.post(f"/lut/{CONV}", json=GRID, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = c.post(f"/lut/{CONV}", json=GRID, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 202
        assert c.get("/device").status_code == 200  # reads stay open by default


def test_measure_whole_onnx_model(make_service):
    svc = make_service(env={"HALP_MAX_UPLOAD_BYTES": "200000"})
    model = layer_onnx(parse_shape(CONV), 32, 32)
    with httpx.Client(base_url=svc.url, timeout=60) as c:
        r = c.post("/measure", files={"model": ("m.onnx", model)})
        assert r.status_code == 200, r.text
        stats = r.json()
        assert 0 < stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"] and stats["runs"] >= 10

        big = layer_onnx(parse_shape(CONV), 256, 256)  # 2.4 MB of weights
        assert c.post("/measure", files={"model": ("m.onnx", big)}).status_code == 413
        junk = c.post("/measure", files={"model": ("m.onnx", b"not onnx")})
        assert junk.status_code == 422
        bad_shape = c.post("/measure", files={"model": ("m.onnx", model)}, data={"input_shape": "1xQ"})
        assert bad_shape.status_code == 422


def test_device_docs_and_metrics(service):
    with httpx.Client(base_url=service.url) as c:
        device = c.get("/device").json()
        for key in ("fingerprint", "backend", "backend_version", "accelerator", "precisions", "host", "threads"):
            assert key in device
        assert device["threads"] == 1 and "fp32" in device["precisions"]
        assert c.get("/docs").status_code == 200
        assert "/lut/{shape}" in c.get("/openapi.json").json()["paths"]
        metrics = c.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'halp_http_requests_total{method="GET",route="/device",status="200"}' in metrics.text


def test_cached_tables_see_new_points(service):
    with httpx.Client(base_url=service.url) as c:
        wait_job(c, c.post(f"/lut/{CONV}", json=GRID).headers["location"])
        first = c.get(f"/lut/{CONV}").json()
        assert c.get(f"/lut/{CONV}").json() == first  # served again, from memory
        wait_job(c, c.post(f"/lut/{CONV}", json={"points": [[48, 8]]}).headers["location"])
        again = c.get(f"/lut/{CONV}").json()
        assert len(again["points"]) == len(first["points"]) + 1
        assert c.get(f"/lut/{CONV}", params={"cin": "48"}).json()["points"][0]["cout"] == 8
