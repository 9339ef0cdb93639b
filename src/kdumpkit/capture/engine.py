"""The one capture pipeline: source → filter → writer → output, with fallbacks.

``kdumpkit save`` (the makedumpfile drop-in) and ``kdumpkit capture`` (the
capture kernel's whole job) both end here, whatever the format or target:

* an output is first written under a name that says it is unfinished
  (``DUMPFILE.incomplete``) and renamed only when complete; the kdump and ELF
  writers also write their headers with the INCOMPLETE flag first, so a
  process killed midway leaves a file our reader (and crash) opens as an
  incomplete dump;
* ENOSPC deletes the partial output and retries at the next dump level of
  the fallback list (``-d 11,31``); when every level fails the caller gets
  :class:`NoSpaceError` — never a silently truncated file;
* pages the source cannot read (EIO from ``/proc/vmcore``) become MISSING in
  the output, which is then flagged incomplete (:mod:`.tolerant`).
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from kdumpkit.capture.dmesg import fsync_dir
from kdumpkit.capture.tolerant import TolerantDump
from kdumpkit.dump.base import Buffer, Dump, merge_runs
from kdumpkit.dump.sink import FileSink, Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import NoSpaceError, OutputError, UnsupportedError, UsageError

INCOMPLETE_SUFFIX = ".incomplete"
FORMATS = ("kdump", "elf", "flat")
Log = Callable[[str], None]


@dataclass(frozen=True)
class SaveOptions:
    """How to write: ``fmt`` kdump | elf | flat; ``dump_levels`` tried in order on ENOSPC."""

    fmt: str = "kdump"
    codec: str | None = "zlib"
    dump_levels: tuple[int, ...] = (31,)
    workers: int = 1
    elf_class: int = 64
    selfcheck: bool = True

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise UsageError(f"cannot capture to format {self.fmt!r} ({', '.join(FORMATS)})")
        if not self.dump_levels or any(not 0 <= d <= 31 for d in self.dump_levels):
            raise UsageError(f"dump levels must be 0-31, got {list(self.dump_levels)}")


@dataclass
class SaveResult:
    """What one successful save did (for the manifest and the CLI)."""

    format: str
    dump_level: int
    codec: str | None
    stats: WriteStats
    incomplete: bool
    missing_pfns: list[int] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)
    levels_tried: list[int] = field(default_factory=list)
    page_counts: dict[str, int] = field(default_factory=dict)
    selfcheck: Any = None
    seconds: float = 0.0
    path: str = ""


class Output(ABC):
    """One attempt's destination: a sink, then either commit or discard."""

    sink: Sink

    @abstractmethod
    def commit(self) -> None:
        """Close the sink and make the output final (rename, end marker …)."""

    @abstractmethod
    def discard(self) -> None:
        """Remove what this attempt wrote (after ENOSPC): nothing half-written stays behind."""

    def keep_partial(self) -> None:
        """Stop after an error that is not ENOSPC: keep what was written, flagged incomplete."""
        try:
            self.sink.abort()
        except OutputError:
            pass


class FileOutput(Output):
    """``path`` written as ``path.incomplete`` and renamed when complete (flattened if ``flat``)."""

    def __init__(self, path: str, *, flat: bool = False, force: bool = False) -> None:
        if os.path.lexists(path) and not force:
            raise OutputError(f"{path} exists (will not overwrite a dump; use --force)")
        self.path = path
        self.part = path + INCOMPLETE_SUFFIX
        self._file = FileSink(self.part, overwrite=force)
        if flat:
            from kdumpkit.dump.flattened import FlattenedSink

            self.sink = FlattenedSink(self._file.fd)
        else:
            self.sink = self._file

    def commit(self) -> None:
        if self.sink is not self._file:
            self.sink.close()  # the end marker; the fd stays open
        try:
            os.fsync(self._file.fd)
        except OSError as e:
            self._file.close()
            if e.errno in (28, 122):
                raise NoSpaceError(f"{self.part} (fsync)") from None
            raise OutputError(f"fsync {self.part}: {e.strerror}") from None
        self._file.close()
        os.replace(self.part, self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def discard(self) -> None:
        if self.sink is not self._file:
            try:
                self.sink.abort()
            except OutputError:
                pass
        self._file.close()
        try:
            os.unlink(self.part)
        except FileNotFoundError:
            pass

    def keep_partial(self) -> None:
        if self.sink is not self._file:
            super().keep_partial()
        self._file.close()


class StreamOutput(Output):
    """A flattened stream onto an open binary stream (stdout): one attempt only."""

    def __init__(self, stream: IO[bytes] | int) -> None:
        from kdumpkit.dump.flattened import FlattenedSink

        self.sink = FlattenedSink(stream)

    def commit(self) -> None:
        self.sink.close()

    def discard(self) -> None:
        self.sink.abort()


class HeaderRecordingSink(Sink):
    """Forwards writes and remembers the latest bytes written at offset 0 (the header)."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.header = b""

    def pwrite(self, offset: int, data: Buffer) -> None:
        if offset == 0:
            self.header = bytes(data)
        self.inner.pwrite(offset, data)

    def copy_from(self, fd: int, src_offset: int, offset: int, length: int) -> bool:
        return offset != 0 and self.inner.copy_from(fd, src_offset, offset, length)

    def close(self) -> None:  # the Output closes the real sink
        pass

    def abort(self) -> None:
        pass


def filter_source(source: Dump, level: int, *, selfcheck: bool = True) -> tuple[Dump, bool, dict[str, int], Any]:
    """The source as seen through dump level ``level``: (layer, exclude_zero, counts, selfcheck).

    Level bit 1 (zero pages) is the writers' own business; bits 2/4/8/16 need
    the kernel's page metadata (:mod:`kdumpkit.capture.filter`).
    """
    if level & ~1 == 0:
        return source, bool(level & 1), {}, None
    try:
        from kdumpkit.capture.filter import filtered  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise UnsupportedError(f"dump level {level} needs page filtering, which this build lacks; "
                               f"use -d 1 or -d 0") from None
    layer = filtered(source, level, selfcheck=selfcheck)
    counts = dict(getattr(layer, "counts", {}) or {})
    return layer, bool(getattr(layer, "exclude_zero", level & 1)), counts, getattr(layer, "selfcheck_result", None)


def mark_incomplete(rec: HeaderRecordingSink, layer: Dump, fmt: str, missing: list[int]) -> None:
    """Flag a finished kdump output incomplete and turn unreadable pages into MISSING.

    The kdump writer clears INCOMPLETE after its last page whatever the
    source; a zero page descriptor under the INCOMPLETE flag is what readers
    (ours, crash, libkdumpfile) take as "this page was never written".  For
    ELF the writer already keeps ``e_flags`` set (the source says incomplete).
    """
    if fmt not in ("kdump", "flat") or not rec.header:
        return
    from kdumpkit.dump.codecs import FLAG_INCOMPLETE
    from kdumpkit.dump.kdump import PAGE_DESC, header_layout, plan_layout

    hs, _ = header_layout(layer.arch, layer.byteorder)
    header = hs.unpack(rec.header)
    rec.inner.pwrite(0, hs.pack(header, status=int(header["status"]) | FLAG_INCOMPLETE))
    if not missing:
        return
    dumped = merge_runs(layer.dumped_runs() + layer.missing_runs())  # the writer's 2nd bitmap
    layout = plan_layout(layer, dumped)
    empty = bytes(PAGE_DESC.size)
    for pfn in sorted(set(missing)):
        idx = _rank(dumped, pfn)
        if idx is not None:
            rec.inner.pwrite(layout.desc_off + idx * PAGE_DESC.size, empty)


def _rank(runs: list[tuple[int, int]], pfn: int) -> int | None:
    """Index of ``pfn`` among the pages of ``runs`` (its descriptor number)."""
    before = 0
    for s, e in runs:
        if s <= pfn < e:
            return before + pfn - s
        if pfn < s:
            return None
        before += e - s
    return None


def save_dump(source: Dump, open_output: Callable[[], Output], opts: SaveOptions, *,
              progress: Progress | None = None, log: Log | None = None) -> SaveResult:
    """Write ``source`` through the pipeline, falling back level by level on ENOSPC.

    ``open_output`` is called once per attempt (a file, a raw device region,
    an ssh stream); an attempt that ran out of space is discarded before the
    next one starts.  Raises :class:`NoSpaceError` when no level fits.
    """
    say = log or (lambda msg: None)
    tried: list[int] = []
    last: NoSpaceError | None = None
    for level in opts.dump_levels:
        tried.append(level)
        t0 = time.monotonic()
        layer, exclude_zero, counts, check = filter_source(source, level, selfcheck=opts.selfcheck)
        tol = TolerantDump(layer)
        out = open_output()
        rec = HeaderRecordingSink(out.sink)
        try:
            stats = _write(tol, rec, opts, level, exclude_zero, progress)
            incomplete = tol.incomplete
            if incomplete:
                mark_incomplete(rec, layer, opts.fmt, tol.missing)
            out.commit()
        except NoSpaceError as e:
            out.discard()
            last = e
            say(f"no space left at dump level {level}: partial output removed")
            continue
        except BaseException:
            out.keep_partial()
            raise
        if tol.missing:
            say(f"warning: {len(tol.missing)} page(s) could not be read; they are marked missing")
        return SaveResult(format=opts.fmt, dump_level=level, codec=opts.codec if opts.fmt != "elf" else None,
                          stats=stats, incomplete=incomplete, missing_pfns=list(tol.missing),
                          read_errors=list(tol.errors), levels_tried=tried, page_counts=counts, selfcheck=check,
                          seconds=time.monotonic() - t0, path=getattr(out, "path", ""))
    assert last is not None
    raise NoSpaceError(f"{last.args[0] if last.args else ''} (dump levels tried: "
                       f"{', '.join(map(str, tried))})")


def _write(source: Dump, sink: Sink, opts: SaveOptions, level: int, exclude_zero: bool,
           progress: Progress | None) -> WriteStats:
    from kdumpkit.dump.convert import write_to_sink

    fmt = "kdump" if opts.fmt == "flat" else opts.fmt
    if fmt == "elf" and level > 1 or exclude_zero and fmt == "elf":
        from kdumpkit.capture.elfgaps import ElfGapFill

        source, exclude_zero = ElfGapFill(source, exclude_zero=exclude_zero), False
    return write_to_sink(source, sink, fmt, codec=opts.codec, exclude_zero=exclude_zero, dump_level=level,
                         elf_class=opts.elf_class, progress=progress, workers=opts.workers)


def save_to_file(source: Dump, path: str, opts: SaveOptions, *, force: bool = False,
                 progress: Progress | None = None, log: Log | None = None) -> SaveResult:
    """``makedumpfile [opts] VMCORE DUMPFILE``: DUMPFILE via DUMPFILE.incomplete."""
    return save_dump(source, lambda: FileOutput(path, flat=opts.fmt == "flat", force=force), opts,
                     progress=progress, log=log)


def save_split(source: Dump, paths: list[str], opts: SaveOptions, *, force: bool = False,
               progress: Progress | None = None, log: Log | None = None) -> SaveResult:
    """``--split F1 F2 …``: kdump-compressed pieces, each via ``.incomplete``; ENOSPC falls back too."""
    if opts.fmt != "kdump":
        raise UsageError("--split writes kdump-compressed pieces only (not -E or -F)")
    if len(paths) < 2:
        raise UsageError("--split needs at least two output files")
    from kdumpkit.dump.convert import header_utsname
    from kdumpkit.dump.split import write_kdump_split

    say = log or (lambda msg: None)
    tried: list[int] = []
    for level in opts.dump_levels:
        tried.append(level)
        t0 = time.monotonic()
        layer, exclude_zero, counts, check = filter_source(source, level, selfcheck=opts.selfcheck)
        tol = TolerantDump(layer)
        outs = [FileOutput(p, force=force) for p in paths]
        recs = [HeaderRecordingSink(o.sink) for o in outs]
        try:
            pieces = write_kdump_split(tol, recs, codec=opts.codec, exclude_zero=exclude_zero, dump_level=level,
                                       progress=progress, workers=opts.workers, utsname=header_utsname(layer))
            if tol.incomplete:
                for r in recs:
                    mark_incomplete(r, layer, "kdump", [])
            for o in outs:
                o.commit()
        except NoSpaceError:
            for o in outs:
                o.discard()
            say(f"no space left at dump level {level}: partial outputs removed")
            continue
        except BaseException:
            for o in outs:
                o.keep_partial()
            raise
        total = WriteStats("kdump", compression=opts.codec or "none")
        for s in pieces:
            total.pages_written += s.pages_written
            total.zero_pages += s.zero_pages
            total.bytes_written += s.bytes_written
        total.excluded_pages = pieces[0].excluded_pages if pieces else 0
        total.extra = {"pieces": len(pieces)}
        return SaveResult(format="kdump", dump_level=level, codec=opts.codec, stats=total, incomplete=tol.incomplete,
                          missing_pfns=list(tol.missing), read_errors=list(tol.errors), levels_tried=tried,
                          page_counts=counts, selfcheck=check, seconds=time.monotonic() - t0, path=paths[0])
    raise NoSpaceError(f"{paths[0]} … (dump levels tried: {', '.join(map(str, tried))})")
