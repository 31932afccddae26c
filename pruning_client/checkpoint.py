"""Checkpoints of a pruning run: ``OUT/checkpoints/last.pt``, written atomically, read back by ``--resume``.

A run of many hours that dies must not start over, and a kill during a write must not lose the
previous checkpoint: the new one is written beside it, flushed to disk, then renamed over it (a
rename within one directory is atomic on POSIX filesystems), and the directory entry is synced.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

LAST = Path("checkpoints") / "last.pt"
VERSION = 1


class CheckpointError(ValueError):
    """No checkpoint to resume from, an unreadable one, or one that does not fit this run."""


def save_atomic(state: dict, path: Path) -> None:
    """``torch.save(state)`` to ``path`` such that ``path`` always holds a whole checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            torch.save({"version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(out: Path) -> dict:
    """The newest checkpoint of the run writing to ``out`` (a file this tool wrote: unpickled in full)."""
    path = out / LAST
    if not path.exists():
        raise CheckpointError(f"--resume {out}: no checkpoint at {path} (was the run started with --out {out}?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which, never a traceback
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a checkpoint of this version of halp (format {VERSION})")
    return state
