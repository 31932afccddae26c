"""Jobs can be cancelled, have deadlines and a bounded queue; SIGTERM stops the service in seconds.

Points here are made slow on purpose (a 56x56 conv timed until the 2 s cap,
since the stability tolerance is never met), so that a job is surely running
when the test acts on it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx
import pytest

from tests import hostile_models as hm
from tests.conftest import wait_job, wait_metric

SLOW_ENV = {"HALP_TIMING_REL_TOL": "0.000001", "HALP_TIMING_MAX_MS": "2000"}
SLOW = "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b1-fp32"
SLOW_GRID = {"cin": [64], "cout": [16, 24, 32, 40, 48]}  # about 2 s a point
QUICK = "conv2d-k1x1-s1x1-p0x0-d1x1-g1-h4w4-b1-fp32"


def running(client: httpx.Client, location: str, done: int = 0) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(location).json()
        if job["state"] == "running" and job["done"] >= done:
            return job
        time.sleep(0.05)
    raise TimeoutError(job)


def aborted(client: httpx.Client) -> float:
    return float(re.search(r"^halp_measurements_aborted_total (\S+)$", client.get("/metrics").text, re.M)[1])


def test_cancel_a_running_job_aborts_its_point(make_service):
    svc = make_service(env={**SLOW_ENV, "HALP_TIMING_MAX_MS": "60000"})  # a point runs a minute unless aborted
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        location = c.post(f"/lut/{SLOW}", json=SLOW_GRID).headers["location"]
        running(c, location)
        wait_metric(c, "halp_device_busy", 1)  # its first point is in the worker
        r = c.delete(location)
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        # The point in flight is aborted: the next job does not wait out its minute.
        quick = c.post(f"/lut/{QUICK}", json={"cin": [4], "cout": [4]})
        assert wait_job(c, quick.headers["location"], timeout=45)["state"] == "done"
        assert aborted(c) == 1
        job = c.get(location).json()
        assert job["state"] == "cancelled" and job["done"] < len(SLOW_GRID["cout"])
        assert c.delete(location).status_code == 409  # finished jobs cannot be cancelled
        assert c.delete("/jobs/no-such-job").status_code == 404


def test_cancelling_a_job_that_waits_for_the_device_leaves_another_clients_upload_alone(make_service):
    """Cancel used to kill whatever the worker ran when the job was the manager's current one, though
    that job was still waiting for the device behind another client's upload."""
    svc = make_service(env={**SLOW_ENV, "HALP_MEASURE_WAIT_S": "30"})
    with httpx.Client(base_url=svc.url, timeout=60) as c:
        upload: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: upload.append(c.post("/measure", files={"model": ("m.onnx", hm.conv_3x8x8())}))
        )
        thread.start()
        wait_metric(c, "halp_device_busy", 1)  # the upload is timed, for the 2 s cap
        location = c.post(f"/lut/{SLOW}", json=SLOW_GRID).headers["location"]
        running(c, location)  # its first point waits for the device
        assert c.delete(location).json()["state"] == "cancelled"
        thread.join()
        assert upload[0].status_code == 200, upload[0].text
        assert c.get(location).json()["done"] == 0  # and the job's point never ran


def test_an_interrupt_that_comes_before_its_call_is_kept_for_it(tmp_path):
    from profiler_service.errors import Interrupted
    from profiler_service.measurer import Measurer
    from profiler_service.metrics import Metrics
    from profiler_service.shapes import parse_shape
    from profiler_service.timing import TimingPolicy
    from profiler_service.worker import Worker, WorkerConfig

    worker = Worker(WorkerConfig("onnxruntime", 1, str(tmp_path), 2**30, TimingPolicy(warmup_ms=5, max_ms=100)))
    worker.start()
    try:
        measurer = Measurer(worker, Metrics(), deadline_s=60, measure_wait_s=1)
        shape = parse_shape(QUICK)
        measurer.interrupt("job cancelled", owner="job-1")  # before job-1's point took the device
        assert measurer.layer(shape, 4, 4, owner="job-2").median_ms > 0  # another job's point is untouched
        with pytest.raises(Interrupted, match="job cancelled"):
            measurer.layer(shape, 4, 4, owner="job-1")
        assert measurer.layer(shape, 4, 8, owner="job-1").median_ms > 0  # once: a later call runs
    finally:
        worker.close()


def test_cancel_needs_the_token(make_service):
    svc = make_service(env={**SLOW_ENV, "HALP_API_TOKEN": "t"})
    auth = {"Authorization": "Bearer t"}
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        location = c.post(f"/lut/{SLOW}", json=SLOW_GRID, headers=auth).headers["location"]
        assert c.delete(location).status_code == 401
        assert c.delete(location, headers=auth).json()["state"] == "cancelled"


def test_queue_bound_answers_503_with_retry_after(make_service):
    svc = make_service(env={**SLOW_ENV, "HALP_MAX_ACTIVE_JOBS": "1"})
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        first = c.post(f"/lut/{SLOW}", json=SLOW_GRID)
        assert first.status_code == 202
        assert c.post(f"/lut/{SLOW}", json=SLOW_GRID).json()["id"] == first.json()["id"]  # joining is not queueing
        r = c.post(f"/lut/{QUICK}", json={"cin": [4], "cout": [4]})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
        assert "HALP_MAX_ACTIVE_JOBS" in r.json()["detail"]
        c.delete(first.headers["location"])
        assert c.post(f"/lut/{QUICK}", json={"cin": [4], "cout": [4]}).status_code == 202


def test_job_past_its_deadline_is_not_resumed(make_service):
    svc = make_service(env={**SLOW_ENV, "HALP_JOB_DEADLINE_S": "4"})
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        location = c.post(f"/lut/{SLOW}", json=SLOW_GRID).headers["location"]
        running(c, location)
    svc.stop(signal.SIGKILL)  # no shutdown hook: the job stays "running" in the store
    time.sleep(4.5)
    svc.start()
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        job = wait_job(c, location, timeout=30)
        assert job["state"] == "failed" and "HALP_JOB_DEADLINE_S" in job["error"], job
        quick = c.post(f"/lut/{QUICK}", json={"cin": [4], "cout": [4]})
        assert wait_job(c, quick.headers["location"])["state"] == "done"


def test_sigterm_exits_in_seconds_and_jobs_resume(make_service):
    svc = make_service(env={**SLOW_ENV, "HALP_POINT_DEADLINE_S": "600"})
    with httpx.Client(base_url=svc.url, timeout=120) as c:
        location = c.post(f"/lut/{SLOW}", json=SLOW_GRID).headers["location"]
        running(c, location, done=1)
    # An upload that would run for days is in flight too.
    stuck = threading.Thread(
        target=lambda: httpx.post(f"{svc.url}/measure", files={"model": ("m.onnx", hm.endless_loop())}, timeout=60),
        daemon=True,
    )
    stuck.start()
    time.sleep(1.0)
    assert svc.proc is not None
    start = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    svc.proc.wait(15)
    assert time.monotonic() - start < 8, f"SIGTERM took {time.monotonic() - start:.1f} s"
    svc.proc = None
    svc.start()
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        job = wait_job(c, location, timeout=120)
        assert job["state"] == "done" and job["done"] == len(SLOW_GRID["cout"])
        assert len(c.get(f"/lut/{SLOW}").json()["points"]) == len(SLOW_GRID["cout"])


def test_a_stop_signalled_to_the_whole_process_group_leaves_the_job_to_resume(make_service):
    """systemd's default KillMode, a container runtime or Ctrl-C signal every process of the service:
    the measurement worker used to die first, and its job was marked failed for good."""
    svc = make_service(env=SLOW_ENV, own_group=True)
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        location = c.post(f"/lut/{SLOW}", json=SLOW_GRID).headers["location"]
        running(c, location, done=1)
        wait_metric(c, "halp_device_busy", 1)  # a point is in the worker as the signal comes
    assert svc.proc is not None
    os.killpg(svc.proc.pid, signal.SIGTERM)
    svc.proc.wait(30)
    svc.proc = None
    svc.start()
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        job = wait_job(c, location, timeout=120)
        assert job["state"] == "done" and job["done"] == len(SLOW_GRID["cout"]), job
