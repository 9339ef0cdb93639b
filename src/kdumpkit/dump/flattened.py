"""makedumpfile's flattened format (``-F``), read in place and written.

A flattened stream is a 4096-byte header followed by records ``(offset,
size, payload)`` — every positioned write of a seeking writer, serialised so
it can travel through a pipe or ssh (formats.md §4).  Fields are big-endian
whatever the architecture.

:class:`FlattenedFile` serves the *logical* file without reassembling it:
one pass reads only the record headers (payloads are skipped), then an index
sorted by target offset, with later records overriding earlier ones where
they overlap, maps every logical range to positions in the stream.  Any
format reader (kdump, ELF) then reads through it.  :class:`FlattenedSink`
turns any writer's ``pwrite`` calls into a stream; :func:`reassemble` is
``makedumpfile -R``.

A stream without its end marker lost its last writes.  Readers consult
``FlattenedFile.complete`` and flag the dump incomplete; :func:`reassemble`
writes ``OUT.part``, and on a stream cut short keeps OUT only when the dump
inside can carry the incomplete flag (kdump, ELF), setting it, and raises
:class:`StreamCutShortError` either way: a partial OUT never passes for a
complete dump.
"""

from __future__ import annotations

import errno
import heapq
import os
import sys
from collections.abc import Callable
from typing import IO

import numpy as np

from kdumpkit.dump.base import Buffer
from kdumpkit.dump.fileio import ByteSource, MappedFile
from kdumpkit.dump.sink import Sink, open_dump_output
from kdumpkit.errors import CorruptDumpError, NoSpaceError, NotADumpError, OutputError, TruncatedDumpError
from kdumpkit.structs import Struct

FLAT_SIGNATURE = b"makedumpfile\0\0\0\0"
FLAT_HEADER_SIZE = 4096  # MAX_SIZE_MDF_HEADER
TYPE_FLAT_HEADER = 1
VERSION_FLAT_HEADER = 1
FLAT_HEADER = Struct("makedumpfile_header", [("signature", "16s"), ("type", "q"), ("version", "q")], ">")
FLAT_RECORD = Struct("makedumpfile_data_header", [("offset", "q"), ("buf_size", "q")], ">")
END_MARKER = FLAT_RECORD.pack(offset=-1, buf_size=-1)
MAX_RECORD = 16 << 20  # split larger writes: bounds what a reassembler must buffer


def is_flattened(path_or_src: str | os.PathLike[str] | ByteSource) -> bool:
    """Whether a file starts with the flattened header (signature and type 1)."""
    if isinstance(path_or_src, ByteSource):
        if path_or_src.size < FLAT_HEADER.size:
            return False
        head = path_or_src.read(0, FLAT_HEADER.size)
    else:
        try:
            with open(path_or_src, "rb") as f:
                head = f.read(FLAT_HEADER.size)
        except OSError:
            return False
    return _valid_header(head)


def _valid_header(head: bytes) -> bool:
    if len(head) < FLAT_HEADER.size:
        return False
    h = FLAT_HEADER.unpack(head)
    return bool(h.signature == FLAT_SIGNATURE and h.type == TYPE_FLAT_HEADER)


class FlattenedFile(ByteSource):
    """The logical file a flattened stream describes, read in place.

    ``complete`` is False when the stream ends without its end marker (an
    interrupted transfer); the records present are still served, and every
    reader flags a dump read through an incomplete stream incomplete.
    """

    def __init__(self, raw: ByteSource) -> None:
        self.raw = raw
        self.name = raw.name
        if not is_flattened(raw):
            raise NotADumpError(f"{raw.name}: no makedumpfile flattened header")
        self.version = FLAT_HEADER.unpack(raw.read(0, FLAT_HEADER.size)).version
        offs, lens, poss, self.complete, self.records = _scan(raw)
        self._off, self._len, self._pos = _resolve(offs, lens, poss)
        self._end = self._off + self._len
        self.size = int(self._end.max()) if len(self._end) else 0
        self._off_list: list[int] = self._off.tolist()

    @classmethod
    def open(cls, path: str) -> FlattenedFile:
        return cls(MappedFile(path))

    def view(self, offset: int, length: int) -> Buffer:
        self._check(offset, length)
        if length == 0:
            return b""
        i = int(np.searchsorted(self._off, offset, side="right")) - 1
        if i >= 0:
            seg_off, seg_len, seg_pos = int(self._off[i]), int(self._len[i]), int(self._pos[i])
            if offset + length <= seg_off + seg_len:
                return self.raw.view(seg_pos + offset - seg_off, length)  # the common, zero-copy case
        out = bytearray(length)
        end = offset + length
        j = max(i, 0)
        while j < len(self._off_list):
            s = self._off_list[j]
            if s >= end:
                break
            e = s + int(self._len[j])
            if e > offset:
                a, b = max(s, offset), min(e, end)
                out[a - offset:b - offset] = self.raw.view(int(self._pos[j]) + a - s, b - a)
            j += 1
        return bytes(out)

    def segments(self) -> list[tuple[int, int, int]]:
        """The resolved index: ``(target_offset, length, stream_position)``."""
        return list(zip(self._off.tolist(), self._len.tolist(), self._pos.tolist(), strict=True))

    def close(self) -> None:
        self.raw.close()


def _scan(raw: ByteSource) -> tuple[list[int], list[int], list[int], bool, int]:
    """Read record headers only; returns offsets, sizes, payload positions, complete, count."""
    offs: list[int] = []
    lens: list[int] = []
    poss: list[int] = []
    pos = FLAT_HEADER_SIZE
    size = raw.size
    rsize = FLAT_RECORD.size
    while True:
        if pos + rsize > size:
            return offs, lens, poss, False, len(offs)
        h = FLAT_RECORD.unpack(raw.view(pos, rsize), file_offset=pos)
        if h.offset == -1 and h.buf_size == -1:
            return offs, lens, poss, True, len(offs)
        if h.offset < 0 or h.buf_size <= 0:
            raise CorruptDumpError(f"flattened record at {pos}: offset {h.offset}, size {h.buf_size}")
        if pos + rsize + h.buf_size > size:
            return offs, lens, poss, False, len(offs)  # payload cut short: ignore the partial record
        offs.append(h.offset)
        lens.append(h.buf_size)
        poss.append(pos + rsize)
        pos += rsize + h.buf_size


def _resolve(offs: list[int], lens: list[int], poss: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-overlapping segments sorted by offset; where records overlap the later wins.

    Sorting and overlap detection are vectorised; only clusters of
    overlapping records (a rewritten header, say) go through a sweep.
    """
    off = np.asarray(offs, dtype=np.int64)
    ln = np.asarray(lens, dtype=np.int64)
    pos = np.asarray(poss, dtype=np.int64)
    if len(off) == 0:
        return off, ln, pos
    seq = np.arange(len(off), dtype=np.int64)
    order = np.lexsort((seq, off))
    off, ln, pos, seq = off[order], ln[order], pos[order], seq[order]
    end = off + ln
    runmax = np.maximum.accumulate(end)
    overlaps = np.zeros(len(off), dtype=bool)
    overlaps[1:] = off[1:] < runmax[:-1]
    if not overlaps.any():
        return off, ln, pos
    starts = np.flatnonzero(~overlaps).tolist() + [len(off)]
    out_off: list[int] = []
    out_len: list[int] = []
    out_pos: list[int] = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        if b - a == 1:
            out_off.append(int(off[a]))
            out_len.append(int(ln[a]))
            out_pos.append(int(pos[a]))
            continue
        for s, length, p in _sweep(off[a:b].tolist(), end[a:b].tolist(), pos[a:b].tolist(), seq[a:b].tolist()):
            out_off.append(s)
            out_len.append(length)
            out_pos.append(p)
    return np.asarray(out_off, dtype=np.int64), np.asarray(out_len, dtype=np.int64), np.asarray(out_pos, dtype=np.int64)


def _sweep(offs: list[int], ends: list[int], poss: list[int], seqs: list[int]) -> list[tuple[int, int, int]]:
    """Paint overlapping records: each elementary interval belongs to the latest record covering it."""
    points = sorted(set(offs) | set(ends))
    by_start = sorted(range(len(offs)), key=lambda i: offs[i])
    heap: list[tuple[int, int]] = []  # (-seq, index)
    k = 0
    out: list[tuple[int, int, int]] = []
    for a, b in zip(points[:-1], points[1:], strict=True):
        while k < len(by_start) and offs[by_start[k]] <= a:
            i = by_start[k]
            heapq.heappush(heap, (-seqs[i], i))
            k += 1
        while heap and ends[heap[0][1]] <= a:
            heapq.heappop(heap)
        if not heap:
            continue
        i = heap[0][1]
        p = poss[i] + a - offs[i]
        if out and out[-1][0] + out[-1][1] == a and out[-1][2] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + b - a, out[-1][2])
        else:
            out.append((a, b - a, p))
    return out


class FlattenedSink(Sink):
    """Writes every ``pwrite`` as a flattened record onto a stream.

    ``stream`` is a binary file object or a file descriptor (stdout, a pipe,
    a socket).  The header goes out at once; ``close`` writes the end marker,
    ``abort`` does not (so a reader can tell the stream was cut short).
    The stream is closed only when ``close_stream``.
    """

    def __init__(self, stream: IO[bytes] | int, *, close_stream: bool = False) -> None:
        self._fd: int | None = stream if isinstance(stream, int) else None
        self._stream: IO[bytes] | None = None if isinstance(stream, int) else stream
        self._close_stream = close_stream
        self._done = False
        self.bytes_out = 0
        head = FLAT_HEADER.pack(signature=FLAT_SIGNATURE, type=TYPE_FLAT_HEADER, version=VERSION_FLAT_HEADER)
        self._write(head + bytes(FLAT_HEADER_SIZE - len(head)))

    def _write(self, data: Buffer) -> None:
        try:
            if self._fd is not None:
                view = memoryview(data)
                while len(view):
                    n = os.write(self._fd, view)
                    view = view[n:]
            else:
                assert self._stream is not None
                self._stream.write(data)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"writing flattened stream: {e.strerror or e}") from None
        self.bytes_out += len(data)

    def pwrite(self, offset: int, data: Buffer) -> None:
        if self._done:
            raise OutputError("flattened stream already finished")
        view = memoryview(data).cast("B")
        for i in range(0, len(view), MAX_RECORD):
            part = view[i:i + MAX_RECORD]
            self._write(FLAT_RECORD.pack(offset=offset + i, buf_size=len(part)))
            self._write(part)

    def _finish(self, marker: bool) -> None:
        if self._done:
            return
        self._done = True
        if marker:
            self._write(END_MARKER)
        if self._stream is not None:
            try:
                self._stream.flush()
            except OSError as e:
                raise OutputError(f"flushing flattened stream: {e.strerror or e}") from None
            if self._close_stream:
                self._stream.close()
        elif self._fd is not None and self._close_stream:
            os.close(self._fd)

    def close(self) -> None:
        self._finish(marker=True)

    def abort(self) -> None:
        self._finish(marker=False)


class StreamCutShortError(TruncatedDumpError):
    """The stream ended before its end marker; ``kept``: OUT was kept, flagged incomplete (exit 3), else removed."""

    def __init__(self, what: str, offset: int, *, kept: bool) -> None:
        super().__init__(what, offset)
        self.kept = kept
        self.exit_code = 3 if kept else 1


def reassemble(
    src_path: str,
    dst_path: str,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Stream a flattened file into a regular one (``makedumpfile -R``); returns its size.

    ``src_path`` ``"-"`` reads stdin.  Records are applied in stream order, so
    later ones override earlier ones; gaps stay sparse (read as zeros).
    ``progress(bytes_read, total_or_0)`` is called per record.  The file is
    written as ``dst_path.part`` and renamed when done; a stream cut short
    raises :class:`StreamCutShortError` after keeping OUT flagged incomplete
    (kdump, ELF) or removing it.
    """
    if os.path.lexists(dst_path) and not overwrite:
        raise OutputError(f"{dst_path} exists (will not overwrite a dump; use --force)")
    src: IO[bytes]
    if src_path == "-":
        src = sys.stdin.buffer
        total = 0
    else:
        try:
            src = open(src_path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise OutputError(f"cannot open {src_path}: {e.strerror}") from None
        total = os.fstat(src.fileno()).st_size
    part = dst_path + ".part"
    try:
        fd = open_dump_output(part, overwrite=True)
        try:
            size = _reassemble_stream(src, fd, part, total, progress)
        finally:
            os.close(fd)
    except TruncatedDumpError as e:
        raise _cut_short(part, dst_path, e) from None
    except BaseException:
        _unlink(part)
        raise
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    os.replace(part, dst_path)
    return size


def _cut_short(part: str, dst: str, err: TruncatedDumpError) -> StreamCutShortError:
    """Keep what a cut-short stream delivered only if the dump in it can say it is incomplete."""
    from kdumpkit.dump.missing import flag_file_incomplete

    if flag_file_incomplete(part):
        os.replace(part, dst)
        return StreamCutShortError(f"{err.what}: the stream ends without its end marker; "
                                   f"{dst} kept, flagged incomplete", err.offset, kept=True)
    _unlink(part)
    return StreamCutShortError(f"{err.what}: the stream ends without its end marker, and what it delivered "
                               f"cannot be flagged incomplete; {dst} not written", err.offset, kept=False)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read_exact(src: IO[bytes], n: int, what: str, pos: int) -> bytes:
    data = src.read(n)
    while data is not None and len(data) < n:
        more = src.read(n - len(data))
        if not more:
            break
        data += more
    if data is None or len(data) != n:
        raise TruncatedDumpError(what, pos + (len(data) if data else 0))
    return data


def _reassemble_stream(src: IO[bytes], fd: int, dst: str, total: int, progress: Callable[[int, int], None] | None) -> int:
    head = _read_exact(src, FLAT_HEADER_SIZE, "flattened header", 0)
    if not _valid_header(head):
        raise NotADumpError("no makedumpfile flattened header")
    pos = FLAT_HEADER_SIZE
    size = 0
    chunk = 1 << 20
    while True:
        h = FLAT_RECORD.unpack(_read_exact(src, FLAT_RECORD.size, "flattened record header", pos), file_offset=pos)
        pos += FLAT_RECORD.size
        if h.offset == -1 and h.buf_size == -1:
            break
        if h.offset < 0 or h.buf_size <= 0:
            raise CorruptDumpError(f"flattened record at {pos - FLAT_RECORD.size}: offset {h.offset}, size {h.buf_size}")
        left, off = h.buf_size, h.offset
        while left:
            data = _read_exact(src, min(chunk, left), "flattened record payload", pos)
            _pwrite_all(fd, data, off, dst)
            off += len(data)
            pos += len(data)
            left -= len(data)
        size = max(size, off)
        if progress is not None:
            progress(pos, total)
    if os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)
    return size


def _pwrite_all(fd: int, data: bytes, offset: int, path: str) -> None:
    view = memoryview(data)
    while len(view):
        try:
            n = os.pwrite(fd, view, offset)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"{path} at offset {offset}") from None
            raise OutputError(f"writing {path}: {e.strerror}") from None
        view = view[n:]
        offset += n
