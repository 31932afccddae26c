"""The measurement worker: a child process that owns the backend, and its supervisor.

Building and timing (of a table point or an uploaded model) run in the child,
never in the server process: an upload that allocates 64 GiB, a kernel that
hangs or an ONNX ``Loop`` of 10^12 iterations takes down only the child. The
supervisor gives every call a wall-clock deadline and watches the child's
resident memory; past either it kills the child, and the next call starts a
fresh one. On CPU backends the child also runs under ``RLIMIT_AS``, so an
allocation over the limit fails inside it instead of swapping the machine; GPU
backends skip it (CUDA reserves far more address space than it uses) and rely
on the resident-memory watch. On GPU backends the child holds the CUDA context,
so an out-of-memory or a hung kernel is the child's alone.

Protocol: pickled tuples over a socket pair. The child answers its config with
``("ready", device_json, gpu)`` or ``("unavailable", reason)``, then each
request ``("layer", shape_key, cin, cout)``, ``("model", path, shapes)`` or ``("pin", reference_ms)``
with ``("ok", stats, shapes)`` (a pin: ``("ok", device_json, None)``) or ``("error", kind, message)``;
kinds: ``invalid`` and ``limit`` (refused by a check), ``unsupported`` (the backend cannot run it),
``memory`` (an allocation failed at the limit: the child is replaced), ``failed``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from profiler_service.backends import BackendUnavailable, UnsupportedModel
from profiler_service.errors import Interrupted, InvalidInput, MeasurementFailed, OverLimit
from profiler_service.timing import LatencyStats, TimingPolicy

log = logging.getLogger(__name__)
POLL_S = 0.02


@dataclass(frozen=True)
class WorkerConfig:
    backend: str
    threads: int | None
    cache_dir: str
    memory_bytes: int
    policy: TimingPolicy
    device_index: int = 0
    reference: bool | None = None  # drift-compensated timing (None: the backend kind's default)
    reference_ms: float | None = None  # what the reference counts as, once pinned to the store's


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Worker:
    """Supervisor of one measurement child; ``call`` is used by one thread at a time (the device lane)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.device: dict[str, Any] | None = None
        self.gpu = False
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._state = threading.Lock()  # guards _proc/_interrupt against interrupt() from other threads
        self._interrupt: str | None = None

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Start the child and return its device description; raises BackendUnavailable."""
        parent, child = socket.socketpair()
        cmd = [sys.executable, "-m", "profiler_service.worker", str(child.fileno())]
        proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        child.close()
        conn = Connection(parent.detach())
        with self._state:  # an interrupt pending for the call that restarts us stays pending
            self._proc, self._conn = proc, conn
        try:
            conn.send(self.config)
            # A backend's first start (TensorRT's precision probe) may take minutes; it is bounded all the same.
            reply = self._receive(proc, conn, deadline_s=600.0, memory_limit=None)
        except (MeasurementFailed, OverLimit) as e:
            self.kill()
            raise BackendUnavailable(f"the measurement worker did not start: {e}") from None
        if reply[0] != "ready":
            self.kill()
            raise BackendUnavailable(reply[1])
        _, self.device, self.gpu = reply
        log.info("measurement worker %d ready (%s)", proc.pid, self.config.backend)
        return self.device

    def kill(self) -> None:
        with self._state:
            proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
        if conn is not None:
            conn.close()

    close = kill

    def arm(self) -> None:
        """Forget an interrupt meant for an earlier call: the next call runs unless interrupted again
        (the lane's holder calls it just before its call, ``Measurer``)."""
        with self._state:
            self._interrupt = None

    def interrupt(self, reason: str) -> None:
        """Stop the call in flight by killing the child, or the next one before it starts (a call
        starting when this came is still in flight); safe from any thread."""
        with self._state:
            self._interrupt = reason
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    # calls ----------------------------------------------------------------------------------

    def pin_reference(self, ms: float, deadline_s: float) -> dict[str, Any]:
        """Count the timing reference as ``ms`` from now on, restarts included; the device description after."""
        self.config = replace(self.config, reference_ms=ms)
        self.device = self._call(("pin", ms), deadline_s)[0]
        return self.device

    def layer(self, shape_key: str, cin: int, cout: int, deadline_s: float) -> LatencyStats:
        return self._call(("layer", shape_key, cin, cout), deadline_s)[0]

    def model(
        self, path: Path, shapes: dict[str, list[int]] | None, deadline_s: float
    ) -> tuple[LatencyStats, dict[str, list[int]]]:
        stats, resolved = self._call(("model", str(path), shapes), deadline_s)
        if _rss_bytes(self.pid or 0) > self.config.memory_bytes // 2:
            self.kill()  # an upload's arenas stay resident; hand them back now, not at the next model
        return stats, resolved

    def _call(self, request: tuple, deadline_s: float) -> tuple:
        if self._interrupt is not None:
            raise Interrupted(self._interrupt)
        if self._proc is None or self._proc.poll() is not None:
            self.restarts += self.device is not None
            self.start()
        proc, conn = self._proc, self._conn
        assert proc is not None and conn is not None
        try:
            conn.send(request)
            reply = self._receive(proc, conn, deadline_s, self.config.memory_bytes)
        except (OverLimit, MeasurementFailed, Interrupted):
            self.kill()
            raise
        except OSError as e:  # the socket broke under us: the child is gone
            self.kill()
            raise MeasurementFailed(f"the measurement worker died: {e}") from None
        if reply[0] == "ok":
            return reply[1], reply[2]
        _, kind, message = reply
        if kind == "memory":
            self.kill()  # an allocation failed at the limit: start clean
            raise OverLimit(message)
        if kind == "limit":  # refused by a static check, before anything was allocated
            raise OverLimit(message)
        if kind == "invalid":
            raise InvalidInput(message)
        if kind == "unsupported":
            raise UnsupportedModel(message)
        raise MeasurementFailed(message)

    def _receive(self, proc: subprocess.Popen, conn: Connection, deadline_s: float, memory_limit: int | None) -> tuple:
        """Wait for the child's answer, enforcing the deadline and the memory limit."""
        deadline = time.monotonic() + deadline_s
        while not conn.poll(POLL_S):
            if self._interrupt is not None:
                raise Interrupted(self._interrupt)
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise OverLimit(
                    f"the measurement did not finish within {deadline_s:g} s (HALP_POINT_DEADLINE_S); "
                    "the worker was killed"
                )
            if memory_limit and _rss_bytes(proc.pid) > memory_limit:
                raise OverLimit(
                    f"the measurement worker went over its memory limit of {memory_limit / 2**20:,.0f} MiB "
                    "(HALP_WORKER_MEMORY_MB); it was killed"
                )
        try:
            return conn.recv()
        except (EOFError, OSError):
            if self._interrupt is not None:
                raise Interrupted(self._interrupt) from None
            code = proc.wait()
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            raise MeasurementFailed(f"the measurement worker died ({how})") from None


# the child ----------------------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    """Exit when the service dies, even mid-measurement (a killed parent cannot kill us)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _limit_memory(limit: int) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


_OOM_MARKERS = ("bad_alloc", "failed to allocate", "out of memory", "cannot allocate memory")


def _is_memory_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MARKERS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def _serve(conn: Connection) -> None:
    config: WorkerConfig = conn.recv()
    from profiler_service.backends import create_backend

    try:
        backend = create_backend(
            config.backend, config.threads, Path(config.cache_dir), config.device_index, config.reference
        )
        if config.reference_ms is not None:
            backend.pin_reference(config.reference_ms)
        device = backend.device_json()  # the precision probe runs here, before any limit
    except BackendUnavailable as e:
        conn.send(("unavailable", str(e)))
        return
    if not backend.gpu:
        _limit_memory(config.memory_bytes)
    conn.send(("ready", device, backend.gpu))

    from profiler_service.model_check import ModelRejected, check_upload
    from profiler_service.shapes import parse_shape

    memory_note = (
        f"the measurement worker's memory limit of {config.memory_bytes / 2**20:,.0f} MiB (HALP_WORKER_MEMORY_MB)"
    )
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        try:
            if request[0] == "layer":
                _, key, cin, cout = request
                reply = ("ok", backend.time_layer(parse_shape(key), cin, cout, config.policy), None)
            elif request[0] == "pin":
                backend.pin_reference(request[1])
                reply = ("ok", backend.device_json(), None)
            else:
                _, path, declared = request
                data = Path(path).read_bytes()
                shapes = check_upload(data, declared, config.memory_bytes)
                reply = ("ok", backend.time_model(data, shapes, config.policy), shapes)
        except ModelRejected as e:
            reply = ("error", e.kind, str(e))
        except Exception as e:  # noqa: BLE001 - every failure is an answer; the supervisor decides
            if _is_memory_error(e):
                reply = ("error", "memory", f"the measurement ran out of memory at {memory_note}")
            elif isinstance(e, UnsupportedModel) or request[0] == "model":
                reply = ("error", "unsupported", f"the model cannot run as given: {_first_line(e)}")
            else:
                reply = ("error", "failed", _first_line(e))
        conn.send(reply)


def main() -> None:
    # Ctrl-C, or a supervisor's SIGTERM to the whole group, reaches us too: the service decides (a job
    # whose point died under it first would be failed for good, not resumed), and we follow it out
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    logging.basicConfig(level=logging.WARNING)
    conn = Connection(int(sys.argv[1]))
    try:
        _serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
