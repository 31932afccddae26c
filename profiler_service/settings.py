"""Service settings: one pydantic-settings class, read from ``HALP_*`` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from profiler_service.backends.base import host_memory_bytes


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "halp"


def default_worker_memory_mb() -> int:
    """Half of the machine: a runaway measurement must leave room for everything else on it."""
    return max(1024, host_memory_bytes() // 2**20 // 2)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HALP_", extra="ignore")

    backend: str = Field("auto", description="auto, tensorrt, torch-cuda, onnxruntime or torch-cpu")
    db: str = Field("", description="SQLAlchemy URL of the SQLite store; default under cache_dir")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    threads: int | None = Field(None, ge=1, le=1024, description="CPU backends: intra-op threads")
    device_index: int = Field(0, ge=0, le=63, description="GPU backends: which GPU (one service per GPU)")
    api_token: SecretStr | None = Field(None, description="bearer token required on writes; empty means none")
    protect_reads: bool = Field(False, description="require the token on reads and /metrics too")
    max_upload_bytes: int = Field(256 * 1024 * 1024, ge=1, description="body cap of POST /measure (a model)")
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="body cap of every other request (10,000 points of POST /lut fit in 0.2 MiB)"
    )
    table_cache_mb: int = Field(64, ge=1, description="memory for GET /lut answers kept ready (least recent out)")
    memory_fraction: float = Field(0.5, gt=0, le=1, description="share of device memory one point may use")
    timing_max_ms: float = Field(3000.0, gt=0, description="wall-time cap of one measurement")
    timing_rel_tol: float = Field(0.01, gt=0, lt=1, description="median stability to stop timing")
    timing_reference: bool | None = Field(
        None,
        description="time every point and model relative to a reference layer run between samples, which "
        "cancels a shared host's drifting speed (default: on for CPU backends, off for GPU ones)",
    )
    worker_memory_mb: int = Field(
        default_factory=default_worker_memory_mb, ge=256, description="memory limit of the measurement worker"
    )
    point_deadline_s: float = Field(
        300.0, gt=0, description="wall-clock limit to build and time one point or one uploaded model"
    )
    job_deadline_s: float = Field(12 * 3600.0, gt=0, description="a job unfinished this long after submission fails")
    max_point_gmacs: float | None = Field(
        None, gt=0, description="cost cap of one point, multiply-adds x timed runs / 1e9 (default: by device kind)"
    )
    max_active_jobs: int = Field(256, ge=1, description="queued or running jobs before POST /lut answers 503")
    max_concurrent_uploads: int = Field(
        4, ge=1, description="POST /measure bodies received or waiting for the device at once; more answer 429"
    )
    measure_wait_s: float = Field(60.0, ge=0, description="how long POST /measure waits for the device before 503")
    max_input_elements: int = Field(1 << 30, ge=1, description="size cap of one input of an uploaded model")

    @field_validator("api_token")
    @classmethod
    def _blank_token_is_none(cls, token: SecretStr | None) -> SecretStr | None:
        """``HALP_API_TOKEN=""`` means no token, never one that an empty credential matches."""
        return token if token is not None and token.get_secret_value().strip() else None

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.cache_dir / 'profiler.db'}"

    def point_cost_cap(self, gpu: bool) -> float:
        """Multiply-adds x runs one point may cost: about a minute on the slowest device of its kind."""
        gmacs = self.max_point_gmacs or (1e6 if gpu else 2e3)
        return gmacs * 1e9
