"""Live, non-disruptive dumps of the running kernel from ``/proc/kcore``.

``/proc/kcore`` is an ELF core of the *kernel's virtual* address space
(fs/proc/kcore.c): PT_LOADs for the kernel text, vmalloc, modules, vmemmap
and the direct map of RAM ("KCORE_RAM").  Since Linux 4.x ``p_paddr`` of the
text and RAM entries holds the physical address (others have ``-1``), so the
direct-map segments — those with ``p_vaddr - p_paddr`` equal to the
direct-map base — give physical memory.  This module builds a physical
:class:`Dump` over exactly those, adds the running kernel's VMCOREINFO
(``/sys/kernel/vmcoreinfo`` → the note in memory, or kcore's own note), and
hands it to the same pipeline as ``save`` (:func:`capture.engine.save_to_file`).

A live dump is **not a consistent snapshot**: memory changes while it is read,
so page tables, lists and counters may disagree with each other.  The result
and the manifest say so; no NT_PRSTATUS is invented (there is no crashed CPU).

kcore cannot be mmapped reliably and its ``st_size`` is the size of the whole
virtual space, so it is read with ``pread`` only (:class:`PreadSource`).
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kdumpkit.dump.base import Buffer, DumpInfo, Note
from kdumpkit.dump.elf import EHDR64, PHDR64, PT_LOAD, PT_NOTE
from kdumpkit.dump.elfnotes import parse_notes
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.dump.segments import Segment, SegmentDump
from kdumpkit.errors import DumpError, KdumpkitError, NotADumpError, TruncatedDumpError, UsageError

KCORE = "/proc/kcore"
SYSFS_VMCOREINFO = "/sys/kernel/vmcoreinfo"
NOT_PHYS = 0xFFFFFFFFFFFFFFFF
CONSISTENCY_WARNING = ("live dump: memory was read while the kernel ran, so this is NOT a consistent snapshot "
                       "(structures may be torn or out of date)")
MAX_PHNUM = 1 << 16


class PreadSource(ByteSource):
    """A file read with ``pread`` only (``/proc/kcore``: no mmap, a huge nominal size)."""

    def __init__(self, path: str) -> None:
        self.name = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            hint = " (needs root)" if isinstance(e, PermissionError) else ""
            raise DumpError(f"cannot open {path}: {e.strerror}{hint}") from None
        self.size = os.fstat(self._fd).st_size or (1 << 63)

    def view(self, offset: int, length: int) -> Buffer:
        self._check(offset, length)
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as e:
            raise DumpError(f"reading {self.name} at {offset}: {e.strerror}") from None
        if len(data) != length:
            raise TruncatedDumpError(f"short read of {length} bytes at {offset} in {self.name}", offset + len(data))
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def direct_map_segments(loads: list[Segment]) -> tuple[list[Segment], int | None]:
    """The PT_LOADs that map RAM through the direct map, and the direct-map base.

    The base is the most common ``p_vaddr - p_paddr`` among segments that have
    a physical address; the kernel text (mapped at ``__START_KERNEL_map``) has
    a different offset and is left out — its pages are in RAM anyway.
    """
    phys = [s for s in loads if s.paddr != NOT_PHYS and s.vaddr > s.paddr and s.memsz]
    votes = Counter(s.vaddr - s.paddr for s in phys if s.paddr)  # p_paddr 0 everywhere = a kernel before 4.x
    if not votes:
        return [], None
    base, _ = votes.most_common(1)[0]
    return sorted((s for s in phys if s.vaddr - s.paddr == base), key=lambda s: s.paddr), base


class KcoreDump(SegmentDump):
    """Physical memory of the running kernel through ``/proc/kcore`` (or a kcore-shaped ELF, for tests)."""

    format_name = "kcore"

    def __init__(self, src: ByteSource, *, vmcoreinfo: bytes | None = None, page_size: int | None = None,
                 vmcoreinfo_source: str = "") -> None:
        self.src = src
        self.path = src.name
        self.byteorder = "little"
        self.arch = os.uname().machine if src.name == KCORE else "x86_64"
        self.page_size = page_size or (os.sysconf("SC_PAGE_SIZE") if src.name == KCORE else 4096)
        head = src.read(0, EHDR64.size)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise NotADumpError(f"{src.name}: not a little-endian ELF64 kcore")
        eh = EHDR64.unpack(head)
        if eh.e_phnum > MAX_PHNUM or eh.e_phentsize != PHDR64.size:
            raise DumpError(f"{src.name}: {eh.e_phnum} program headers of {eh.e_phentsize} bytes")
        table = src.read(eh.e_phoff, eh.e_phnum * PHDR64.size)
        loads: list[Segment] = []
        kcore_notes: list[Note] = []
        for i in range(eh.e_phnum):
            ph = PHDR64.unpack(table, i * PHDR64.size)
            if ph.p_type == PT_LOAD:
                loads.append(Segment(ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz, ph.p_vaddr))
            elif ph.p_type == PT_NOTE and 0 < ph.p_filesz <= 1 << 20:
                kcore_notes += parse_notes(src.read(ph.p_offset, ph.p_filesz))
        ram, self.direct_base = direct_map_segments(loads)
        if not ram:
            raise DumpError(f"{src.name}: no direct-map RAM segments with physical addresses (kernel older than 4.x?)")
        self.segments = ram
        self._map_segments(ram)
        self.incomplete = False
        if vmcoreinfo is None:
            vmcoreinfo = next((n.desc for n in kcore_notes if n.name == "VMCOREINFO"), None)
            vmcoreinfo_source = "kcore note" if vmcoreinfo is not None else ""
        self._vmcoreinfo = vmcoreinfo
        self.vmcoreinfo_source = vmcoreinfo_source or ("none" if vmcoreinfo is None else "given")

    def direct_map_base(self) -> int | None:
        return self.direct_base

    def notes(self) -> list[Note]:
        return [Note("VMCOREINFO", 0, self._vmcoreinfo)] if self._vmcoreinfo is not None else []

    def info(self) -> DumpInfo:
        return DumpInfo("kcore", {"live": True, "consistent": False, "warning": CONSISTENCY_WARNING,
                                  "ram_segments": len(self.segments),
                                  "direct_map_base": hex(self.direct_base) if self.direct_base is not None else None,
                                  "vmcoreinfo_source": self.vmcoreinfo_source})


def open_live(kcore: str = KCORE, sysfs: str = SYSFS_VMCOREINFO) -> KcoreDump:
    """The running kernel as a Dump (root only); VMCOREINFO from sysfs's pointer when it works."""
    text: bytes | None = None
    source = ""
    try:
        from kdumpkit.kernel._kcore import read_live_vmcoreinfo

        text = read_live_vmcoreinfo(sysfs, kcore)
        source = f"{sysfs} (note in memory)"
    except KdumpkitError:
        text = None
    return KcoreDump(PreadSource(kcore), vmcoreinfo=text, vmcoreinfo_source=source)


@dataclass
class LiveResult:
    """What ``kdumpkit live`` wrote."""

    directory: str
    vmcore: str
    manifest: str
    result: Any
    warnings: list[str] = field(default_factory=list)


def live_dump(out_dir: str, *, fmt: str = "kdump", codec: str | None = "zlib", dump_levels: tuple[int, ...] = (31,),
              kcore: str = KCORE, sysfs: str = SYSFS_VMCOREINFO, source: KcoreDump | None = None,
              progress: Any = None, log: Any = None) -> LiveResult:
    """Dump the running kernel into ``out_dir/live-<host>-<time>/`` with a manifest, like a capture.

    ``source`` replaces ``/proc/kcore`` (tests).  The manifest's ``status`` is
    ``live-inconsistent`` and it carries :data:`CONSISTENCY_WARNING`.
    """
    from kdumpkit.capture.engine import SaveOptions, save_to_file
    from kdumpkit.capture.manifest import MANIFEST_NAME, build_manifest, file_entry, manifest_bytes

    if not os.path.isdir(out_dir):
        raise UsageError(f"{out_dir} is not a directory")
    opts = SaveOptions(fmt=fmt, codec=codec if fmt != "elf" else None, dump_levels=dump_levels)
    host = socket.gethostname() or "localhost"
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    crash_id = f"live-{host}-{stamp}"
    folder = os.path.join(out_dir, crash_id)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        raise UsageError(f"{folder} exists") from None
    except OSError as e:
        raise UsageError(f"cannot create {folder}: {e.strerror}") from None
    t0 = time.monotonic()
    dump = source if source is not None else open_live(kcore, sysfs)
    warnings = [CONSISTENCY_WARNING]
    if dump.vmcoreinfo_raw() is None:
        warnings.append("no VMCOREINFO: dump levels above 1 and kernel analysis are unavailable")
    try:
        vmcore = os.path.join(folder, "vmcore")
        result = save_to_file(dump, vmcore, opts, progress=progress, log=log)
        files = {"vmcore": file_entry(vmcore)}
        manifest = build_manifest(crash_id=crash_id, hostname=host, dump=dump, target=f"local:{folder}",
                                  status="live-inconsistent", result=result, files=files,
                                  timings={"dump": time.monotonic() - t0}, problems=warnings)
        manifest["live"] = {"consistent": False, "warning": CONSISTENCY_WARNING,
                            "vmcoreinfo_source": dump.vmcoreinfo_source,
                            "direct_map_base": hex(dump.direct_base) if dump.direct_base is not None else None}
        mpath = os.path.join(folder, MANIFEST_NAME)
        fd = os.open(mpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(manifest_bytes(manifest))
    finally:
        if source is None:
            dump.close()
    return LiveResult(folder, vmcore, mpath, result, warnings)
