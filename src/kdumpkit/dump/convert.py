"""Write any readable dump in any writable format (``kdumpkit convert``).

Outputs are written under ``OUT.part`` and renamed when complete, so a
failed conversion never leaves something that looks like a finished dump.  A
source that is itself incomplete yields an output flagged incomplete (the
kdump INCOMPLETE status bit, the ELF ``e_flags`` bit): pages it lacks are never
passed off as merely excluded.
"""

from __future__ import annotations

import os
import sys
from typing import Any, BinaryIO

from kdumpkit.dump.base import Dump
from kdumpkit.dump.sink import FileSink, Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import CorruptDumpError, DumpError, KernelError, NoSpaceError, OutputError, UsageError

WRITE_FORMATS = ["elf", "kdump", "flat", "raw", "lime", "lkcd"]


def header_utsname(source: Dump) -> dict[str, str] | None:
    """The uname a kdump header carries, as makedumpfile writes it: the source's own, else ``init_uts_ns``.

    libkdumpfile (drgn, crash's diskdump reader less so) takes the architecture
    from it: a header without ``machine`` is unreadable there.
    """
    from kdumpkit.kernel.utsname import read_utsname

    uts = getattr(source, "utsname", None)
    got = uts() if callable(uts) else read_utsname(source)
    return dict(got) if got else None


def write_to_sink(source: Dump, sink: Sink, fmt: str, *, path: str = "", codec: str | None = "zlib",
                  exclude_zero: bool = False, dump_level: int = 0, elf_class: int = 64,
                  progress: Progress | None = None, workers: int = 1, force: bool = False) -> WriteStats:
    """Dispatch to the writer of ``fmt`` (``flat`` = kdump-compressed in a flattened stream)."""
    from kdumpkit.dump.missing import check_recordable

    check_recordable(source, fmt)  # missing pages are recorded as missing, or nothing is written
    if fmt == "elf":
        from kdumpkit.dump.elf import write_elf

        return write_elf(source, sink, elf_class=elf_class, exclude_zero=exclude_zero, progress=progress)
    if fmt in ("kdump", "flat"):
        from kdumpkit.dump.kdump import write_kdump

        stats: WriteStats = write_kdump(source, sink, codec=codec, exclude_zero=exclude_zero, dump_level=dump_level,
                                        utsname=header_utsname(source), progress=progress, workers=workers)
        return stats
    if fmt == "lime":
        from kdumpkit.dump.lime import write_lime

        return write_lime(source, sink, progress=progress)
    if fmt == "raw":
        from kdumpkit.dump.raw import write_raw

        return write_raw(source, sink, path, force=force, progress=progress)
    if fmt == "lkcd":
        from kdumpkit.dump.lkcd import write_lkcd

        return write_lkcd(source, sink, exclude_zero=exclude_zero, utsname=header_utsname(source), progress=progress)
    raise UsageError(f"cannot write format {fmt!r} (writable: {', '.join(WRITE_FORMATS)})")


def check_limits(source: Dump, fmt: str, *, elf_class: int = 64, exclude_zero: bool = False,
                 free_bytes: int | None = None, where: str = "the output file system") -> None:
    """Refuse, before any output exists, what the source cannot justify or the output cannot hold.

    Checked once here rather than in each writer: a RAM map beyond the
    architecture's physical address space (no field of any format then
    overflows), a VMCOREINFO page size that disagrees with the pages (an ELF
    output would be read back with the wrong one), ELF32's 4 GiB, and the
    bytes the output will certainly take against ``free_bytes`` — a LiME file
    holds every RAM byte, so a lying RAM map would otherwise fill the disk
    before failing.
    """
    from kdumpkit.dump.elf import max_phys_addr

    ps = source.page_size
    ram = source.ram_runs()
    top = max(ram[-1][1] if ram else 0, source.max_pfn) * ps
    limit = max_phys_addr(source.arch)
    if top > limit:
        raise CorruptDumpError(f"{source.path}: memory map reaches {top:#x}, beyond the "
                               f"{limit.bit_length() - 1}-bit physical address space of {source.arch}")
    _check_vmcoreinfo_page_size(source)
    if not ram and fmt in ("lime", "raw"):  # formats that are nothing but memory
        raise DumpError(f"{source.path} holds no RAM: a {fmt} output would be an empty file")
    if fmt == "elf" and elf_class == 32 and top > 1 << 32:
        raise UsageError("memory above 4 GiB needs an ELF64 dump")
    if free_bytes is None:
        return
    need = _minimum_output_bytes(source, fmt, ram, top, exclude_zero)
    if need > free_bytes:
        raise NoSpaceError(f"{fmt} output needs at least {need} bytes, only {free_bytes} are free in {where}")


def _free_bytes(directory: str) -> int | None:
    """Bytes an unprivileged writer may still use in ``directory``'s file system (None: unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _check_vmcoreinfo_page_size(source: Dump) -> None:
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

    raw = source.vmcoreinfo_raw()
    if not raw:
        return
    try:
        vmci_ps = VmcoreInfo.from_text(raw).page_size
    except KernelError as e:
        raise CorruptDumpError(f"{source.path}: {e}") from None
    if vmci_ps is not None and vmci_ps != source.page_size:
        raise CorruptDumpError(f"{source.path}: VMCOREINFO PAGESIZE={vmci_ps} but the dump's pages are "
                               f"{source.page_size} bytes")


def _minimum_output_bytes(source: Dump, fmt: str, ram: list[tuple[int, int]], top: int, exclude_zero: bool) -> int:
    """Bytes ``fmt`` will write whatever the compression: a lower bound, exact where it is cheap."""
    ps = source.page_size
    ram_pages = sum(e - s for s, e in ram)
    dumped = 0 if exclude_zero else sum(e - s for s, e in source.dumped_runs())
    if fmt == "lime":
        return ram_pages * ps + 32 * len(ram)  # every RAM page, excluded ones as zeros
    if fmt in ("kdump", "flat"):
        return 2 * -(-top // ps // 8) + 24 * dumped  # two bitmaps over max_mapnr, a page_desc per page
    if fmt in ("elf", "raw"):
        return dumped * ps
    return 16 * dumped  # lkcd: a page record header per page


def convert(source: Dump, out: str, fmt: str, *, force: bool = False, **kw: Any) -> WriteStats:
    """Convert ``source`` into ``out`` (``-`` = stdout, flattened formats only)."""
    if fmt not in WRITE_FORMATS:
        raise UsageError(f"cannot write format {fmt!r} (writable: {', '.join(WRITE_FORMATS)})")
    out_dir = os.path.dirname(os.path.abspath(out))
    check_limits(source, fmt, elf_class=kw.get("elf_class", 64), exclude_zero=kw.get("exclude_zero", False),
                 free_bytes=None if out == "-" else _free_bytes(out_dir), where=out_dir)
    if out == "-":
        if fmt != "flat":
            raise UsageError("only --format flat can be written to standard output")
        from kdumpkit.dump.flattened import FlattenedSink

        stream: BinaryIO = sys.stdout.buffer
        with FlattenedSink(stream) as fsink:
            return write_to_sink(source, fsink, fmt, **kw)
    if os.path.exists(out) and not force:
        raise OutputError(f"{out} exists (will not overwrite; use --force)")
    part = out + ".part"
    # The raw writer puts OUT.memmap and OUT.notes beside the image: a failure removes those it created.
    sides = [p for p in (out + ".memmap", out + ".notes") if fmt == "raw" and not os.path.exists(p)]
    sink: Sink
    if fmt == "flat":
        from kdumpkit.dump.flattened import FlattenedSink

        fd = FileSink(part, overwrite=True).fd
        sink = FlattenedSink(os.fdopen(fd, "wb"))
    else:
        sink = FileSink(part, overwrite=True)
    try:
        stats = write_to_sink(source, sink, fmt, path=out, force=force, **kw)
        sink.close()
    except BaseException:
        sink.abort()
        for leftover in (part, *sides):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise
    os.replace(part, out)
    return stats
