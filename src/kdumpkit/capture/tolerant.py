"""A Dump layer that survives unreadable pages of the source.

``/proc/vmcore`` can return EIO for single pages (a poisoned or unmapped
page, a broken device mapping).  makedumpfile then aborts the whole dump;
here the page is recorded as missing, the writer gets zeros for it, and the
engine afterwards marks those pages MISSING in the output and flags the dump
incomplete — a dump with one hole beats no dump.
"""

from __future__ import annotations

from kdumpkit.dump.base import Buffer, Dump, DumpInfo, Note, PageState
from kdumpkit.errors import DumpError


class TolerantDump(Dump):
    """Forwards to ``inner``; read errors of single pages become recorded holes.

    ``missing`` lists the pfns that could not be read, in read order;
    ``incomplete`` turns true at the first one (the ELF writer reads it after
    the last page, so its ``e_flags`` bit follows automatically).
    """

    def __init__(self, inner: Dump) -> None:
        self.inner = inner
        self.path = inner.path
        self.page_size = inner.page_size
        self.arch = inner.arch
        self.byteorder = inner.byteorder
        self.max_pfn = inner.max_pfn
        self.incomplete = inner.incomplete
        self.format_name = inner.format_name  # type: ignore[misc]
        self.missing: list[int] = []
        self.errors: list[str] = []

    def ram_runs(self) -> list[tuple[int, int]]:
        return self.inner.ram_runs()

    def dumped_runs(self) -> list[tuple[int, int]]:
        return self.inner.dumped_runs()

    def page_state(self, pfn: int) -> PageState:
        return self.inner.page_state(pfn)

    def notes(self) -> list[Note]:
        return self.inner.notes()

    def info(self) -> DumpInfo:
        return self.inner.info()

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        try:
            return self.inner._read_dumped(pfn, count)
        except (OSError, DumpError):
            pass
        ps = self.page_size
        out = bytearray(count * ps)
        for i in range(count):
            try:
                out[i * ps:(i + 1) * ps] = self.inner._read_dumped(pfn + i, 1)
            except (OSError, DumpError) as e:
                self.missing.append(pfn + i)
                if len(self.errors) < 16:
                    self.errors.append(f"pfn {pfn + i:#x}: {e}")
                self.incomplete = True
        return out

    def file_extent(self, pfn: int, count: int) -> tuple[int, int] | None:
        # a failed kernel copy falls back to _read_dumped below, which records the holes
        return self.inner.file_extent(pfn, count)

    def __getattr__(self, name: str) -> object:
        # optional reader hooks (direct_map_base, utsname …) pass through
        return getattr(self.inner, name)
