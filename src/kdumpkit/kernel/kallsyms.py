"""The kernel's own symbol table (``kallsyms``), read from the crashed kernel's memory.

Why: Debian ships no System.map and no vmlinux in the image package, yet
every kernel built with CONFIG_KALLSYMS carries a compressed name → address
table in its rodata.  With it a dump can be symbolized with nothing but the
dump.

Layout (``scripts/kallsyms.c``):

* ``kallsyms_names``: per symbol a length (one byte; since v6.1 a second byte
  when the first has bit 7 set, ULEB128) and that many token codes; the first
  expanded character is the symbol type (``T``, ``t``, ``D`` …);
* ``kallsyms_markers``: offset into ``names`` of every 256th symbol (u32;
  ``unsigned long`` in old kernels);
* ``kallsyms_token_table``: 256 NUL-terminated strings, ``kallsyms_token_index``:
  256 u16 offsets of those strings;
* ``kallsyms_offsets`` (CONFIG_KALLSYMS_BASE_RELATIVE) + ``kallsyms_relative_base``,
  or ``kallsyms_addresses``.

Where the tables are: kernels with the kallsyms VMCOREINFO keys (v6.0+, and
backports) say so; older ones are found by :func:`scan_kallsyms`, which
locates the token table/index pair in the kernel image and walks back
(markers, names, num_syms, relative_base, offsets — the v4.x–v6.1 order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from kdumpkit.errors import KdumpkitError, KernelError
from kdumpkit.kernel.memory import KernelMemory
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

__all__ = ["Kallsyms", "KallsymsLocation", "KernelSymbol", "find_kallsyms", "read_kallsyms", "scan_kallsyms"]

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
_TEXT_BASE = 0xFFFF_FFFF_8100_0000  # default _text of x86_64 before KASLR
_MAX_SYMS = 2_000_000
_MAX_NAMES = 64 << 20
_SCAN_CHUNK = 16 << 20
_SCAN_LIMIT = 160 << 20
_DIGITS = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00"


class KernelSymbol(NamedTuple):
    """One kallsyms entry: name, runtime address, ``nm``-style type letter."""

    name: str
    address: int
    type: str


@dataclass(frozen=True)
class KallsymsLocation:
    """Addresses of the kallsyms tables and how they were found (``vmcoreinfo`` or ``scan``)."""

    names: int
    num_syms: int
    token_table: int
    token_index: int
    offsets: int | None
    relative_base: int | None
    addresses: int | None = None
    source: str = "vmcoreinfo"


def _text_start(info: VmcoreInfo) -> int:
    stext = info.symbol("_stext")
    if stext:
        return stext & ~0xFFFFF  # _stext sits right after the head code, within the first MiB
    return _TEXT_BASE + (info.kerneloffset or 0)


def find_kallsyms(mem: KernelMemory, info: VmcoreInfo | None = None) -> KallsymsLocation:
    """Where the tables are: from VMCOREINFO when exported, else by scanning the image."""
    vi = info if info is not None else mem.vmcoreinfo
    names = vi.symbol("kallsyms_names")
    num = vi.symbol("kallsyms_num_syms")
    table = vi.symbol("kallsyms_token_table")
    index = vi.symbol("kallsyms_token_index")
    offsets = vi.symbol("kallsyms_offsets")
    addresses = vi.symbol("kallsyms_addresses")
    if names and num and table and index and (offsets or addresses):
        return KallsymsLocation(names, mem.read_u32(num), table, index, offsets,
                                vi.symbol("kallsyms_relative_base"), addresses)
    return scan_kallsyms(mem, vi)


# -- decoding -------------------------------------------------------------------
def _tokens(mem: KernelMemory, loc: KallsymsLocation) -> list[bytes]:
    index = np.frombuffer(mem.read_virt(loc.token_index, 512), dtype="<u2")
    size = int(index.max()) + 256
    blob = mem.read_virt(loc.token_table, size)
    out = []
    for off in index.tolist():
        end = blob.find(b"\0", off)
        if end < 0:
            raise KernelError("kallsyms token table is not NUL-terminated")
        out.append(blob[off:end])
    return out


def _names_blob(mem: KernelMemory, loc: KallsymsLocation) -> bytes:
    # The token table follows names (+ markers) in every layout: a tight bound.
    span = loc.token_table - loc.names
    if not 0 < span <= _MAX_NAMES:
        span = min(loc.num_syms * 64, _MAX_NAMES)
    return mem.read_virt(loc.names, span)


def decode_names(blob: bytes, tokens: Sequence[bytes], count: int) -> list[str]:
    """Type letter + name of ``count`` compressed entries of ``kallsyms_names``.

    One pass finds the length bytes; the expansion is then a single join over
    all codes, with length bytes mapped to a separator (10x faster than a
    join per symbol, which matters at 150,000+ symbols).
    """
    n = len(blob)
    codes = np.frombuffer(blob, dtype=np.uint8).astype(np.uint16)
    pos = 0
    for i in range(count):
        if pos >= n:
            raise KernelError(f"kallsyms_names ends after {i} of {count} symbols")
        length = blob[pos]
        codes[pos] = 256
        pos += 1
        if length & 0x80:  # v6.1 "big" symbols: ULEB128 length
            if pos >= n:
                raise KernelError("kallsyms_names ends inside a length")
            length = (length & 0x7F) | (blob[pos] << 7)
            codes[pos] = 257
            pos += 1
        pos += length
    if pos > n:
        raise KernelError(f"kallsyms_names ends inside symbol {count - 1}")
    table = [*tokens, b"\n", b""]
    flat = np.frombuffer(b"".join(table), dtype=np.uint8)
    lens = np.array([len(t) for t in table], dtype=np.int64)
    starts = np.cumsum(lens) - lens
    used = codes[:pos]
    out_len = lens[used]
    before = np.cumsum(out_len) - out_len
    idx = np.arange(int(out_len.sum()), dtype=np.int64) + np.repeat(starts[used] - before, out_len)
    text: str = flat[idx].tobytes().decode("ascii", "replace")
    return text.split("\n")[1:]


def _addresses(mem: KernelMemory, loc: KallsymsLocation, count: int) -> list[int]:
    """Runtime addresses per ``kallsyms_sym_address()`` of the matching era."""
    if loc.offsets is None:
        if loc.addresses is None:
            raise KernelError("neither kallsyms_offsets nor kallsyms_addresses is known")
        return [int(a) for a in np.frombuffer(mem.read_virt(loc.addresses, 8 * count), dtype="<u8")]
    offs = np.frombuffer(mem.read_virt(loc.offsets, 4 * count), dtype="<i4").astype(np.int64)
    if loc.relative_base is None:
        # v6.15+: offsets are s32 relative to _text (pc-relative kallsyms).
        text = _TEXT_BASE + (mem.vmcoreinfo.kerneloffset or 0)
        return [(text + o) % (1 << 64) for o in offs.tolist()]
    base = mem.read_u64(loc.relative_base)
    if (offs < 0).any():
        # CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86_64 SMP until v6.15): non-negative
        # offsets are absolute values (per-CPU symbols), negative ones are
        # relative_base - 1 - offset.
        return [int(o) if o >= 0 else base - 1 - int(o) for o in offs.tolist()]
    u = offs & 0xFFFF_FFFF
    return [base + int(o) for o in u.tolist()]


@dataclass(frozen=True)
class Kallsyms:
    """The decoded table as parallel arrays (no per-symbol objects: 150,000+ entries)."""

    names: list[str]
    types: str
    addresses: list[int]
    location: KallsymsLocation

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> KernelSymbol:
        return KernelSymbol(self.names[i], self.addresses[i], self.types[i])


def read_kallsyms(mem: KernelMemory, info: VmcoreInfo | None = None,
                  location: KallsymsLocation | None = None) -> Kallsyms:
    """Every kallsyms entry of the crashed kernel, in table (= address) order.

    Raises :class:`KernelError` when the tables cannot be found or decoded.
    """
    try:
        loc = location if location is not None else find_kallsyms(mem, info)
        if not 0 < loc.num_syms <= _MAX_SYMS:
            raise KernelError(f"kallsyms_num_syms = {loc.num_syms} is impossible")
        entries = decode_names(_names_blob(mem, loc), _tokens(mem, loc), loc.num_syms)
        addrs = _addresses(mem, loc, loc.num_syms)
    except KernelError:
        raise
    except KdumpkitError as e:
        raise KernelError(f"cannot read kallsyms: {e}") from None
    return Kallsyms([e[1:] for e in entries], "".join([e[:1] or "?" for e in entries]), addrs, loc)


# -- scanning (kernels without the VMCOREINFO keys) -------------------------------
def _read_image(mem: KernelMemory, start: int, limit: int) -> bytes:
    """The kernel image from ``start``, in chunks; a chunk with holes is read page by page
    (holes as zeros); reading stops at the first chunk with no readable page."""
    out = bytearray()
    va = start
    ps = mem.page_size
    while va < start + limit:
        try:
            out += mem.read_virt(va, _SCAN_CHUNK)
        except KdumpkitError:
            chunk = bytearray()
            readable = False
            for page in range(va, va + _SCAN_CHUNK, ps):
                try:
                    chunk += mem.read_virt(page, ps)
                    readable = True
                except KdumpkitError:
                    chunk += bytes(ps)
            if not readable:
                break
            out += chunk
        va += _SCAN_CHUNK
    return bytes(out)


def _match_token_table(img: bytes, p: int) -> tuple[int, int] | None:
    """``(token_table, token_index)`` offsets if the digit tokens at ``p`` belong to a real table."""
    pos = p
    for _ in range(256 - 0x30):
        end = img.find(b"\0", pos, pos + 256)
        if end < 0:
            return None
        pos = end + 1
    for align in (2, 4, 8):
        at = (pos + align - 1) & ~(align - 1)
        if at + 512 > len(img):
            return None
        idx = np.frombuffer(img, dtype="<u2", count=256, offset=at)
        start = p - int(idx[0x30])
        if idx[0] != 0 or start < 0 or start + int(idx[255]) >= pos:
            continue
        if all(img.find(b"\0", start + int(idx[i])) + 1 == start + int(idx[i + 1]) for i in range(255)):
            return start, at
    return None


def _marker_candidates(img: bytes, table: int) -> list[tuple[int, list[int]]]:
    """``(markers_start, markers)`` arrays shortly before the token table, nearest first.

    Markers are 0 then increasing offsets, one per 256 symbols (about 2-8 KiB
    apart).  They sit right before the token table (v4.x-v6.1) or right after
    the names with ``kallsyms_seqs_of_names`` in between (v6.2+, and 6.1
    stable backports), so the whole stretch before the table is searched.
    """
    out: list[tuple[int, list[int]]] = []
    lo = max(table - (8 << 20), 0)
    for width, dtype in ((4, "<u4"), (8, "<u8")):
        start = (lo + width - 1) & ~(width - 1)
        arr = np.frombuffer(img, dtype=dtype, count=(table - start) // width, offset=start).astype(np.int64)
        if len(arr) < 3:
            continue
        d = np.diff(arr)
        ok = (d >= 256 * 2) & (d <= 256 * 400)
        hits = np.nonzero((arr[:-2] == 0) & ok[:-1] & ok[1:])[0]
        for k in hits[::-1].tolist():
            j = k + 1
            while j < len(arr) - 1 and ok[j]:
                j += 1
            out.append((start + width * k, arr[k:j + 1].tolist()))
    return out


def _walk(img: bytes, pos: int, count: int) -> int:
    for _ in range(count):
        if pos >= len(img):
            return -1
        length = img[pos]
        pos += 1
        if length & 0x80:
            length = (length & 0x7F) | (img[pos] << 7)
            pos += 1
        pos += length
    return pos


def scan_kallsyms(mem: KernelMemory, info: VmcoreInfo | None = None) -> KallsymsLocation:
    """Find the kallsyms tables in the kernel image (drgn-style heuristics, v4.x–v6.1 layout).

    The token table is the anchor: 256 strings whose codes 0x30-0x39 are the
    digits, followed by 256 u16 offsets that match the strings exactly.
    """
    vi = info if info is not None else mem.vmcoreinfo
    base = _text_start(vi)
    img = _read_image(mem, base, _SCAN_LIMIT)
    if not img:
        raise KernelError(f"kernel image at {base:#x} is unreadable: cannot scan for kallsyms")
    p = img.find(_DIGITS)
    while p >= 0:
        found = _match_token_table(img, p)
        if found:
            loc = _locate_from_table(img, base, *found)
            if loc is not None:
                return loc
        p = img.find(_DIGITS, p + 1)
    raise KernelError("kallsyms tables not found in the kernel image (and VMCOREINFO does not export them)")


def _locate_from_table(img: bytes, base: int, table: int, index: int) -> KallsymsLocation | None:
    for markers_start, markers in _marker_candidates(img, table):
        loc = _locate_from_markers(img, base, table, index, markers_start, markers)
        if loc is not None:
            return loc
    return None


def _locate_from_markers(img: bytes, base: int, table: int, index: int, markers_start: int,
                         markers: list[int]) -> KallsymsLocation | None:
    m = len(markers)
    lo, hi = 256 * (m - 1) + 1, 256 * m
    last = markers[-1]
    # num_syms is 8-aligned right before names; the last 256-block ends at markers_start.
    window_end = markers_start - last - 8
    window_start = max(window_end - 256 * 300, 0) & ~7
    region = np.frombuffer(img, dtype="<u4", count=(window_end - window_start) // 4 + 1, offset=window_start)
    for k in np.nonzero((region >= lo) & (region <= hi))[0][::-1].tolist():
        q = window_start + 4 * k
        if q % 8:
            continue
        num = int(region[k])
        names = q + 8
        if _walk(img, names, 256) != names + markers[1]:
            continue
        end = _walk(img, names + last, num - 256 * (m - 1))
        if not markers_start - 8 < end <= markers_start:
            continue
        rb = int(np.frombuffer(img, dtype="<u8", count=1, offset=q - 8)[0])
        if rb >= START_KERNEL_MAP:  # v4.6-v6.1 order: offsets, relative_base, num_syms, names
            offsets = (q - 8 - 4 * num) & ~7
            return KallsymsLocation(base + names, num, base + table, base + index, base + offsets,
                                    base + q - 8, source="scan")
        # v6.2+ order: ... token_index, offsets, relative_base
        offsets = (index + 512 + 7) & ~7
        rbo = (offsets + 4 * num + 7) & ~7
        return KallsymsLocation(base + names, num, base + table, base + index, base + offsets,
                                base + rbo, source="scan")
    return None
