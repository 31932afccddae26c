"""Bounds on the time and memory the dependency-graph analysis may take, as a whole and per group search.

Torch-Pruning's group search can explode on window attention (7-10 GiB and many minutes were seen on
Swin and MaxViT); a run must not swap the machine to death. Each root's group search has a bound of
its own: past it, that root keeps its channels and the analysis goes on without it; past the bound
of the whole analysis, the run stops and says so. The bounds are checked by a periodic timer signal
that raises inside the analysis, so they only apply on the main thread of a POSIX process; elsewhere
the analysis runs unbounded.
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
    search_seconds: float = 20.0  # one root's group search: a normal one takes well under a second
    search_memory_mb: float = 1024.0

    @classmethod
    def from_env(cls) -> AnalysisLimits:
        """``HALP_ANALYSIS_TIMEOUT_S`` and ``HALP_ANALYSIS_MEMORY_MB`` (growth over the start), and the same per
        group search (``HALP_ANALYSIS_SEARCH_TIMEOUT_S``, ``HALP_ANALYSIS_SEARCH_MEMORY_MB``), else defaults."""
        names = ("TIMEOUT_S", "MEMORY_MB", "SEARCH_TIMEOUT_S", "SEARCH_MEMORY_MB")
        defaults = (cls.seconds, cls.extra_memory_mb, cls.search_seconds, cls.search_memory_mb)
        try:
            return cls(*(float(os.environ.get(f"HALP_ANALYSIS_{n}", d)) for n, d in zip(names, defaults, strict=True)))
        except ValueError:
            raise ValueError(f"HALP_ANALYSIS_{{{','.join(names)}}} must be numbers") from None


class AnalysisTooLarge(BaseException):
    """The analysis went past a bound; the message names it and its setting.

    A ``BaseException``, like ``KeyboardInterrupt``: the library code it interrupts may catch
    ``Exception`` and must not swallow it.
    """


class SearchTooLarge(AnalysisTooLarge):
    """One group search went past its own bound; the analysis goes on without that root."""


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best this process can say
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Guard:
    """What stopped the analysis (``tripped``) or its current group search (``search_tripped``), once it did."""

    tripped: str | None = None
    search_tripped: str | None = None
    _search: tuple[float, float] | None = None  # the current search's start and memory then

    @contextmanager
    def search(self) -> Iterator[None]:
        """Bound the block as one group search: past the search bounds, ``SearchTooLarge`` is raised in it."""
        self.search_tripped, self._search = None, (time.monotonic(), _rss_mb())
        try:
            yield
        finally:
            self._search = None

    def check(self, start: float, base: float, limits: AnalysisLimits) -> None:
        if time.monotonic() - start > limits.seconds:
            self.tripped = f"it took over {limits.seconds:g} s (HALP_ANALYSIS_TIMEOUT_S)"
        elif _rss_mb() - base > limits.extra_memory_mb:
            self.tripped = f"it grew by over {limits.extra_memory_mb:g} MiB (HALP_ANALYSIS_MEMORY_MB)"
        if self.tripped:
            raise AnalysisTooLarge(self.tripped)
        if self._search is None:
            return
        search_start, search_base = self._search
        if time.monotonic() - search_start > limits.search_seconds:
            self.search_tripped = (
                f"its group search took over {limits.search_seconds:g} s (HALP_ANALYSIS_SEARCH_TIMEOUT_S)"
            )
        elif _rss_mb() - search_base > limits.search_memory_mb:
            self.search_tripped = (
                f"its group search grew by over {limits.search_memory_mb:g} MiB (HALP_ANALYSIS_SEARCH_MEMORY_MB)"
            )
        if self.search_tripped:
            self._search = None  # raised once; the caller moves on
            raise SearchTooLarge(self.search_tripped)


@contextmanager
def bounded(limits: AnalysisLimits, guard: Guard) -> Iterator[None]:
    """Raise ``AnalysisTooLarge`` inside the block once it runs longer or grows more than ``limits``
    (and ``SearchTooLarge`` inside a ``guard.search()`` past the search bounds).

    Raised from a signal handler, the exception can surface as another one when it lands inside a
    torch call (a conv's argument parser reports it as a TypeError): ``guard.tripped`` and
    ``guard.search_tripped`` say what really stopped the block.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return
    start, base = time.monotonic(), _rss_mb()
    previous = signal.signal(signal.SIGALRM, lambda _signum, _frame: guard.check(start, base, limits))
    signal.setitimer(signal.ITIMER_REAL, CHECK_EVERY_S, CHECK_EVERY_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
