"""Small synthetic dumps built in memory, for tests, fuzzing and users' own tests.

Writers are tested from *any* :class:`~kdumpkit.dump.base.Dump`; a synthetic
one lets a test say exactly which pages are RAM, which were excluded, which
are zero, compressible or incompressible, and which notes the dump carries —
without a 1 GiB vmcore on disk.  Page contents are a pure function of
``(seed, pfn)``, computed vectorised with NumPy so even a "1 GiB" synthetic
dump streams at memory speed and two dumps built with the same arguments are
page-identical.

Typical use::

    from kdumpkit.dump.testing import synthetic_dump
    src = synthetic_dump(ram=[(0, 256), (512, 1024)], excluded=[(600, 620)])
    src.read_page(3)          # deterministic bytes
    src.notes()               # NT_PRSTATUS × ncpus, then VMCOREINFO
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

import numpy as np

from kdumpkit.dump.base import NT_PRSTATUS, Buffer, Dump, DumpInfo, Note, PageState, merge_runs
from kdumpkit.errors import UsageError

DEFAULT_CRASHTIME = 1_700_000_000
ELF_PRSTATUS_SIZE_X86_64 = 336  # sizeof(struct elf_prstatus) on x86_64
PRSTATUS_PID_OFFSET = 32  # pr_pid after siginfo(12)+cursig(2)+pad(2)+sigpend(8)+sighold(8)

# page kinds (thresholds on a per-pfn hash in [0, 1000))
KIND_ZERO = 0
KIND_TEXT = 1
KIND_RANDOM = 2

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def default_vmcoreinfo(page_size: int = 4096, osrelease: str = "6.1.0-synthetic", crashtime: int = DEFAULT_CRASHTIME) -> str:
    """A minimal plausible VMCOREINFO text (enough for kdump headers)."""
    return (
        f"OSRELEASE={osrelease}\n"
        f"BUILD-ID=0000000000000000000000000000000000000000\n"
        f"PAGESIZE={page_size}\n"
        f"NUMBER(phys_base)=0\n"
        f"CRASHTIME={crashtime}\n"
    )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser: a cheap, good 64-bit hash."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def prstatus_note(pid: int, size: int = ELF_PRSTATUS_SIZE_X86_64) -> Note:
    """An NT_PRSTATUS "CORE" note with only ``pr_pid`` set (registers zero)."""
    desc = bytearray(size)
    struct.pack_into("<i", desc, PRSTATUS_PID_OFFSET, pid)
    return Note("CORE", NT_PRSTATUS, bytes(desc))


class SyntheticDump(Dump):
    """An in-memory dump whose pages are generated from ``(seed, pfn)``.

    ``ram`` runs are RAM; ``excluded`` runs (inside RAM) are EXCLUDED;
    ``missing`` runs are MISSING (an incomplete dump).  Each dumped page is
    zero, "text" (compressible: a repeated record holding the pfn) or random
    (incompressible), chosen by a hash of the pfn with the given fractions;
    ``pages`` overrides the content of single pages.
    """

    format_name = "synthetic"

    def __init__(
        self,
        *,
        ram: Iterable[tuple[int, int]],
        excluded: Iterable[tuple[int, int]] = (),
        missing: Iterable[tuple[int, int]] = (),
        page_size: int = 4096,
        arch: str = "x86_64",
        notes: list[Note] | None = None,
        seed: int = 0,
        zero_fraction: float = 0.2,
        random_fraction: float = 0.1,
        pages: Mapping[int, bytes] | None = None,
        max_pfn: int | None = None,
    ) -> None:
        if page_size < 64 or page_size & (page_size - 1):
            raise UsageError(f"page size {page_size} is not a power of two >= 64")
        self.path = "<synthetic>"
        self.page_size = page_size
        self.arch = arch
        self.byteorder = "little"
        self.seed = seed
        self._ram = merge_runs(ram)
        self._excluded = merge_runs(excluded)
        self._missing = merge_runs(missing)
        self._dumped = _subtract(_subtract(self._ram, self._excluded), self._missing)
        self.max_pfn = max_pfn if max_pfn is not None else (self._ram[-1][1] if self._ram else 0)
        self.incomplete = bool(self._missing)
        self._notes = list(notes or [])
        self._zero_t = int(zero_fraction * 1000)
        self._random_t = self._zero_t + int(random_fraction * 1000)
        self._pages = dict(pages or {})
        for pfn, data in self._pages.items():
            if len(data) != page_size:
                raise UsageError(f"page {pfn} override is {len(data)} bytes, not {page_size}")

    # -- Dump primitives ------------------------------------------------------
    def ram_runs(self) -> list[tuple[int, int]]:
        return list(self._ram)

    def dumped_runs(self) -> list[tuple[int, int]]:
        return list(self._dumped)

    def page_state(self, pfn: int) -> PageState:
        if not _in_runs(self._ram, pfn):
            return PageState.NOT_RAM
        if _in_runs(self._missing, pfn):
            return PageState.MISSING
        if _in_runs(self._excluded, pfn):
            return PageState.EXCLUDED
        return PageState.DUMPED

    def notes(self) -> list[Note]:
        return list(self._notes)

    def info(self) -> DumpInfo:
        return DumpInfo("synthetic", {"seed": self.seed, "ram_runs": len(self._ram)})

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        return self.page_contents(pfn, count)

    # -- content generation ---------------------------------------------------
    def page_kinds(self, pfn: int, count: int) -> np.ndarray:
        """Kind (KIND_ZERO/TEXT/RANDOM) of pages ``pfn .. pfn+count-1``."""
        pfns = np.arange(pfn, pfn + count, dtype=np.uint64)
        h = _splitmix64(pfns ^ np.uint64((self.seed * 0x5851F42D4C957F2D) & 0xFFFFFFFFFFFFFFFF)) % np.uint64(1000)
        kinds = np.full(count, KIND_TEXT, dtype=np.uint8)
        kinds[h < self._random_t] = KIND_RANDOM
        kinds[h < self._zero_t] = KIND_ZERO
        return kinds

    def page_contents(self, pfn: int, count: int) -> bytes:
        """Contents of ``count`` pages from ``pfn`` (whatever their state)."""
        ps = self.page_size
        words = ps // 8
        kinds = self.page_kinds(pfn, count)
        out = np.zeros((count, words), dtype=np.uint64)
        text = np.flatnonzero(kinds == KIND_TEXT)
        if len(text):
            # 64-byte records: pfn, seed, then a short ASCII tag: compresses well but not to nothing
            pf = (text.astype(np.uint64) + np.uint64(pfn))[:, None]
            rec = np.zeros((len(text), 8), dtype=np.uint64)
            rec[:, 0:1] = pf
            rec[:, 1] = np.uint64(self.seed)
            rec[:, 2] = np.frombuffer(b"kdumpkit", dtype="<u8")[0]
            rec[:, 3:4] = (pf * np.uint64(2654435761)) & np.uint64(0xFFFF)
            reps = words // 8
            out[text] = np.tile(rec, (1, reps))
            out[text, 4::8] = np.arange(reps, dtype=np.uint64)[None, :]
        rnd = np.flatnonzero(kinds == KIND_RANDOM)
        if len(rnd):
            base = (rnd.astype(np.uint64) + np.uint64(pfn)) * np.uint64(words)
            idx = base[:, None] + np.arange(words, dtype=np.uint64)[None, :]
            out[rnd] = _splitmix64(idx ^ np.uint64(self.seed & 0xFFFFFFFF) << np.uint64(32))
        data = out.tobytes()
        if self._pages:
            buf = bytearray(data)
            for p in range(pfn, pfn + count):
                if p in self._pages:
                    buf[(p - pfn) * ps:(p - pfn + 1) * ps] = self._pages[p]
            data = bytes(buf)
        return data


def _subtract(runs: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``runs`` minus ``minus`` (both sorted and merged)."""
    out: list[tuple[int, int]] = []
    for s, e in runs:
        cur = s
        for ms, me in minus:
            if me <= cur or ms >= e:
                continue
            if ms > cur:
                out.append((cur, ms))
            cur = max(cur, me)
        if cur < e:
            out.append((cur, e))
    return out


def _in_runs(runs: list[tuple[int, int]], pfn: int) -> bool:
    import bisect

    i = bisect.bisect_right(runs, (pfn, 1 << 62)) - 1
    return i >= 0 and runs[i][0] <= pfn < runs[i][1]


def synthetic_dump(
    ram: Iterable[tuple[int, int]] = ((0, 256),),
    excluded: Iterable[tuple[int, int]] = (),
    *,
    missing: Iterable[tuple[int, int]] = (),
    page_size: int = 4096,
    arch: str = "x86_64",
    vmcoreinfo: str | None = None,
    ncpus: int = 2,
    extra_notes: Iterable[Note] = (),
    seed: int = 0,
    zero_fraction: float = 0.2,
    random_fraction: float = 0.1,
    pages: Mapping[int, bytes] | None = None,
    max_pfn: int | None = None,
) -> SyntheticDump:
    """Build a :class:`SyntheticDump`.

    Notes are, in order: ``ncpus`` NT_PRSTATUS notes (pids 1..ncpus), then
    ``extra_notes``, then a VMCOREINFO note (``vmcoreinfo`` text, or
    :func:`default_vmcoreinfo`; pass ``""`` for a dump without VMCOREINFO).
    """
    notes = [prstatus_note(i + 1) for i in range(ncpus)]
    notes += list(extra_notes)
    if vmcoreinfo is None:
        vmcoreinfo = default_vmcoreinfo(page_size)
    if vmcoreinfo:
        notes.append(Note("VMCOREINFO", 0, vmcoreinfo.encode()))
    return SyntheticDump(
        ram=ram,
        excluded=excluded,
        missing=missing,
        page_size=page_size,
        arch=arch,
        notes=notes,
        seed=seed,
        zero_fraction=zero_fraction,
        random_fraction=random_fraction,
        pages=pages,
        max_pfn=max_pfn,
    )


# -- a synthetic x86_64 dump that makedumpfile itself accepts (dump levels 0 and 1) --------------

MAKEDUMPFILE_UTSNAME = {
    "sysname": "Linux",
    "nodename": "synthetic",
    "release": "6.1.0-synthetic",
    "version": "#1 SMP PREEMPT_DYNAMIC kdumpkit",
    "machine": "x86_64",
    "domainname": "(none)",
}
_START_KERNEL_MAP = 0xFFFFFFFF80000000
_PFN_UTS, _PFN_MEM_MAP, _PFN_PGD, _PFN_PUD, _PFN_PMD = 16, 17, 20, 21, 22


def _table_page(index: int, value: int) -> bytes:
    b = bytearray(4096)
    struct.pack_into("<Q", b, index * 8, value)
    return bytes(b)


def makedumpfile_ready_dump(
    ram: Iterable[tuple[int, int]] = ((0, 256), (512, 1024)),
    excluded: Iterable[tuple[int, int]] = (),
    *,
    seed: int = 0,
    ncpus: int = 2,
    zero_fraction: float = 0.2,
    random_fraction: float = 0.1,
) -> SyntheticDump:
    """A synthetic x86_64 dump that makedumpfile 1.7 accepts as ELF input at ``-d 0``/``-d 1``.

    makedumpfile reads ``init_uts_ns`` from memory (and checks its release
    against VMCOREINFO), so pfn 16 holds a ``new_utsname`` with
    :data:`MAKEDUMPFILE_UTSNAME`, pfns 20–22 hold a page table mapping the
    kernel text at ``0xffffffff80000000`` to physical 0 with one 2 MiB page,
    and VMCOREINFO names them plus the FLATMEM ``struct page`` facts
    makedumpfile insists on.  Pfns 16–22 must be in ``ram`` and not excluded.
    Pass ``utsname=MAKEDUMPFILE_UTSNAME`` to our writer for byte-equal output.
    """
    uts = b"".join(MAKEDUMPFILE_UTSNAME[f].encode().ljust(65, b"\0") for f in
                   ("sysname", "nodename", "release", "version", "machine", "domainname"))
    pages = {
        _PFN_UTS: uts.ljust(4096, b"\0"),
        _PFN_MEM_MAP: _table_page(0, 0xFFFFEA0000000000),
        _PFN_PGD: _table_page(511, (_PFN_PUD << 12) | 0x63),
        _PFN_PUD: _table_page(510, (_PFN_PMD << 12) | 0x63),
        _PFN_PMD: _table_page(0, 0x83),  # 2 MiB page at physical 0
    }
    vmci = default_vmcoreinfo(4096, MAKEDUMPFILE_UTSNAME["release"]) + "".join(
        f"{line}\n"
        for line in (
            f"SYMBOL(init_uts_ns)={_START_KERNEL_MAP + (_PFN_UTS << 12):x}",
            "OFFSET(uts_namespace.name)=0",
            f"SYMBOL(init_top_pgt)={_START_KERNEL_MAP + (_PFN_PGD << 12):x}",
            f"SYMBOL(mem_map)={_START_KERNEL_MAP + (_PFN_MEM_MAP << 12):x}",
            "SIZE(page)=64",
            "OFFSET(page.flags)=0",
            "OFFSET(page._refcount)=52",
            "OFFSET(page.mapping)=24",
            "OFFSET(page.lru)=8",
            "OFFSET(page._mapcount)=48",
            "OFFSET(page.private)=40",
            "OFFSET(page.compound_head)=8",
        )
    )
    return synthetic_dump(ram=ram, excluded=excluded, vmcoreinfo=vmci, ncpus=ncpus, seed=seed, pages=pages,
                          zero_fraction=zero_fraction, random_fraction=random_fraction)


def assert_same_pages(a: Dump, b: Dump, *, check_ram: bool = True) -> None:
    """Raise AssertionError unless ``a`` and ``b`` hold the same dumped pages.

    Compares dumped runs (and RAM runs when ``check_ram``) and every page's
    bytes, in 256-page batches.
    """
    if a.page_size != b.page_size:
        raise AssertionError(f"page size {a.page_size} != {b.page_size}")
    if check_ram and a.ram_runs() != b.ram_runs():
        raise AssertionError(f"RAM runs differ: {a.ram_runs()[:8]} != {b.ram_runs()[:8]}")
    if a.dumped_runs() != b.dumped_runs():
        raise AssertionError(f"dumped runs differ: {a.dumped_runs()[:8]} != {b.dumped_runs()[:8]}")
    for pfn, data in a.iter_dumped_pages():
        n = len(data) // a.page_size
        other = b._read_dumped(pfn, n)
        if bytes(data) != bytes(other):
            for i in range(n):
                ps = a.page_size
                if bytes(data[i * ps:(i + 1) * ps]) != bytes(other[i * ps:(i + 1) * ps]):
                    raise AssertionError(f"page {pfn + i:#x} differs")


def assert_kept_pages_equal(source: Dump, other: Dump, batch: int = 512) -> int:
    """Every page ``other`` holds equals ``source``'s (a filtered or converted copy); returns the count compared."""
    n = 0
    for pfn, data in other.iter_dumped_pages(batch=batch):
        count = len(data) // other.page_size
        if bytes(data) != bytes(source.read_pages(pfn, count)):
            raise AssertionError(f"pages at {pfn:#x} differ")
        n += count
    return n
