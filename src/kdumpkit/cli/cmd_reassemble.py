"""``kdumpkit reassemble IN OUT``: a flattened stream to a regular file (``makedumpfile -R``).

Every kdumpkit reader already reads flattened files in place; reassembling
is for peers that do not (older crash, libkdumpfile users) and for exact
"later record wins" semantics.  ``IN`` may be ``-`` (stdin), so
``ssh host kdumpkit convert … --format flat - | kdumpkit reassemble - vmcore``
works.  Progress is a rich bar when stderr is a terminal, silence otherwise.
A stream cut short (no end marker) leaves OUT flagged incomplete and exits 3,
or, when the dump in it cannot carry that flag, leaves no OUT and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kdumpkit.dump.flattened import reassemble


def register(sub: Any) -> None:
    p = sub.add_parser("reassemble", help="turn a makedumpfile flattened stream (-F) into a regular dump file")
    p.add_argument("input", metavar="IN", help="flattened stream (- for stdin)")
    p.add_argument("output", metavar="OUT", help="dump file to create")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(func=run)


@contextmanager
def _bar(show: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not show:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("reassemble", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


def run(args: argparse.Namespace) -> int:
    with _bar(sys.stderr.isatty()) as progress:
        size = reassemble(args.input, args.output, overwrite=args.force, progress=progress)
    print(f"{args.output}: {size} bytes", file=sys.stderr)
    return 0
