"""Terminal progress for long runs: one rich progress display, a bar per task, stage lines above it."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


class RichUI:
    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichUI:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage(self, text: str) -> None:
        self.progress.console.print(text)

    def bar(self, key: str, description: str, done: float, total: float | None) -> None:
        if key not in self._tasks:
            self._tasks[key] = self.progress.add_task(description, total=total)
        self.progress.update(self._tasks[key], description=description, completed=done, total=total)

    def done(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            self.progress.remove_task(task)
