"""Progress output when the console is not a terminal (a log file, CI): lines, not silence."""

from __future__ import annotations

import io

from rich.console import Console

from pruning_client.ui import RichUI


def test_progress_becomes_throttled_lines_in_a_log():
    out = io.StringIO()
    with RichUI(Console(file=out, force_terminal=False, width=200)) as ui:
        ui.stage("starting")
        for i in range(100):
            ui.bar("train", "training", i, 100)  # one line at the start, then nothing for LOG_EVERY_S
        ui.bar("train", "training", 100, 100)  # and one at the end
        ui.done("train")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith("starting") and lines[1].endswith("training: 0/100 (0 %)")
    assert lines[2].endswith("training: 100/100 (100 %)")
