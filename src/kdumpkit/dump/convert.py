"""Write any readable dump in any writable format (``kdumpkit convert``).

Outputs are written under ``OUT.part`` and renamed when complete, so a
failed conversion never leaves something that looks like a finished dump.  A
source that is itself incomplete yields an output flagged incomplete (the
kdump INCOMPLETE status bit, the ELF ``e_flags`` bit): pages it lacks are never
passed off as merely excluded.
"""

from __future__ import annotations

import os
import sys
from typing import Any, BinaryIO

from kdumpkit.dump.base import Dump
from kdumpkit.dump.sink import FileSink, Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import OutputError, UsageError

WRITE_FORMATS = ["elf", "kdump", "flat", "raw", "lime", "lkcd"]


def header_utsname(source: Dump) -> dict[str, str] | None:
    """The uname a kdump header carries, as makedumpfile writes it: the source's own, else ``init_uts_ns``.

    libkdumpfile (drgn, crash's diskdump reader less so) takes the architecture
    from it: a header without ``machine`` is unreadable there.
    """
    from kdumpkit.kernel.utsname import read_utsname

    uts = getattr(source, "utsname", None)
    got = uts() if callable(uts) else read_utsname(source)
    return dict(got) if got else None


def write_to_sink(source: Dump, sink: Sink, fmt: str, *, path: str = "", codec: str | None = "zlib",
                  exclude_zero: bool = False, dump_level: int = 0, elf_class: int = 64,
                  progress: Progress | None = None, workers: int = 1, force: bool = False) -> WriteStats:
    """Dispatch to the writer of ``fmt`` (``flat`` = kdump-compressed in a flattened stream)."""
    from kdumpkit.dump.missing import check_recordable

    check_recordable(source, fmt)  # missing pages are recorded as missing, or nothing is written
    if fmt == "elf":
        from kdumpkit.dump.elf import write_elf

        return write_elf(source, sink, elf_class=elf_class, exclude_zero=exclude_zero, progress=progress)
    if fmt in ("kdump", "flat"):
        from kdumpkit.dump.kdump import write_kdump

        stats: WriteStats = write_kdump(source, sink, codec=codec, exclude_zero=exclude_zero, dump_level=dump_level,
                                        utsname=header_utsname(source), progress=progress, workers=workers)
        return stats
    if fmt == "lime":
        from kdumpkit.dump.lime import write_lime

        return write_lime(source, sink, progress=progress)
    if fmt == "raw":
        from kdumpkit.dump.raw import write_raw

        return write_raw(source, sink, path, force=force, progress=progress)
    if fmt == "lkcd":
        from kdumpkit.dump.lkcd import write_lkcd

        return write_lkcd(source, sink, exclude_zero=exclude_zero, utsname=header_utsname(source), progress=progress)
    raise UsageError(f"cannot write format {fmt!r} (writable: {', '.join(WRITE_FORMATS)})")


def convert(source: Dump, out: str, fmt: str, *, force: bool = False, **kw: Any) -> WriteStats:
    """Convert ``source`` into ``out`` (``-`` = stdout, flattened formats only)."""
    if fmt not in WRITE_FORMATS:
        raise UsageError(f"cannot write format {fmt!r} (writable: {', '.join(WRITE_FORMATS)})")
    if out == "-":
        if fmt != "flat":
            raise UsageError("only --format flat can be written to standard output")
        from kdumpkit.dump.flattened import FlattenedSink

        stream: BinaryIO = sys.stdout.buffer
        with FlattenedSink(stream) as fsink:
            return write_to_sink(source, fsink, fmt, **kw)
    if os.path.exists(out) and not force:
        raise OutputError(f"{out} exists (will not overwrite; use --force)")
    part = out + ".part"
    sink: Sink
    if fmt == "flat":
        from kdumpkit.dump.flattened import FlattenedSink

        fd = FileSink(part, overwrite=True).fd
        sink = FlattenedSink(os.fdopen(fd, "wb"))
    else:
        sink = FileSink(part, overwrite=True)
    try:
        stats = write_to_sink(source, sink, fmt, path=out, force=force, **kw)
        sink.close()
    except BaseException:
        sink.abort()
        if os.path.exists(part):
            os.unlink(part)
        raise
    os.replace(part, out)
    return stats
