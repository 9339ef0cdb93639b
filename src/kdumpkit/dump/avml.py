"""AVML memory images: LiME v1 without zero blocks, or Snappy-compressed blocks.

AVML (microsoft/avml, ``src/image.rs``) writes one 32-byte LiME-style header
per block of at most 16 MiB and skips blocks that are entirely zero, so the
plain output is a LiME file whose ranges have gaps that were RAM.  With
``--compress`` the header magic is ``AVML`` (0x4C4D5641), version 2, the
same ``s_addr``/``e_addr`` (inclusive) fields, and the block's bytes are a
Snappy *framing-format* stream followed by a little-endian u64 holding the
stream's length (``end - begin`` in ``Image::handle_block``).

Plain AVML files are read by :mod:`kdumpkit.dump.lime` already (same magic);
this module reads the compressed variant, and writes both: the writer is how
tests round-trip "AVML compressed <-> ours" without the avml binary.
Compressed blocks are decompressed on demand, one block cached, so memory
stays bounded by the 16 MiB block size.
"""

from __future__ import annotations

import bisect

import numpy as np

from kdumpkit.dump.base import Buffer, Dump, DumpInfo, Note, PageState, merge_runs, subtract_runs
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.dump.lime import LIME_HEADER, LIME_MAGIC
from kdumpkit.dump.sink import Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import CorruptDumpError, NotADumpError, UnsupportedCompressionError, UsageError

AVML_MAGIC = 0x4C4D5641  # b"AVML" read as a little-endian u32
AVML_VERSION = 2
MAX_BLOCK_SIZE = 0x1000 * 0x1000  # AVML's block limit: 16 MiB
TRAILER = 8


def _snappy() -> object:
    try:
        import cramjam
    except ImportError:
        raise UnsupportedCompressionError("AVML compressed blocks need cramjam (snappy framing format)") from None
    return cramjam.snappy


class _Block:
    __slots__ = ("start", "end", "data_off", "data_len")

    def __init__(self, start: int, end: int, data_off: int, data_len: int) -> None:
        self.start, self.end, self.data_off, self.data_len = start, end, data_off, data_len


class AvmlDump(Dump):
    """A compressed AVML image (version 2 headers); every block is RAM, gaps between blocks are zero RAM."""

    format_name = "avml"

    @classmethod
    def probe(cls, src: ByteSource) -> bool:
        return src.size >= LIME_HEADER.size and int.from_bytes(src.read(0, 4), "little") == AVML_MAGIC

    def __init__(self, src: ByteSource, *, page_size: int = 4096, arch: str = "x86_64") -> None:
        if not self.probe(src):
            raise NotADumpError(f"{src.name}: no AVML header")
        self.src = src
        self.path = src.name
        self.page_size = page_size
        self.arch = arch
        self.byteorder = "little"
        self.truncated = not getattr(src, "complete", True)  # a flattened stream without its end marker
        self.blocks: list[_Block] = []
        missing: list[tuple[int, int]] = []  # a block cut short: its header says which pages it held
        ps = page_size
        off = 0
        while off < src.size:
            if src.size - off < LIME_HEADER.size:
                self.truncated = True
                break
            h = LIME_HEADER.unpack(src.read(off, LIME_HEADER.size), file_offset=off)
            if h.magic not in (AVML_MAGIC, LIME_MAGIC) or h.version not in (1, AVML_VERSION):
                raise CorruptDumpError(f"bad AVML header at offset {off} (magic {h.magic:#x}, version {h.version})")
            if h.e_addr < h.s_addr or h.s_addr % ps or (h.e_addr + 1) % ps:
                raise CorruptDumpError(f"AVML block at offset {off}: range {h.s_addr:#x}-{h.e_addr:#x} not page-aligned")
            length = h.e_addr - h.s_addr + 1
            data_off = off + LIME_HEADER.size
            if h.version == 1:  # a plain block (mixed files are not written by avml, but cost nothing)
                if data_off + length > src.size:
                    self.truncated = True
                    missing.append((h.s_addr // ps, (h.e_addr + 1) // ps))
                    break
                self.blocks.append(_Block(h.s_addr // ps, (h.e_addr + 1) // ps, data_off, -length))
                off = data_off + length
                continue
            if length > MAX_BLOCK_SIZE * 16:
                raise CorruptDumpError(f"AVML block at offset {off} claims {length} bytes")
            # The trailer after the snappy stream says how long the stream is; the
            # stream's own end is only known by decoding it, so find the trailer by
            # scanning framing chunks (each has a 4-byte header with a 24-bit length).
            end = self._frame_end(data_off)
            if end is None or end + TRAILER > src.size:
                self.truncated = True
                missing.append((h.s_addr // ps, (h.e_addr + 1) // ps))
                break
            clen = int.from_bytes(src.read(end, TRAILER), "little")
            if clen != end - data_off:
                raise CorruptDumpError(f"AVML block at offset {off}: trailer says {clen} bytes, stream has {end - data_off}")
            self.blocks.append(_Block(h.s_addr // ps, (h.e_addr + 1) // ps, data_off, clen))
            off = end + TRAILER
        self.blocks.sort(key=lambda b: b.start)
        self._starts = [b.start for b in self.blocks]
        self._dumped = merge_runs((b.start, b.end) for b in self.blocks)
        self._missing = subtract_runs(merge_runs(missing), self._dumped)
        self._ram = merge_runs(self._dumped + self._missing)
        self.max_pfn = self._ram[-1][1] if self._ram else 0
        self.incomplete = self.truncated
        self._cache: tuple[int, bytes] | None = None

    def _frame_end(self, off: int) -> int | None:
        """Offset just past the snappy framing stream starting at ``off`` (None if cut short)."""
        src = self.src
        if off + 10 > src.size or src.read(off, 10) != b"\xff\x06\x00\x00sNaPpY":
            raise CorruptDumpError(f"AVML block at offset {off - LIME_HEADER.size}: no snappy stream identifier")
        pos = off + 10
        while True:
            # The u64 trailer (the stream's length) may start with any byte, so it is
            # recognised by its value before the bytes are taken as a chunk header;
            # a chunk header whose 8 bytes equal the offset so far would need a zero CRC.
            if pos + TRAILER <= src.size and int.from_bytes(src.read(pos, TRAILER), "little") == pos - off:
                return pos
            if pos + 4 > src.size:
                return None
            head = src.read(pos, 4)
            ctype = head[0]
            clen = int.from_bytes(head[1:4], "little")
            if ctype in (0x00, 0x01) or ctype >= 0x80:
                if pos + 4 + clen > src.size:
                    return None
                pos += 4 + clen
                continue
            raise CorruptDumpError(f"snappy stream at offset {off}: bad chunk type {ctype:#x} at {pos}")

    # -- Dump primitives --------------------------------------------------------
    def ram_runs(self) -> list[tuple[int, int]]:
        # AVML drops all-zero blocks; where they were is unknowable, so RAM is what is stored (or cut short).
        return list(self._ram)

    def dumped_runs(self) -> list[tuple[int, int]]:
        return list(self._dumped)

    def missing_runs(self) -> list[tuple[int, int]]:
        return list(self._missing)

    def _block(self, pfn: int) -> _Block | None:
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i >= 0 and pfn < self.blocks[i].end:
            return self.blocks[i]
        return None

    def page_state(self, pfn: int) -> PageState:
        if self._block(pfn) is not None:
            return PageState.DUMPED
        return PageState.MISSING if any(s <= pfn < e for s, e in self._missing) else PageState.NOT_RAM

    def _block_bytes(self, b: _Block) -> bytes:
        if self._cache is not None and self._cache[0] == b.data_off:
            return self._cache[1]
        want = (b.end - b.start) * self.page_size
        if b.data_len < 0:
            data = self.src.read(b.data_off, -b.data_len)
        else:
            snappy = _snappy()
            try:
                data = bytes(snappy.decompress(self.src.read(b.data_off, b.data_len)))  # type: ignore[attr-defined]
            except Exception as e:  # cramjam raises its own DecompressionError
                raise CorruptDumpError(f"AVML block at offset {b.data_off}: snappy: {e}") from None
        if len(data) != want:
            raise CorruptDumpError(f"AVML block at offset {b.data_off} holds {len(data)} bytes, expected {want}")
        self._cache = (b.data_off, data)
        return data

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        ps = self.page_size
        out = bytearray()
        q = pfn
        while q < pfn + count:
            b = self._block(q)
            if b is None:
                raise CorruptDumpError(f"pfn {q:#x} has no data")
            n = min(b.end, pfn + count) - q
            data = self._block_bytes(b)
            out += data[(q - b.start) * ps:(q - b.start + n) * ps]
            q += n
        return bytes(out)

    def notes(self) -> list[Note]:
        return []

    def info(self) -> DumpInfo:
        return DumpInfo("avml", {"blocks": len(self.blocks), "compression": "snappy (framing format)",
                                 "truncated": self.truncated,
                                 "note": "AVML skips all-zero blocks: gaps may have been zero RAM"})

    def close(self) -> None:
        self._cache = None
        self.src.close()


def _blocks_of(source: Dump, batch_pages: int) -> list[tuple[int, int]]:
    """AVML's blocks: dumped runs cut every ``batch_pages`` (the writer drops the all-zero ones)."""
    out: list[tuple[int, int]] = []
    for start, end in source.dumped_runs():
        for pfn in range(start, end, batch_pages):
            out.append((pfn, min(end, pfn + batch_pages)))
    return out


def write_avml(source: Dump, sink: Sink, *, compress: bool = True, progress: Progress | None = None) -> WriteStats:
    """Write ``source`` as AVML does: 16 MiB blocks, all-zero blocks skipped, snappy-framed if ``compress``.

    Excluded pages are not RAM to AVML; notes are dropped (the stats say how
    many).  AVML cannot say "missing" or "incomplete": an incomplete source is
    refused (:mod:`kdumpkit.dump.missing`).
    """
    from kdumpkit.dump.missing import check_recordable

    check_recordable(source, "avml")
    ps = source.page_size
    per_block = MAX_BLOCK_SIZE // ps
    blocks = _blocks_of(source, per_block)
    total = sum(e - s for s, e in blocks)
    snappy = _snappy() if compress else None
    off = done = written = skipped = 0
    for start, end in blocks:
        data = bytes(source._read_dumped(start, end - start))
        done += end - start
        if not np.frombuffer(data, dtype=np.uint8).any():
            skipped += end - start
            continue
        magic, version = (AVML_MAGIC, AVML_VERSION) if compress else (LIME_MAGIC, 1)
        sink.pwrite(off, LIME_HEADER.pack(magic=magic, version=version, s_addr=start * ps, e_addr=end * ps - 1))
        off += LIME_HEADER.size
        if snappy is not None:
            payload = bytes(snappy.compress(data))  # type: ignore[attr-defined]
            sink.pwrite(off, payload)
            sink.pwrite(off + len(payload), len(payload).to_bytes(TRAILER, "little"))
            off += len(payload) + TRAILER
        else:
            sink.pwrite(off, data)
            off += len(data)
        written += end - start
        if progress:
            progress(done, total)
    if off == 0:
        raise UsageError("every page is zero: AVML would write an empty file")
    return WriteStats("avml", pages_written=written, zero_pages=skipped, bytes_written=off,
                      compression="snappy" if compress else "none",
                      extra={"notes_dropped": len(source.notes())})
