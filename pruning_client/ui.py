"""Progress for long runs: rich bars on a terminal, timestamped progress lines in a log.

``halp demo > log 2>&1`` must not sit silent for minutes: when the console is not
a terminal, each bar becomes a line at its start, at most every ``LOG_EVERY_S``
seconds while it moves, and at its end.
"""

from __future__ import annotations

import time
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


class UI(Protocol):
    """What a run reports while it works."""

    def stage(self, text: str) -> None: ...

    def bar(self, key: str, description: str, done: float, total: float | None) -> None: ...

    def done(self, key: str) -> None: ...


class SilentUI:
    def stage(self, text: str) -> None:
        pass

    def bar(self, key: str, description: str, done: float, total: float | None) -> None:
        pass

    def done(self, key: str) -> None:
        pass


class RichUI:
    LOG_EVERY_S = 10.0

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self._tasks: dict[str, TaskID] = {}
        self._logged: dict[str, float] = {}  # key -> when its last progress line was written

    def __enter__(self) -> RichUI:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage(self, text: str) -> None:
        self.console.print(text if self.live else f"{time.strftime('%H:%M:%S')} {text}")

    def bar(self, key: str, description: str, done: float, total: float | None) -> None:
        if self.live:
            if key not in self._tasks:
                self._tasks[key] = self.progress.add_task(description, total=total)
            self.progress.update(self._tasks[key], description=description, completed=done, total=total)
            return
        now = time.monotonic()
        finished = total is not None and done >= total
        if finished or now - self._logged.get(key, -float("inf")) >= self.LOG_EVERY_S:
            self._logged[key] = now
            share = f" ({100 * done / total:.0f} %)" if total else ""
            self.stage(f"{description}: {done:g}/{total:g}{share}" if total else f"{description}: {done:g}")

    def done(self, key: str) -> None:
        self._logged.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            self.progress.remove_task(task)
