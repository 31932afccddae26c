"""Service settings: one pydantic-settings class, read from ``HALP_*`` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "halp"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HALP_", extra="ignore")

    backend: str = Field("auto", description="auto, tensorrt, torch-cuda, onnxruntime or torch-cpu")
    db: str = Field("", description="SQLAlchemy URL of the SQLite store; default under cache_dir")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    threads: int | None = Field(None, ge=1, le=1024, description="CPU backends: intra-op threads")
    api_token: SecretStr | None = Field(None, description="bearer token required on writes")
    protect_reads: bool = Field(False, description="require the token on reads too")
    max_upload_bytes: int = Field(256 * 1024 * 1024, ge=1)
    memory_fraction: float = Field(0.5, gt=0, le=1, description="share of device memory one point may use")
    timing_max_ms: float = Field(3000.0, gt=0, description="wall-time cap of one measurement")
    timing_rel_tol: float = Field(0.01, gt=0, lt=1, description="median stability to stop timing")

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.cache_dir / 'profiler.db'}"
