"""The one capture pipeline: source → filter → writer → output, with fallbacks.

``kdumpkit save`` (the makedumpfile drop-in) and ``kdumpkit capture`` (the
capture kernel's whole job) both end here, whatever the format or target:

* an output is first written under a name that says it is unfinished
  (``DUMPFILE.incomplete``) and renamed only when complete; the kdump and ELF
  writers also write their headers with the INCOMPLETE flag first, so a
  process killed midway leaves a file our reader (and crash) opens as an
  incomplete dump;
* ENOSPC (or EDQUOT, or EFBIG under ``ulimit -f``) deletes the partial
  output and retries at the next dump level of the fallback list
  (``-d 11,31``); when every level fails the caller gets
  :class:`NoSpaceError` — never a silently truncated file;
* a page filter that cannot run (implausible VMCOREINFO, or any bug: the
  filter must never cost the dump) moves on to the next level too; with
  ``SaveOptions.unfiltered_fallback`` (``kdumpkit capture``) an unfiltered
  copy (level 0) follows when no level could be filtered.  Every level left
  behind is explained in ``SaveResult.fallbacks`` (the manifest's problems);
* pages the source cannot read (EIO from ``/proc/vmcore``) become MISSING in
  the output, which is then flagged incomplete (:mod:`.tolerant`).
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from kdumpkit.capture.dmesg import fsync_dir
from kdumpkit.capture.tolerant import TolerantDump
from kdumpkit.dump.base import Buffer, Dump, merge_runs
from kdumpkit.dump.sink import NO_SPACE_ERRNOS, FileSink, Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import (
    DumpError,
    KdumpkitError,
    KernelError,
    NoSpaceError,
    OutputError,
    UnsupportedError,
    UsageError,
)

INCOMPLETE_SUFFIX = ".incomplete"
FORMATS = ("kdump", "elf", "flat")
Log = Callable[[str], None]
logger = logging.getLogger("kdumpkit")


@dataclass(frozen=True)
class SaveOptions:
    """How to write: ``fmt`` kdump | elf | flat; ``dump_levels`` tried in order on ENOSPC or a failed filter.

    ``unfiltered_fallback``: when no level's page filter could run, write an
    unfiltered copy (level 0) — the capture kernel must save something,
    while ``kdumpkit save -d 31`` reports the bad fact like makedumpfile.
    """

    fmt: str = "kdump"
    codec: str | None = "zlib"
    dump_levels: tuple[int, ...] = (31,)
    workers: int = 1
    elf_class: int = 64
    selfcheck: bool = True
    unfiltered_fallback: bool = False

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
    fallbacks: list[str] = field(default_factory=list)
    """Why each level before ``dump_level`` was left (out of space, filter failed)."""
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
            if e.errno in NO_SPACE_ERRNOS:
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
        source.dumped_runs()  # a source without a page map fails here, before an output exists
        return source, bool(level & 1), {}, None
    try:
        from kdumpkit.capture.filter import filtered  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise UnsupportedError(f"dump level {level} needs page filtering, which this build lacks; "
                               f"use -d 1 or -d 0") from None
    layer = filtered(source, level, selfcheck=selfcheck)
    layer.dumped_runs()  # derived lazily: let a failure show here, where it falls back, not in the writer
    counts = dict(getattr(layer, "counts", {}) or {})
    return layer, bool(getattr(layer, "exclude_zero", level & 1)), counts, getattr(layer, "selfcheck_result", None)


@dataclass
class Attempt:
    """One dump level about to be written: the filtered layer and what the filter found."""

    level: int
    layer: Dump
    exclude_zero: bool
    counts: dict[str, int]
    selfcheck: Any
    t0: float


class LevelChain:
    """The dump levels one save tries, in order, and why each one left behind was left.

    Iterating yields an :class:`Attempt` per level whose filter ran; a
    filter that raised — :class:`~kdumpkit.errors.BadDumpError` for an
    implausible VMCOREINFO fact, or anything unexpected — is recorded and
    skipped.  The caller reports ENOSPC with :meth:`no_space` and, when the
    loop ends without a result, calls :meth:`give_up`.
    """

    def __init__(self, source: Dump, opts: SaveOptions, say: Log, fallbacks: list[str] | None = None) -> None:
        self.source = source
        self.opts = opts
        self.say = say
        self.levels = list(opts.dump_levels)  # grows by the unfiltered copy when every filter failed
        self.tried: list[int] = []
        self.fallbacks: list[str] = fallbacks if fallbacks is not None else []
        self.wrote = False  # an attempt reached the writer: an unfiltered copy would only be bigger
        self.filter_error: Exception | None = None
        self.space_error: NoSpaceError | None = None
        self.last_was_space = False

    def __iter__(self) -> Iterator[Attempt]:
        for level in self.levels:  # the list may grow while iterating: that is the unfiltered copy
            self.tried.append(level)
            t0 = time.monotonic()
            try:
                layer, exclude_zero, counts, check = filter_source(self.source, level, selfcheck=self.opts.selfcheck)
            except Exception as e:  # a filter bug must cost the level, never the dump
                self.filter_error = e
                self.last_was_space = False
                if self.opts.unfiltered_fallback and not self.wrote and self._last() and 0 not in self.levels:
                    self.levels.append(0)
                self._left(level, f"{_stage(level)} failed: {describe_failure(e)}")
                continue
            self.wrote = True
            yield Attempt(level, layer, exclude_zero, counts, check, t0)

    def no_space(self, level: int, e: NoSpaceError) -> None:
        self.space_error = e
        self.last_was_space = True
        self._left(level, f"{e}: partial output removed")

    def _last(self) -> bool:
        return len(self.tried) >= len(self.levels)

    def _left(self, level: int, why: str) -> None:
        self.fallbacks.append(f"dump level {level}: {why}")
        if not self._last():  # a last failure is not announced: it is the error give_up() raises
            self.say(f"dump level {level}: {why}; trying dump level {self.levels[len(self.tried)]}")

    def give_up(self, what: str) -> NoReturn:
        """Every level failed: ENOSPC wins (the output is the problem), else the last filter error.

        The last level's reason leaves ``fallbacks`` when the raised error
        says the same thing, so a manifest lists each reason once.
        """
        if self.space_error is None or self.last_was_space:
            self.fallbacks.pop()
        if self.space_error is not None:
            raise NoSpaceError(f"{what} (dump levels tried: {', '.join(map(str, self.tried))})")
        e = self.filter_error
        if isinstance(e, KdumpkitError):
            raise e
        level = self.tried[-1]
        raise KernelError(f"{_stage(level)} failed at dump level {level}: {describe_failure(e)}") from e


def _stage(level: int) -> str:
    """What runs before the writer: the page filter, or (levels 0/1) only the source's own page map."""
    return "page filter" if level & ~1 else "reading the source"


def describe_failure(e: BaseException | None) -> str:
    """One line for an error; unexpected exceptions keep their type (and their traceback goes to the log)."""
    if isinstance(e, KdumpkitError):
        return str(e)
    logger.debug("unexpected %s", type(e).__name__, exc_info=e)
    return f"{type(e).__name__}: {e}" if e is not None else "unknown error"


def nothing_read(tol: TolerantDump, layer: Dump) -> str | None:
    """Why the output is no dump when not one of its pages could be read (else None).

    A file of nothing but MISSING pages would be kept as an "incomplete"
    vmcore; the kernel log saved before it is then all there is, and the
    capture says so (dmesg-only) instead.
    """
    if not tol.missing:
        return None
    total = sum(e - s for s, e in layer.dumped_runs())
    if total and len(set(tol.missing)) >= total:
        first = f"; first: {tol.errors[0]}" if tol.errors else ""
        return f"no page of {layer.path} could be read ({total} pages{first})"
    return None


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
              progress: Progress | None = None, log: Log | None = None,
              fallbacks: list[str] | None = None) -> SaveResult:
    """Write ``source`` through the pipeline, falling back level by level on ENOSPC or a failed filter.

    ``open_output`` is called once per attempt (a file, a raw device region,
    an ssh stream); an attempt that ran out of space is discarded before the
    next one starts.  Raises :class:`NoSpaceError` when no level fits, the
    filter's error when no level could be filtered, :class:`DumpError` when
    no page could be read.  ``fallbacks`` (also ``SaveResult.fallbacks``)
    gets why each level was left, even when the save fails in the end.
    """
    chain = LevelChain(source, opts, log or (lambda msg: None), fallbacks)
    last = ""
    for at in chain:
        tol = TolerantDump(at.layer)
        out = open_output()
        rec = HeaderRecordingSink(out.sink)
        try:
            stats = _write(tol, rec, opts, at.level, at.exclude_zero, progress)
            unread = nothing_read(tol, at.layer)
            incomplete = tol.incomplete
            if incomplete and unread is None:
                mark_incomplete(rec, at.layer, opts.fmt, tol.missing)
            if unread is None:
                out.commit()
        except NoSpaceError as e:
            out.discard()
            last = e.args[0] if e.args else ""
            chain.no_space(at.level, e)
            continue
        except BaseException:
            out.keep_partial()
            raise
        if unread is not None:
            out.discard()  # every level reads the same pages: no retry, no file of holes
            raise DumpError(unread)
        if tol.missing:
            chain.say(f"warning: {len(tol.missing)} page(s) could not be read; they are marked missing")
        return SaveResult(format=opts.fmt, dump_level=at.level, codec=opts.codec if opts.fmt != "elf" else None,
                          stats=stats, incomplete=incomplete, missing_pfns=list(tol.missing),
                          read_errors=list(tol.errors), levels_tried=chain.tried, fallbacks=chain.fallbacks,
                          page_counts=at.counts, selfcheck=at.selfcheck, seconds=time.monotonic() - at.t0,
                          path=getattr(out, "path", ""))
    chain.give_up(last)


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

    chain = LevelChain(source, opts, log or (lambda msg: None))
    for at in chain:
        tol = TolerantDump(at.layer)
        outs = [FileOutput(p, force=force) for p in paths]
        recs = [HeaderRecordingSink(o.sink) for o in outs]
        try:
            pieces = write_kdump_split(tol, recs, codec=opts.codec, exclude_zero=at.exclude_zero, dump_level=at.level,
                                       progress=progress, workers=opts.workers, utsname=header_utsname(at.layer))
            if tol.incomplete:
                for r in recs:
                    mark_incomplete(r, at.layer, "kdump", [])
            for o in outs:
                o.commit()
        except NoSpaceError as e:
            for o in outs:
                o.discard()
            chain.no_space(at.level, e)
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
        return SaveResult(format="kdump", dump_level=at.level, codec=opts.codec, stats=total,
                          incomplete=tol.incomplete, missing_pfns=list(tol.missing), read_errors=list(tol.errors),
                          levels_tried=chain.tried, fallbacks=chain.fallbacks, page_counts=at.counts,
                          selfcheck=at.selfcheck, seconds=time.monotonic() - at.t0, path=paths[0])
    chain.give_up(f"{paths[0]} …")
