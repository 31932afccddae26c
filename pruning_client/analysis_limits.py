"""Bounds on the time and memory the dependency-graph analysis may take.

Torch-Pruning's group search can explode on window attention (7-10 GiB and many minutes were seen on
Swin and MaxViT); a run must say so and stop, not swap the machine to death. The bounds are checked
by a periodic timer signal that raises inside the analysis, so they only apply on the main thread of
a POSIX process; elsewhere the analysis runs unbounded.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

CHECK_EVERY_S = 0.25


@dataclass(frozen=True)
class AnalysisLimits:
    seconds: float = 600.0
    extra_memory_mb: float = 4096.0

    @classmethod
    def from_env(cls) -> AnalysisLimits:
        """``HALP_ANALYSIS_TIMEOUT_S`` and ``HALP_ANALYSIS_MEMORY_MB`` (growth over the start), else defaults."""
        try:
            return cls(
                float(os.environ.get("HALP_ANALYSIS_TIMEOUT_S", cls.seconds)),
                float(os.environ.get("HALP_ANALYSIS_MEMORY_MB", cls.extra_memory_mb)),
            )
        except ValueError:
            raise ValueError("HALP_ANALYSIS_TIMEOUT_S and HALP_ANALYSIS_MEMORY_MB must be numbers") from None


class AnalysisTooLarge(BaseException):
    """The analysis went past a bound; the message names it and its setting.

    A ``BaseException``, like ``KeyboardInterrupt``: the library code it interrupts may catch
    ``Exception`` and must not swallow it.
    """


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best this process can say
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Guard:
    tripped: str | None = None  # the bound that was passed, once it was


@contextmanager
def bounded(limits: AnalysisLimits, guard: Guard) -> Iterator[None]:
    """Raise ``AnalysisTooLarge`` inside the block once it runs longer or grows more than ``limits``.

    Raised from a signal handler, the exception can surface as another one when it lands inside a
    torch call (a conv's argument parser reports it as a TypeError): ``guard.tripped`` says what
    really stopped the block.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return
    start, base = time.monotonic(), _rss_mb()

    def check(_signum: int, _frame: object) -> None:
        if time.monotonic() - start > limits.seconds:
            guard.tripped = f"it took over {limits.seconds:g} s (HALP_ANALYSIS_TIMEOUT_S)"
        elif _rss_mb() - base > limits.extra_memory_mb:
            guard.tripped = f"it grew by over {limits.extra_memory_mb:g} MiB (HALP_ANALYSIS_MEMORY_MB)"
        if guard.tripped:
            raise AnalysisTooLarge(guard.tripped)

    previous = signal.signal(signal.SIGALRM, check)
    signal.setitimer(signal.ITIMER_REAL, CHECK_EVERY_S, CHECK_EVERY_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
