"""The one physical-memory API every dump reader offers.

A dump is a layer over a file (volatility3's idea): whatever the format, it
answers "what is page N" and "what does the dump say about itself".  Page
states keep apart what kdump users must never confuse:

* ``DUMPED``   the page's bytes are in the dump;
* ``EXCLUDED`` the page was RAM but a filter dropped it (dump level, or an
  ELF segment whose ``p_filesz < p_memsz``);
* ``NOT_RAM``  no RAM there (a hole in the memory map);
* ``MISSING``  the page should be there but the dump is incomplete.

Readers implement a few primitives (``ram_runs``, ``dumped_runs``,
``page_state``, ``_read_dumped``); reading addresses, iterating and the
notes helpers are shared here.  ``missing_runs`` has a default that asks
``page_state``; readers that know their missing pages cheaply override it.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kdumpkit.errors import PageExcludedError, PageMissingError, PageNotInRAMError

Buffer = bytes | bytearray | memoryview

NT_PRSTATUS = 1
NT_PRPSINFO = 3
NT_TASKSTRUCT = 4
NT_VMCOREDD = 0x700


class PageState(enum.Enum):
    DUMPED = "dumped"
    EXCLUDED = "excluded"
    NOT_RAM = "not_ram"
    MISSING = "missing"


@dataclass(frozen=True)
class Note:
    """One ELF note: name without the NUL, type, and descriptor bytes."""

    name: str
    type: int
    desc: bytes


@dataclass
class DumpInfo:
    """What a dump says about itself, beyond pages and notes (for ``info``)."""

    format: str
    details: dict[str, Any] = field(default_factory=dict)


def merge_runs(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge half-open ``[start, end)`` runs (overlapping or adjacent)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in runs if r[1] > r[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def runs_count(runs: Iterable[tuple[int, int]]) -> int:
    return sum(e - s for s, e in runs)


def subtract_runs(runs: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted merged ``runs`` minus sorted merged ``minus`` (linear merge)."""
    out: list[tuple[int, int]] = []
    j = 0
    for s, e in runs:
        cur = s
        while j < len(minus) and minus[j][1] <= cur:
            j += 1
        k = j
        while k < len(minus) and minus[k][0] < e:
            ms, me = minus[k]
            if ms > cur:
                out.append((cur, ms))
            cur = max(cur, me)
            k += 1
        if cur < e:
            out.append((cur, e))
    return out


class Dump(ABC):
    """A crash dump seen as physical memory plus notes.

    Attributes every reader sets: ``path``, ``page_size``, ``arch``
    (``uname -m`` spelling, e.g. ``x86_64``), ``byteorder`` (``"little"`` or
    ``"big"``), ``max_pfn`` (one past the highest page the dump covers) and
    ``incomplete`` (the writer stopped early: some pages are MISSING).
    """

    format_name: ClassVar[str] = "?"

    path: str
    page_size: int
    arch: str
    byteorder: str
    max_pfn: int
    incomplete: bool = False

    # -- primitives a reader provides ---------------------------------------
    @abstractmethod
    def ram_runs(self) -> list[tuple[int, int]]:
        """Sorted, merged ``[start_pfn, end_pfn)`` runs of pages that are RAM."""

    @abstractmethod
    def dumped_runs(self) -> list[tuple[int, int]]:
        """Sorted, merged runs of pages whose bytes the dump holds."""

    @abstractmethod
    def page_state(self, pfn: int) -> PageState:
        """The state of one page."""

    def missing_runs(self) -> list[tuple[int, int]]:
        """Sorted, merged runs of MISSING pages: RAM the dump should hold but does not.

        The default asks :meth:`page_state` about every RAM page the dump does
        not hold, and only when the dump is flagged incomplete (a complete
        dump has none), so it costs nothing on the common case.  Readers that
        know their missing pages from their own structures override it.
        """
        if not self.incomplete:
            return []
        out: list[tuple[int, int]] = []
        for s, e in subtract_runs(self.ram_runs(), self.dumped_runs()):
            for pfn in range(s, e):
                if self.page_state(pfn) is PageState.MISSING:
                    if out and out[-1][1] == pfn:
                        out[-1] = (out[-1][0], pfn + 1)
                    else:
                        out.append((pfn, pfn + 1))
        return out

    @abstractmethod
    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        """Bytes of ``count`` pages from ``pfn``, all known to be DUMPED."""

    @abstractmethod
    def notes(self) -> list[Note]:
        """All ELF notes the dump carries, in order (CPU states, VMCOREINFO …)."""

    def info(self) -> DumpInfo:
        """Format-specific facts for ``kdumpkit info`` (override to add)."""
        return DumpInfo(self.format_name)

    def close(self) -> None:
        """Release the file; the dump is unusable afterwards."""

    def file_extent(self, pfn: int, count: int) -> tuple[int, int] | None:
        """``(fd, offset)`` when the ``count`` pages from ``pfn`` lie raw and contiguous in one file.

        Writers that store pages unchanged (ELF output) then let the kernel
        copy them (``copy_file_range``: no trip through user space, a reflink
        where the filesystem can).  None for anything else, including every
        layer that changes pages; the default.
        """
        return None

    def reopen_spec(self) -> tuple[str, str] | None:
        """``(path, format)`` a worker process can open to read this dump's DUMPED pages itself.

        Parallel writers use it so that pages never travel between processes,
        only compressed output does.  None when the pages exist only through
        this object (in memory, or a layer that changes their bytes).
        """
        from kdumpkit.dump.fileio import MappedFile

        src = getattr(self, "src", None)
        if isinstance(src, MappedFile) and self.format_name not in ("?", "synthetic"):  # by path: workers pread it
            return (src.name, self.format_name)
        return None

    # -- shared behaviour ---------------------------------------------------
    def __enter__(self) -> Dump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_page(self, pfn: int) -> Buffer:
        """One page's bytes; raises a :class:`PageError` subclass if not DUMPED."""
        self._require_dumped(pfn)
        return self._read_dumped(pfn, 1)

    def read_pages(self, pfn: int, count: int) -> Buffer:
        """``count`` consecutive DUMPED pages (checked) as one buffer."""
        for p in range(pfn, pfn + count):
            self._require_dumped(p)
        return self._read_dumped(pfn, count)

    def _require_dumped(self, pfn: int) -> None:
        state = self.page_state(pfn)
        if state is PageState.DUMPED:
            return
        if state is PageState.EXCLUDED:
            raise PageExcludedError(pfn)
        if state is PageState.MISSING:
            raise PageMissingError(pfn)
        raise PageNotInRAMError(pfn)

    def read(self, paddr: int, length: int, *, zero_excluded: bool = False) -> bytes:
        """Bytes at a physical address.

        With ``zero_excluded`` pages that were filtered out or are missing read
        as zeros (crash's ``--zero_excluded``); holes in RAM always raise.
        """
        ps = self.page_size
        out = bytearray()
        addr = paddr
        end = paddr + length
        while addr < end:
            pfn, off = divmod(addr, ps)
            n = min(ps - off, end - addr)
            state = self.page_state(pfn)
            if state is PageState.DUMPED:
                out += bytes(self._read_dumped(pfn, 1))[off:off + n]
            elif zero_excluded and state in (PageState.EXCLUDED, PageState.MISSING):
                out += bytes(n)
            else:
                self._require_dumped(pfn)
            addr += n
        return bytes(out)

    def iter_dumped_pages(self, batch: int = 256) -> Iterator[tuple[int, Buffer]]:
        """``(pfn, bytes_of_up_to_batch_pages)`` over every DUMPED page in pfn order."""
        for start, end in self.dumped_runs():
            for pfn in range(start, end, batch):
                n = min(batch, end - pfn)
                yield pfn, self._read_dumped(pfn, n)

    # -- notes helpers ------------------------------------------------------
    def vmcoreinfo_raw(self) -> bytes | None:
        """The VMCOREINFO note text, or None when the dump has none."""
        for note in self.notes():
            if note.name == "VMCOREINFO":
                return note.desc
        return None

    def prstatus_notes(self) -> list[Note]:
        """NT_PRSTATUS notes, one per CPU that saved its state."""
        return [n for n in self.notes() if n.type == NT_PRSTATUS and n.name == "CORE"]

    def page_counts(self) -> dict[str, int]:
        """Counts of RAM, dumped, excluded and missing pages (``ram = dumped + excluded + missing``).

        Missing pages are never counted as excluded: a filter dropping a page
        and a dump that stopped before writing it mean different things.
        """
        ram = runs_count(self.ram_runs())
        dumped = runs_count(self.dumped_runs())
        missing = runs_count(self.missing_runs())
        return {"ram": ram, "dumped": dumped, "excluded": max(ram - dumped - missing, 0), "missing": missing}
