"""makedumpfile's ELF layout rule for filtered dumps: short holes are written as zeros.

An ELF core can only leave pages out at the *end* of a PT_LOAD
(``p_filesz < p_memsz``), so every excluded run inside RAM costs a program
header.  At ``-d 31`` that is tens of thousands of headers, which crash
refuses ("cannot realloc resized ELF header buffer") and makedumpfile's own
readers choke on.  makedumpfile ``-E`` therefore splits a segment only at
runs of 256 or more excluded pages (``PFN_EXCLUDED``) and writes shorter runs
as zero pages; readers see zeros there, as they would with
``--zero_excluded``.  This layer applies the same rule before the ELF writer.
"""

from __future__ import annotations

import bisect

from kdumpkit.dump.base import Buffer, Dump, DumpInfo, Note, PageState
from kdumpkit.dump.elf import nonzero_runs

PFN_EXCLUDED = 256  # makedumpfile: shorter excluded runs stay inside the segment


def fill_short_gaps(kept: list[tuple[int, int]], ram: list[tuple[int, int]],
                    min_gap: int = PFN_EXCLUDED) -> list[tuple[int, int]]:
    """Join kept runs separated by fewer than ``min_gap`` pages inside one RAM run."""
    out: list[tuple[int, int]] = []
    for s, e in kept:
        if out:
            ps, pe = out[-1]
            i = bisect.bisect_right(ram, (pe, 1 << 62)) - 1
            same_ram = i >= 0 and ram[i][0] <= pe - 1 and s < ram[i][1]
            if same_ram and s - pe < min_gap:
                out[-1] = (ps, e)
                continue
        out.append((s, e))
    return out


class ElfGapFill(Dump):
    """``inner`` with short excluded (and, for level bit 1, zero) runs read as zero pages."""

    def __init__(self, inner: Dump, *, exclude_zero: bool) -> None:
        self.inner = inner
        self.path, self.page_size, self.arch = inner.path, inner.page_size, inner.arch
        self.byteorder, self.max_pfn = inner.byteorder, inner.max_pfn
        self.format_name = inner.format_name  # type: ignore[misc]
        kept = inner.dumped_runs()
        if exclude_zero:
            kept = nonzero_runs(inner, kept)
        self._kept = kept
        self._runs = fill_short_gaps(kept, inner.ram_runs())
        self._kept_starts = [s for s, _ in kept]

    @property
    def incomplete(self) -> bool:  # type: ignore[override]  # follows the tolerant layer live
        return self.inner.incomplete

    def ram_runs(self) -> list[tuple[int, int]]:
        return self.inner.ram_runs()

    def reopen_spec(self) -> tuple[str, str] | None:
        return None  # gap pages are made up here, not in the file

    def dumped_runs(self) -> list[tuple[int, int]]:
        return list(self._runs)

    def _in(self, runs: list[tuple[int, int]], pfn: int) -> bool:
        i = bisect.bisect_right(runs, (pfn, 1 << 62)) - 1
        return i >= 0 and runs[i][0] <= pfn < runs[i][1]

    def page_state(self, pfn: int) -> PageState:
        return PageState.DUMPED if self._in(self._runs, pfn) else self.inner.page_state(pfn)

    def notes(self) -> list[Note]:
        return self.inner.notes()

    def info(self) -> DumpInfo:
        return self.inner.info()

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        ps = self.page_size
        out = bytearray(count * ps)
        end = pfn + count
        i = max(0, bisect.bisect_right(self._kept_starts, pfn) - 1)
        while i < len(self._kept) and self._kept[i][0] < end:
            s, e = max(self._kept[i][0], pfn), min(self._kept[i][1], end)
            if s < e:
                out[(s - pfn) * ps:(e - pfn) * ps] = self.inner._read_dumped(s, e - s)
            i += 1
        return out

    def __getattr__(self, name: str) -> object:
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
