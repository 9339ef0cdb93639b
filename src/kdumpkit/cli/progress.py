"""Progress for long work: a bar on a TTY, plain lines on a serial console, JSON events for scripts.

A serial console gets one line per 10% (no ``\\r`` spam, which line-buffered
consoles turn into thousands of lines); ``--json`` gets one JSON object per
line on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kdumpkit.dump.writer import Progress


@contextmanager
def progress_reporter(what: str, *, json_events: bool = False, quiet: bool = False) -> Iterator[Progress]:
    """Yield a ``progress(done, total)`` callback suited to where stderr goes."""
    if quiet:
        yield lambda done, total: None
        return
    if json_events:
        last = [0.0]

        def emit(done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] >= 0.5:
                last[0] = now
                print(json.dumps({"event": "progress", "what": what, "done": done, "total": total}), file=sys.stderr,
                      flush=True)

        yield emit
        return
    try:  # a capture initramfs ships no rich: its console gets the plain lines
        from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress
    except ImportError:
        RichProgress = None  # type: ignore[assignment,misc]  # noqa: N806
    if sys.stderr.isatty() and RichProgress is not None:
        with RichProgress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task(what, total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update
        return
    step = [-1]

    def line(done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        if pct // 10 != step[0]:
            step[0] = pct // 10
            print(f"{what}: {pct}% ({done}/{total} pages)", file=sys.stderr, flush=True)

    yield line


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
