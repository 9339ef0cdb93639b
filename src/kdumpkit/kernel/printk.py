"""The kernel log (``dmesg``) of a crashed kernel, from VMCOREINFO alone.

Three layouts existed (formats.md §7), each read by its own function:

* Linux commit 896fbe20b4e2 ("printk: use the lockless ringbuffer") (v5.10)
  replaced the log with descriptor + info + text-data rings:
  :func:`_lockless_records`;
* v3.5 to v5.9 stored variable-length ``struct printk_log`` records (named
  ``struct log`` before v3.11) in ``log_buf``: :func:`_structured_records`;
* before v3.5 ``log_buf`` was a plain ring of console text:
  :func:`_plain_log`.

All addresses are kernel virtual addresses read through
:class:`~kdumpkit.kernel.memory.KernelMemory`.  Indices in a crashed kernel
may be garbage, so every loop is bounded by the ring size and damage yields a
:class:`PrintkLog` with ``partial=True`` and the reasons in ``problems``
instead of an exception or a hang.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kdumpkit.errors import KdumpkitError, KernelError
from kdumpkit.kernel.memory import KernelMemory
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

__all__ = [
    "PrintkLog",
    "PrintkRecord",
    "format_json",
    "format_makedumpfile",
    "format_plain",
    "get_printk_log",
]

# Sanity limits: CONFIG_LOG_BUF_SHIFT is at most 25, log_buf_len= may raise
# the size further; anything beyond these is a corrupt ring, not a big one.
_MAX_COUNT_BITS = 25
_MAX_SIZE_BITS = 30
_MAX_LOG_BUF_LEN = 1 << 30


@dataclass(frozen=True)
class PrintkRecord:
    """One kernel log record."""

    text: bytes
    """Message bytes as stored (no trailing newline; may contain newlines)."""
    ts_nsec: int | None
    """Boot-relative timestamp (local_clock) in nanoseconds; None for plain-buffer lines."""
    level: int | None = None
    """Syslog level 0-7."""
    facility: int | None = None
    caller_id: int | None = None
    """Raw caller id: bit 31 set = CPU number, else task PID (None when not recorded)."""
    seq: int | None = None
    flags: int | None = None
    damaged: bool = False
    """Some of the record's bytes could not be read (they read as zeros)."""

    @property
    def caller(self) -> str | None:
        """``T<pid>`` or ``C<cpu>``, as printk's CONFIG_PRINTK_CALLER prints it."""
        if self.caller_id is None:
            return None
        if self.caller_id & 0x80000000:
            return f"C{self.caller_id & 0x7FFFFFFF}"
        return f"T{self.caller_id}"


@dataclass
class PrintkLog:
    """The records of one kernel log plus how complete they are."""

    format: str
    """``lockless`` (5.10+), ``structured`` (3.5-5.9) or ``plain`` (before 3.5)."""
    records: list[PrintkRecord] = field(default_factory=list)
    raw: bytes | None = None
    """For ``plain``: the linearized character buffer, printed as-is."""
    partial: bool = False
    problems: list[str] = field(default_factory=list)

    def damage(self, why: str) -> None:
        self.partial = True
        self.problems.append(why)


# -- tolerant, lazy reading ---------------------------------------------------
class _Area:
    """``length`` bytes of kernel memory at ``va``, read a page at a time when first touched.

    A ring header is data from a crashed kernel: it may claim a gigabyte ring
    in a dump of a few pages.  Reading the claim whole (zeros for what is
    unreadable) cost gigabytes; reading on demand costs only the pages the
    walk touches, which are bounded by what the dump really holds.  Readable
    pages are cached; unreadable ones read as zeros and are counted.
    """

    def __init__(self, mem: KernelMemory, va: int, length: int) -> None:
        self.mem = mem
        self.va = va
        self.length = length
        self.ps = mem.page_size
        self._pages: dict[int, bytes | None] = {}

    def _page(self, vpn: int) -> bytes | None:
        if vpn not in self._pages:
            try:
                self._pages[vpn] = self.mem.read_virt(vpn * self.ps, self.ps)
            except KdumpkitError:
                self._pages[vpn] = None
        return self._pages[vpn]

    def _vpns(self, off: int, n: int) -> range:
        return range((self.va + off) // self.ps, (self.va + off + n - 1) // self.ps + 1)

    def read(self, off: int, n: int) -> bytes:
        """Bytes ``[off, off + n)`` clipped to the area (like slicing ``bytes``); unreadable ones are zeros."""
        off = max(off, 0)
        n = min(n, self.length - off)
        if n <= 0:
            return b""
        out = bytearray()
        for vpn in self._vpns(off, n):
            page = self._page(vpn)
            lo = max(self.va + off, vpn * self.ps) - vpn * self.ps
            hi = min(self.va + off + n, (vpn + 1) * self.ps) - vpn * self.ps
            out += page[lo:hi] if page is not None else bytes(hi - lo)
        return bytes(out)

    def readable(self, off: int, n: int) -> bytes:
        """Like :meth:`read` but unreadable pages are left out."""
        out = bytearray()
        for vpn in self._vpns(off, n) if n > 0 else ():
            lo = max(self.va + off, vpn * self.ps)
            out += self.read(lo - self.va, min(self.va + off + n, (vpn + 1) * self.ps) - lo) if self._page(vpn) else b""
        return bytes(out)

    def uint(self, off: int, size: int, byteorder: str) -> int:
        return _le(self.read(off, size), 0, size, byteorder)

    def byte(self, off: int) -> int | None:
        b = self.read(off, 1)
        return b[0] if b else None

    def bad_end(self, off: int, n: int) -> int | None:
        """Area offset where the last unreadable page touching ``[off, off + n)`` ends, or None if all read."""
        end = None
        for vpn in self._vpns(off, max(n, 1)):
            if self._page(vpn) is None:
                end = (vpn + 1) * self.ps - self.va
        return end

    def damaged(self, off: int, n: int) -> bool:
        return self.bad_end(off, n) is not None

    def unreadable_bytes(self) -> int:
        """Bytes of the area in pages found unreadable so far."""
        total = 0
        for vpn, page in self._pages.items():
            if page is None:
                total += min(self.va + self.length, (vpn + 1) * self.ps) - max(self.va, vpn * self.ps)
        return total


def _fits(mem: KernelMemory, what: str, nbytes: int) -> None:
    """Refuse a ring larger than the physical memory the dump describes: a lie, not a big log."""
    span = getattr(mem, "max_phys", None)
    if isinstance(span, int) and span > 0 and nbytes > span:
        raise KernelError(f"{what} claims {nbytes} bytes but the dump's memory spans only {span} bytes: corrupt header")


def _require_readable(mem: KernelMemory, what: str, va: int) -> None:
    """Garbage ring pointers would make every read below fail: the start of each array must read."""
    try:
        mem.read_virt(va, 8)
    except KdumpkitError as e:
        raise KernelError(f"{what} at {va:#x} unreadable: {e}") from None


def _le(buf: bytes, off: int, size: int, byteorder: str) -> int:
    return int.from_bytes(buf[off:off + size], "little" if byteorder == "little" else "big")


def _level_flags(byte: int, byteorder: str) -> tuple[int, int]:
    """``(level, flags)`` of the ``u8 flags:5, level:3`` bitfield byte."""
    if byteorder == "little":
        return byte >> 5, byte & 0x1F
    return byte & 7, byte >> 3


# -- v5.10+: lockless ring buffer ---------------------------------------------
def _lockless_records(mem: KernelMemory, info: VmcoreInfo, log: PrintkLog) -> None:
    bo = mem.byteorder
    ulong = mem.pointer_size
    bits = ulong * 8

    def off(name: str) -> int:
        return info.require_offset(name)

    counter = info.offset("atomic_long_t.counter") or 0
    prb_ptr = info.require_symbol("prb")
    prb = mem.read_pointer(prb_ptr)  # SYMBOL(prb) is the address of the pointer variable
    prb_size = info.size("printk_ringbuffer") or 88
    ring = mem.read_virt(prb, prb_size)
    dr = off("printk_ringbuffer.desc_ring")
    tr = off("printk_ringbuffer.text_data_ring")
    count_bits = _le(ring, dr + off("prb_desc_ring.count_bits"), 4, bo)
    descs_va = _le(ring, dr + off("prb_desc_ring.descs"), ulong, bo)
    infos_va = _le(ring, dr + off("prb_desc_ring.infos"), ulong, bo)
    head_id = _le(ring, dr + off("prb_desc_ring.head_id") + counter, ulong, bo)
    tail_id = _le(ring, dr + off("prb_desc_ring.tail_id") + counter, ulong, bo)
    size_bits = _le(ring, tr + off("prb_data_ring.size_bits"), 4, bo)
    data_va = _le(ring, tr + off("prb_data_ring.data"), ulong, bo)
    if count_bits > _MAX_COUNT_BITS or size_bits > _MAX_SIZE_BITS or size_bits < 3:
        raise KernelError(f"printk ring buffer looks corrupt (count_bits={count_bits}, size_bits={size_bits})")
    count = 1 << count_bits
    size = 1 << size_bits

    desc_size = info.require_size("prb_desc")
    info_size = info.require_size("printk_info")
    sv_off = off("prb_desc.state_var") + counter
    lpos_off = off("prb_desc.text_blk_lpos")
    begin_off = lpos_off + off("prb_data_blk_lpos.begin")
    next_off = lpos_off + off("prb_data_blk_lpos.next")
    seq_off = info.offset("printk_info.seq")
    ts_off = off("printk_info.ts_nsec")
    tl_off = off("printk_info.text_len")
    caller_off = info.offset("printk_info.caller_id")
    # facility and flags/level follow text_len (u16) in every released layout;
    # VMCOREINFO does not export their offsets.
    fac_off = tl_off + 2
    lvl_off = tl_off + 3

    if desc_size <= 0 or info_size <= 0:
        raise KernelError(f"printk ring buffer looks corrupt (SIZE(prb_desc)={desc_size}, SIZE(printk_info)={info_size})")
    _fits(mem, f"printk ring buffer (count_bits={count_bits}, size_bits={size_bits})",
          (desc_size + info_size) * count + size)
    for what, va in (("printk descriptors", descs_va), ("printk record infos", infos_va), ("printk text data", data_va)):
        _require_readable(mem, what, va)
    arrays = _LocklessRing(
        descs=_Area(mem, descs_va, desc_size * count), infos=_Area(mem, infos_va, info_size * count),
        data=_Area(mem, data_va, size), count=count, size_bits=size_bits, desc_size=desc_size, info_size=info_size,
        sv_off=sv_off, begin_off=begin_off, next_off=next_off, seq_off=seq_off, ts_off=ts_off, tl_off=tl_off,
        caller_off=caller_off, fac_off=fac_off, lvl_off=lvl_off, ulong=ulong, bo=bo,
    )

    id_mask = (1 << (bits - 2)) - 1
    n_ids = ((head_id - tail_id) & id_mask) + 1
    if n_ids > count:
        log.damage(f"printk descriptor ids tail {tail_id:#x} .. head {head_id:#x} span more than the {count} descriptors")
        tail_id = (head_id - count + 1) & id_mask
        n_ids = count

    ident = tail_id
    left = n_ids
    while left > 0:  # tail to head inclusive, bounded by the ring size
        idx = ident % count
        d = idx * desc_size
        bad_end = arrays.descs.bad_end(d, desc_size)
        if bad_end is not None:
            # Every descriptor starting before the unreadable page ends touches it:
            # skip them at once, so a lying count costs one step per page, not per id.
            step = max(1, min(-(-(bad_end - d) // desc_size), count - idx, left))
        else:
            step = 1
            rec = arrays.record(ident)
            if rec is not None:
                log.records.append(rec)
        ident = (ident + step) & id_mask
        left -= step
    for what, area in (("descriptors", arrays.descs), ("record infos", arrays.infos), ("text data", arrays.data)):
        if bad := area.unreadable_bytes():
            log.damage(f"printk {what}: {bad} bytes unreadable")


@dataclass(frozen=True)
class _LocklessRing:
    """The three arrays of a 5.10+ ring and the field offsets VMCOREINFO gave for them."""

    descs: _Area
    infos: _Area
    data: _Area
    count: int
    size_bits: int
    desc_size: int
    info_size: int
    sv_off: int
    begin_off: int
    next_off: int
    seq_off: int | None
    ts_off: int
    tl_off: int
    caller_off: int | None
    fac_off: int
    lvl_off: int
    ulong: int
    bo: str

    def record(self, ident: int) -> PrintkRecord | None:
        """The record of descriptor id ``ident``, or None if it holds none (reused, reserved, data-less)."""
        bo, ulong, bits = self.bo, self.ulong, self.ulong * 8
        size, size_bits, full = 1 << self.size_bits, self.size_bits, (1 << bits) - 1
        descs, infos = self.descs, self.infos
        idx = ident % self.count
        d = idx * self.desc_size
        state_var = descs.uint(d + self.sv_off, ulong, bo)
        state = (state_var >> (bits - 2)) & 3
        if state_var & ((1 << (bits - 2)) - 1) != ident or state not in (1, 2):  # committed or finalized
            return None
        begin = descs.uint(d + self.begin_off, ulong, bo)
        nxt = descs.uint(d + self.next_off, ulong, bo)
        if begin & 1 or nxt & 1:  # FAILED_LPOS / EMPTY_LINE_LPOS: data-less, tools skip it
            return None
        # Kernel get_data(): full lpos values, not the "begin > next" shortcut, so a
        # block ending exactly at the ring end (2025 "don't needlessly wrap") is right.
        # "nxt - 1" keeps a block that ends exactly at the ring end unwrapped.
        if begin < nxt and begin >> size_bits == ((nxt - 1) & full) >> size_bits:
            blk, blk_len = begin & (size - 1), nxt - begin
        elif ((begin + size) & full) >> size_bits == nxt >> size_bits:
            blk, blk_len = 0, nxt & (size - 1)
        else:
            return None
        if blk_len < ulong or blk + blk_len > size:
            return None
        i = idx * self.info_size
        text_len = min(infos.uint(i + self.tl_off, 2, bo), blk_len - ulong)  # truncated messages
        start = blk + ulong
        text = self.data.read(start, text_len)
        level, flags = _level_flags(infos.byte(i + self.lvl_off) or 0, bo)
        damaged = (descs.damaged(d, self.desc_size) or infos.damaged(i, self.info_size)
                   or (text_len > 0 and self.data.damaged(start, text_len)))
        return PrintkRecord(
            text=text,
            ts_nsec=infos.uint(i + self.ts_off, 8, bo),
            level=level,
            facility=infos.byte(i + self.fac_off),
            caller_id=infos.uint(i + self.caller_off, 4, bo) if self.caller_off is not None else None,
            seq=infos.uint(i + self.seq_off, 8, bo) if self.seq_off is not None else None,
            flags=flags,
            damaged=damaged,
        )


# -- v3.5 .. v5.9: variable-length records -------------------------------------
def _structured_records(mem: KernelMemory, info: VmcoreInfo, log: PrintkLog) -> None:
    bo = mem.byteorder
    # Linux commit 62e32ac3505a ("printk: rename struct log to struct printk_log") (v3.11).
    sname = "printk_log" if info.size("printk_log") is not None else "log"
    hdr = info.size(sname)
    o_ts = info.offset(f"{sname}.ts_nsec")
    o_len = info.offset(f"{sname}.len")
    o_tl = info.offset(f"{sname}.text_len")
    if hdr is None or o_ts is None or o_len is None or o_tl is None:
        raise KernelError(f"VMCOREINFO lacks SIZE({sname}) or OFFSET({sname}.ts_nsec/len/text_len)")
    o_dl = info.offset(f"{sname}.dict_len")
    o_fac = (o_dl if o_dl is not None else o_tl + 2) + 2  # facility, then flags:5/level:3
    buf_va = mem.read_pointer(info.require_symbol("log_buf"))
    buf_len = mem.read_s32(info.require_symbol("log_buf_len"))
    first = mem.read_u32(info.require_symbol("log_first_idx"))
    nxt = mem.read_u32(info.require_symbol("log_next_idx"))
    if hdr <= 0:
        raise KernelError(f"SIZE({sname})={hdr} is impossible")
    _check_log_buf_len(mem, buf_len)
    _require_readable(mem, "log_buf", buf_va)
    buf = _Area(mem, buf_va, buf_len)
    if first > buf_len - hdr or nxt > buf_len:
        log.damage(f"log indices first={first} next={nxt} outside log_buf of {buf_len} bytes")
        return
    _walk_structured(buf, first, nxt, hdr, o_ts, o_len, o_tl, o_fac, bo, log)
    if bad := buf.unreadable_bytes():
        log.damage(f"log_buf: {bad} of {buf_len} bytes unreadable")


def _check_log_buf_len(mem: KernelMemory, buf_len: int) -> None:
    if not 0 < buf_len <= _MAX_LOG_BUF_LEN or buf_len & (buf_len - 1):  # the kernel rounds it to a power of 2
        raise KernelError(f"log_buf_len {buf_len} is impossible")
    _fits(mem, f"log_buf_len {buf_len}", buf_len)


def _walk_structured(buf: _Area, first: int, nxt: int, hdr: int, o_ts: int, o_len: int, o_tl: int, o_fac: int,
                     bo: str, log: PrintkLog) -> None:
    """Follow the records from ``first`` to ``nxt``; stops (log marked partial) at the first inconsistency."""
    buf_len = buf.length

    def rec_len(p: int) -> int:
        return buf.uint(p + o_len, 2, bo)

    ptr = first
    seen: set[int] = set()
    # Each record is at least a header long: that bounds the walk.
    for _ in range(buf_len // hdr + 2):
        if ptr == nxt:
            return
        if ptr in seen:
            log.damage(f"cycle in log_buf records at index {ptr}")
            return
        seen.add(ptr)
        # A len == 0 record marks the end of the buffer: the record is at 0.
        length = rec_len(ptr)
        rec = 0 if length == 0 else ptr
        text_len = buf.uint(rec + o_tl, 2, bo)
        start = rec + hdr
        if start + text_len > buf_len:
            log.damage(f"record at index {rec} runs past the end of log_buf")
            text_len = max(buf_len - start, 0)
        flags_byte = buf.byte(rec + o_fac + 1)
        level, flags = _level_flags(flags_byte, bo) if flags_byte is not None else (0, 0)
        log.records.append(PrintkRecord(
            text=buf.read(start, text_len),
            ts_nsec=buf.uint(rec + o_ts, 8, bo),
            level=level,
            facility=buf.byte(rec + o_fac),
            flags=flags,
            damaged=buf.damaged(rec, start + text_len - rec),
        ))
        step = rec_len(0) if length == 0 else length
        if step == 0:
            log.damage(f"zero-length record at index {rec}")
            return
        ptr = rec + step
        if ptr > buf_len - hdr and ptr != nxt:
            log.damage(f"index {ptr} outside log_buf of {buf_len} bytes")
            return
    log.damage("log_buf walk did not reach log_next_idx")


# -- before v3.5: plain character ring ------------------------------------------
_PLAIN_LINE = re.compile(rb"^(?:<(\d)>)?(?:\[\s*(\d+)\.(\d+)\]\s?)?(.*)$", re.S)


def _plain_log(mem: KernelMemory, info: VmcoreInfo, log: PrintkLog) -> None:
    buf_va = mem.read_pointer(info.require_symbol("log_buf"))
    buf_len = mem.read_s32(info.require_symbol("log_buf_len"))
    end_sym = info.require_symbol("log_end")
    # log_end became "unsigned" (from unsigned long) in v2.6.25.
    ver = info.kernel_version()
    log_end = mem.read_ulong(end_sym) if ver is not None and ver < (2, 6, 25) else mem.read_u32(end_sym)
    _check_log_buf_len(mem, buf_len)
    buf = _Area(mem, buf_va, buf_len)
    # Unreadable pages are left out rather than zero-filled: the text is printed as-is.
    if log_end < buf_len:
        raw = buf.readable(0, log_end)
    else:
        index = log_end & (buf_len - 1)
        raw = buf.readable(index, buf_len - index) + buf.readable(0, index)
    if bad := buf.unreadable_bytes():
        log.damage(f"log_buf: {bad} bytes unreadable")
    log.raw = raw
    for line in raw.split(b"\n"):
        if not line:
            continue
        m = _PLAIN_LINE.match(line)
        assert m is not None  # the pattern matches any string
        lvl, sec, frac, text = m.groups()
        ts = int(sec) * 1_000_000_000 + int(frac.ljust(9, b"0")[:9]) if sec is not None and frac is not None else None
        log.records.append(PrintkRecord(text=text, ts_nsec=ts, level=int(lvl) if lvl else None))


def get_printk_log(mem: KernelMemory, vmcoreinfo: VmcoreInfo | None = None) -> PrintkLog:
    """The kernel log in whichever layout the kernel used.

    Raises :class:`KernelError` when VMCOREINFO lacks what any layout needs or
    the ring header itself is unreadable; damage further in yields a partial
    log.
    """
    info = vmcoreinfo if vmcoreinfo is not None else mem.vmcoreinfo
    if info.symbol("prb") is not None:
        log = PrintkLog("lockless")
        reader = _lockless_records
    elif info.symbol("log_buf") is None or info.symbol("log_buf_len") is None:
        raise KernelError("VMCOREINFO has neither SYMBOL(prb) nor SYMBOL(log_buf)/SYMBOL(log_buf_len): no kernel log")
    elif info.symbol("log_end") is not None:
        log = PrintkLog("plain")
        reader = _plain_log
    else:
        log = PrintkLog("structured")
        reader = _structured_records
    try:
        reader(mem, info, log)
    except KernelError:
        raise
    except KdumpkitError as e:
        raise KernelError(f"cannot read the {log.format} kernel log: {e}") from None
    if any(r.damaged for r in log.records) and not log.partial:
        log.damage("some records have unreadable bytes")
    return log


# -- output formats ------------------------------------------------------------
_SIGNED_CHAR_ARCHES = frozenset({"x86_64", "i386", "i486", "i586", "i686", "x86", "mips", "mips64", "sparc64"})
_PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\v\f\r")


def _records_of(log: PrintkLog | Iterable[PrintkRecord]) -> Iterable[PrintkRecord]:
    return log.records if isinstance(log, PrintkLog) else log


def format_makedumpfile(log: PrintkLog | Iterable[PrintkRecord], arch: str = "x86_64") -> bytes:
    """``makedumpfile --dump-dmesg`` output, byte for byte (makedumpfile 1.7.2).

    Per record: ``"[%5lld.%06ld] "``, the text with each ``\\n`` followed by
    spaces up to the prefix width, bytes that are neither ``isprint`` nor
    ``isspace`` (C locale) as ``\\x%02x`` of a plain ``char`` — sign-extended
    (``\\xffffffc3``) where char is signed (x86) — and a final ``\\n``.  1.7.2
    prints no caller-id column (that came in 1.7.5).  A plain (pre-3.5)
    buffer is written unchanged.
    """
    if isinstance(log, PrintkLog) and log.format == "plain":
        return log.raw or b""
    signed = arch in _SIGNED_CHAR_ARCHES
    out = bytearray()
    for rec in _records_of(log):
        ts = rec.ts_nsec or 0
        prefix = b"[%5d.%06d] " % (ts // 1_000_000_000, (ts % 1_000_000_000) // 1000)
        out += prefix
        indent = b"\n" + b" " * len(prefix)
        for b in rec.text:
            if b == 0x0A:
                out += indent
            elif b in _PRINTABLE:
                out.append(b)
            elif b >= 0x80 and signed:
                out += b"\\xffffff%02x" % b
            else:
                out += b"\\x%02x" % b
        out += b"\n"
    return bytes(out)


def format_plain(log: PrintkLog | Iterable[PrintkRecord]) -> str:
    """``dmesg``-like text: ``[seconds.micros] message`` lines, UTF-8 decoded.

    Like dmesg(1), each line of a multi-line record gets the record's prefix.
    """
    if isinstance(log, PrintkLog) and log.format == "plain":
        return (log.raw or b"").decode("utf-8", "replace")
    lines = []
    for rec in _records_of(log):
        text = rec.text.decode("utf-8", "replace")
        if rec.ts_nsec is None:
            prefix = ""
        else:
            prefix = f"[{rec.ts_nsec // 1_000_000_000:5d}.{(rec.ts_nsec % 1_000_000_000) // 1000:06d}] "
        lines += [prefix + part for part in text.split("\n")]
    return "".join(line + "\n" for line in lines)


def format_json(log: PrintkLog) -> dict[str, object]:
    """A JSON-ready dict of the log and its completeness."""
    return {
        "format": log.format,
        "partial": log.partial,
        "problems": list(log.problems),
        "records": [
            {
                "seq": r.seq,
                "ts_nsec": r.ts_nsec,
                "level": r.level,
                "facility": r.facility,
                "caller": r.caller,
                "text": r.text.decode("utf-8", "replace"),
                **({"damaged": True} if r.damaged else {}),
            }
            for r in log.records
        ],
    }
