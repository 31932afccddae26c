"""Prometheus metrics of one service instance (own registry, so tests can run many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # the server's own memory and CPU (the worker's are its own)
        self.requests = Counter(
            "halp_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.points_measured = Counter("halp_points_measured_total", "Table points measured", registry=self.registry)
        self.points_aborted = Counter(
            "halp_measurements_aborted_total", "Measurements stopped by a cancel or a shutdown", registry=self.registry
        )
        self.point_seconds = Histogram(
            "halp_point_measure_seconds",
            "Wall time to build and time one table point",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.models_measured = Counter(
            "halp_models_measured_total", "Whole models measured by POST /measure", registry=self.registry
        )
        self.jobs_submitted = Counter("halp_jobs_submitted_total", "Jobs created", registry=self.registry)
        self.jobs_failed = Counter("halp_jobs_failed_total", "Jobs that failed", registry=self.registry)
        self.queue_depth = Gauge("halp_job_queue_depth", "Jobs waiting or running", registry=self.registry)
        self.device_busy = Gauge(
            "halp_device_busy", "1 while the device builds or times a table point or an upload", registry=self.registry
        )
        self.worker_restarts = Gauge(
            "halp_worker_restarts", "Measurement workers replaced after a limit, a crash or a cancel",
            registry=self.registry,
        )  # fmt: skip
