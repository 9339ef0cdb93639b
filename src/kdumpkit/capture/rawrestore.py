"""``kdumpkit restore-raw DEV DIR``: the next boot's half of the raw-device target.

The capture kernel wrote a kdumpkit header, the kernel log, a flattened
vmcore stream and the manifest onto the device (see :mod:`.targets`).  Here
they become an ordinary crash folder; the stream is reassembled on the fly
(no second copy of the dump), and a stream cut short by a reset keeps every
whole record — the kdump header inside still says INCOMPLETE.  Afterwards
the magic is wiped so the same dump is not restored twice (kdumpctl does
the same).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from kdumpkit.capture.dmesg import fsync_dir, write_synced
from kdumpkit.capture.targets import KALLSYMS_NAME, RAW_COMPLETE, RAW_HEADER, RAW_MAGIC
from kdumpkit.dump.flattened import FLAT_HEADER, FLAT_HEADER_SIZE, FLAT_RECORD, FLAT_SIGNATURE, TYPE_FLAT_HEADER
from kdumpkit.dump.sink import open_dump_output
from kdumpkit.errors import NoSpaceError, NotADumpError, OutputError
from kdumpkit.structs import Record

CHUNK = 4 << 20


@dataclass
class Restored:
    folder: str
    complete: bool
    vmcore_size: int
    stream_complete: bool


def read_header(fd: int) -> Record | None:
    head = os.pread(fd, RAW_HEADER.size, 0)
    if len(head) < RAW_HEADER.size:
        return None
    h = RAW_HEADER.unpack(head)
    return h if h.magic == RAW_MAGIC else None


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def restore_raw(device: str, out_dir: str, *, wipe: bool = True, log: Callable[[str], None] | None = None) -> Restored:
    say = log or (lambda msg: None)
    try:
        fd = os.open(device, os.O_RDWR if wipe else os.O_RDONLY)
    except OSError as e:
        raise OutputError(f"cannot open {device}: {e.strerror}") from None
    try:
        h = read_header(fd)
        if h is None:
            raise NotADumpError(f"{device}: no kdumpkit raw dump (nothing to restore)")
        crash_id = _cstr(h.crash_id) or "raw"
        os.makedirs(out_dir, mode=0o700, exist_ok=True)
        folder = os.path.join(out_dir, crash_id)
        n = 0
        while os.path.lexists(folder):
            n += 1
            folder = os.path.join(out_dir, f"{crash_id}.{n}")
        os.mkdir(folder, 0o700)
        if h.dmesg_len:
            write_synced(os.path.join(folder, "dmesg.txt"), os.pread(fd, h.dmesg_len, h.dmesg_off))
        if h.kallsyms_len:
            write_synced(os.path.join(folder, KALLSYMS_NAME), os.pread(fd, h.kallsyms_len, h.kallsyms_off))
        end = h.stream_off + h.stream_len if h.stream_len else os.lseek(fd, 0, os.SEEK_END)
        complete = bool(h.flags & RAW_COMPLETE)
        name = "vmcore" if complete else "vmcore.incomplete"
        size, stream_ok = _reassemble(fd, h.stream_off, end, os.path.join(folder, name))
        if h.manifest_len:
            write_synced(os.path.join(folder, "manifest.json"), os.pread(fd, h.manifest_len, h.manifest_off))
        fsync_dir(folder)
        if not (complete and stream_ok):
            say(f"{device}: the capture did not finish; restored what was written as {name}")
        if wipe:
            os.pwrite(fd, bytes(len(RAW_MAGIC)), 0)
            os.fsync(fd)
        return Restored(folder, complete and stream_ok, size, stream_ok)
    finally:
        os.close(fd)


def _reassemble(fd: int, start: int, end: int, out_path: str) -> tuple[int, bool]:
    """Apply the flattened records in ``[start, end)`` of ``fd`` to a new file; (size, end marker seen)."""
    head = os.pread(fd, FLAT_HEADER_SIZE, start)
    if len(head) < FLAT_HEADER.size:
        raise NotADumpError("raw target: no flattened stream")
    fh = FLAT_HEADER.unpack(head)
    if fh.signature != FLAT_SIGNATURE or fh.type != TYPE_FLAT_HEADER:
        raise NotADumpError("raw target: the vmcore stream never started")
    out = open_dump_output(out_path)
    size = 0
    ok = False
    try:
        pos = start + FLAT_HEADER_SIZE
        while pos + FLAT_RECORD.size <= end:
            r = FLAT_RECORD.unpack(os.pread(fd, FLAT_RECORD.size, pos))
            if r.offset == -1 and r.buf_size == -1:
                ok = True
                break
            if r.offset < 0 or r.buf_size <= 0 or pos + FLAT_RECORD.size + r.buf_size > end:
                break
            pos += FLAT_RECORD.size
            left, off = r.buf_size, r.offset
            while left:
                data = os.pread(fd, min(CHUNK, left), pos)
                if not data:
                    break
                _pwrite_all(out, data, off, out_path)
                pos += len(data)
                off += len(data)
                left -= len(data)
            size = max(size, off)
        if os.fstat(out).st_size < size:
            os.ftruncate(out, size)
        os.fsync(out)
    finally:
        os.close(out)
    return size, ok


def _pwrite_all(fd: int, data: bytes, off: int, path: str) -> None:
    view = memoryview(data)
    while len(view):
        try:
            n = os.pwrite(fd, view, off)
        except OSError as e:
            if e.errno in (28, 122):
                raise NoSpaceError(path) from None
            raise OutputError(f"writing {path}: {e.strerror}") from None
        view, off = view[n:], off + n
