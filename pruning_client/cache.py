"""Local cache of fetched tables, keyed by device fingerprint (tables never cross devices) and, for a
reference-timed service, its store's scale (``RemoteTarget.cache_key``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pruning_client.latency import Point


def default_cache_dir() -> Path:
    return Path(os.environ.get("HALP_CACHE_DIR") or Path.home() / ".cache" / "halp") / "tables"


class TableCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_cache_dir()

    def _path(self, fingerprint: str, shape: str) -> Path:
        return self.root / fingerprint / f"{shape}.json"

    def load(self, fingerprint: str, shape: str) -> dict[Point, float]:
        path = self._path(fingerprint, shape)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}  # absent or unreadable: refetch rather than fail
        return {(int(c), int(o)): float(ms) for c, o, ms in raw}

    def store(self, fingerprint: str, shape: str, points: dict[Point, float]) -> None:
        path = self._path(fingerprint, shape)
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self.load(fingerprint, shape), **points}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([[c, o, ms] for (c, o), ms in sorted(merged.items())]))
        os.replace(tmp, path)  # atomic: a crash never leaves half a table
