"""The ELF core headers (elfcorehdr) a crash kernel is handed, and what the capture kernel makes of them.

Only ``kexec_load`` (``--mode classic``) needs userspace to build these; with
``kexec_file_load`` the kernel builds its own (``crash_prepare_elf64_headers``).
Both lay them out the same way, which is what :func:`build_elfcorehdr` emits:

1. one PT_NOTE per CPU: ``p_offset = p_paddr`` = physical address of that CPU's
   ``crash_notes`` buffer (``/sys/devices/system/cpu/cpuN/crash_notes``), size
   ``crash_notes_size`` (kexec-tools' default 1024 when the file is missing);
2. one PT_NOTE for VMCOREINFO (``/sys/kernel/vmcoreinfo``: note address and
   maximum note size, both hex);
3. one PT_LOAD for the kernel text mapping (x86_64): ``p_vaddr = _text``,
   ``p_paddr = p_offset`` = physical start of "Kernel code", size ``_end - _text``
   -- this is how makedumpfile finds ``phys_base`` without VMCOREINFO;
4. one PT_LOAD per RAM range: ``p_offset = p_paddr = start``, ``p_vaddr =
   page_offset + start`` (0 when the direct-map base is unknown),
   ``p_filesz = p_memsz = size``, RWX, ``p_align = 0``.

In the elfcorehdr ``p_offset`` is a *physical address in the crashed
kernel's memory*, not a file offset.  :func:`vmcore_view` replays what the
capture kernel's ``fs/proc/vmcore.c`` does with it (merge the PT_NOTEs into
one, give PT_LOADs page-granular file offsets), so a header can be checked
against a real ``/proc/vmcore`` before anyone crashes a machine.

The ELF structures are the ones declared in :mod:`kdumpkit.dump.elf`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.dump.elf import (
    EHDR64,
    EHDR_IDENT,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    ET_CORE,
    EV_CURRENT,
    PF_RWX,
    PHDR64,
    PT_LOAD,
    PT_NOTE,
)
from kdumpkit.dump.elfnotes import NHDR
from kdumpkit.errors import ConfigError, CorruptDumpError, KdumpkitError
from kdumpkit.structs import Record

EM_X86_64 = 62
ELF_CORE_HEADER_ALIGN = 4096
MAX_NOTE_BYTES = 1024                      # kexec-tools' default when crash_notes_size is missing
START_KERNEL_MAP = 0xFFFFFFFF80000000      # x86_64 __START_KERNEL_map


@dataclass(frozen=True)
class NoteRegion:
    """A buffer in the crashed kernel's memory that holds ELF notes."""

    paddr: int
    size: int


@dataclass(frozen=True)
class KernelText:
    """The kernel image mapping: virtual start (``_text``), physical start, size (``_end - _text``)."""

    vaddr: int
    paddr: int
    size: int


def build_elfcorehdr(cpu_notes: Sequence[NoteRegion], vmcoreinfo: NoteRegion | None,
                     kernel_text: KernelText | None, ram: Sequence[tuple[int, int]], *,
                     page_offset: int | None = None, machine: int = EM_X86_64,
                     align: int = ELF_CORE_HEADER_ALIGN) -> bytes:
    """The elfcorehdr bytes (ELF64 little-endian), zero-padded to ``align``.

    ``ram`` holds half-open physical ranges (see
    :func:`kdumpkit.kexec.iomem.crash_memory_ranges`).
    """
    for s, e in ram:
        if e <= s:
            raise ConfigError(f"empty or inverted RAM range [{s:#x}, {e:#x})")
    phdrs: list[bytes] = []
    for n in cpu_notes:
        phdrs.append(PHDR64.pack(p_type=PT_NOTE, p_offset=n.paddr, p_paddr=n.paddr, p_filesz=n.size, p_memsz=n.size))
    if vmcoreinfo is not None:
        v = vmcoreinfo
        phdrs.append(PHDR64.pack(p_type=PT_NOTE, p_offset=v.paddr, p_paddr=v.paddr, p_filesz=v.size, p_memsz=v.size))
    if kernel_text is not None:
        t = kernel_text
        phdrs.append(PHDR64.pack(p_type=PT_LOAD, p_flags=PF_RWX, p_offset=t.paddr, p_vaddr=t.vaddr, p_paddr=t.paddr,
                                 p_filesz=t.size, p_memsz=t.size, p_align=0))
    mask = (1 << 64) - 1
    for s, e in ram:
        vaddr = (page_offset + s) & mask if page_offset is not None else 0
        phdrs.append(PHDR64.pack(p_type=PT_LOAD, p_flags=PF_RWX, p_offset=s, p_vaddr=vaddr, p_paddr=s,
                                 p_filesz=e - s, p_memsz=e - s, p_align=0))
    if len(phdrs) >= 0xFFFF:
        raise ConfigError(f"{len(phdrs)} program headers: more than an elfcorehdr can carry")
    ident = EHDR_IDENT.pack(magic=ELFMAG, ei_class=ELFCLASS64, ei_data=ELFDATA2LSB, ei_version=EV_CURRENT)
    ehdr = EHDR64.pack(ident=ident, e_type=ET_CORE, e_machine=machine, e_version=EV_CURRENT,
                       e_phoff=EHDR64.size, e_ehsize=EHDR64.size, e_phentsize=PHDR64.size, e_phnum=len(phdrs))
    out = ehdr + b"".join(phdrs)
    return out + bytes(-len(out) % align)


def read_elfcorehdr(buf: bytes) -> tuple[Record, list[Record]]:
    """``(ehdr, [phdr, ...])`` of an elfcorehdr (ELF64 LE), with the checks the capture kernel makes."""
    if len(buf) < EHDR64.size or buf[:4] != ELFMAG:
        raise CorruptDumpError("elfcorehdr: no ELF magic")
    ident = EHDR_IDENT.unpack(buf)
    if ident.ei_class != ELFCLASS64 or ident.ei_data != ELFDATA2LSB:
        raise CorruptDumpError("elfcorehdr: not ELF64 little-endian")
    eh = EHDR64.unpack(buf)
    if eh.e_type != ET_CORE or eh.e_phentsize != PHDR64.size or eh.e_version != EV_CURRENT:
        raise CorruptDumpError(f"elfcorehdr: bad header (type {eh.e_type}, phentsize {eh.e_phentsize})")
    return eh, [PHDR64.unpack(buf, eh.e_phoff + i * PHDR64.size) for i in range(eh.e_phnum)]


# -- what the capture kernel serves as /proc/vmcore ----------------------------------
ReadPhys = Callable[[int, int], bytes]


def _note_bytes(buf: bytes) -> int:
    """Length of the notes in a crash_notes buffer: up to the empty terminator (vmcore.c)."""
    off = 0
    while off + NHDR.size <= len(buf):
        h = NHDR.unpack(buf, off)
        if h.n_namesz == 0:
            break
        size = NHDR.size + ((h.n_namesz + 3) & ~3) + ((h.n_descsz + 3) & ~3)
        if off + size > len(buf):
            break  # "Exceeded p_memsz, dropping PT_NOTE entry"
        off += size
    return off


def vmcore_view(elfcorehdr: bytes, read_phys: ReadPhys, *, page_size: int = 4096) -> tuple[list[Record], bytes]:
    """The program headers and merged note bytes ``/proc/vmcore`` would expose (Linux >= 3.11 layout).

    ``read_phys(paddr, size)`` reads the crashed kernel's memory.  PT_NOTEs
    are merged into one first PT_NOTE; PT_LOADs keep everything but get file
    offsets after the page-rounded header and note areas, each region
    page-granular (``p_offset`` congruent to ``p_paddr`` modulo the page).
    """
    eh, phdrs = read_elfcorehdr(elfcorehdr)
    notes = bytearray()
    loads = []
    for ph in phdrs:
        if ph.p_type == PT_NOTE:
            buf = read_phys(ph.p_offset, ph.p_memsz)
            notes += buf[:_note_bytes(buf)]
        elif ph.p_type == PT_LOAD:
            loads.append(ph)
    phnum = len(loads) + 1

    def roundup(n: int) -> int:
        return -(-n // page_size) * page_size

    elfsz = roundup(EHDR64.size + phnum * PHDR64.size)
    out = [Record(p_type=PT_NOTE, p_flags=0, p_offset=elfsz, p_vaddr=0, p_paddr=0, p_filesz=len(notes),
                  p_memsz=len(notes), p_align=0)]
    off = elfsz + roundup(len(notes))
    for ph in loads:
        start = ph.p_paddr - ph.p_paddr % page_size
        end = roundup(ph.p_paddr + ph.p_memsz)
        out.append(Record(ph, p_offset=off + ph.p_paddr - start))
        off += end - start
    return out, bytes(notes)


# -- reading the inputs from a live system -------------------------------------------
def read_cpu_notes(root: Path | str = "/") -> list[NoteRegion]:
    """Every CPU's ``crash_notes`` buffer, in CPU order; CPUs without the file are skipped."""
    base = Path(root) / "sys/devices/system/cpu"
    try:
        cpus = sorted(int(m.group(1)) for p in base.iterdir() if (m := re.fullmatch(r"cpu(\d+)", p.name)))
    except OSError as e:
        raise KdumpkitError(f"cannot list {base}: {e.strerror or e}") from e
    out = []
    for n in cpus:
        d = base / f"cpu{n}"
        try:
            addr = int((d / "crash_notes").read_text().strip(), 16)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            raise KdumpkitError(f"cannot read {d / 'crash_notes'}: {e}") from e
        try:
            size = int((d / "crash_notes_size").read_text().strip())
        except (OSError, ValueError):
            size = MAX_NOTE_BYTES
        out.append(NoteRegion(addr, size))
    return out


def read_vmcoreinfo_region(root: Path | str = "/") -> NoteRegion | None:
    """``/sys/kernel/vmcoreinfo``: note address and size (both hex), None when absent."""
    path = Path(root) / "sys/kernel/vmcoreinfo"
    try:
        addr_s, size_s = path.read_text().split()[:2]
        return NoteRegion(int(addr_s, 16), int(size_s, 16))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise KdumpkitError(f"cannot read {path}: {e}") from e


def read_kallsyms(root: Path | str, names: Sequence[str]) -> dict[str, int]:
    """Addresses of ``names`` from ``/proc/kallsyms`` (zero without root: left out)."""
    want = set(names)
    out: dict[str, int] = {}
    try:
        with open(Path(root) / "proc/kallsyms") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in want:
                    addr = int(parts[0], 16)
                    if addr:
                        out.setdefault(parts[2], addr)
                    if len(out) == len(want):
                        break
    except OSError:
        pass
    return out


def kernel_text(root: Path | str, kernel_code_paddr: int | None) -> KernelText | None:
    """The kernel text mapping from kallsyms ``_text``/``_end`` and "Kernel code" (None if unknown)."""
    syms = read_kallsyms(root, ("_text", "_end"))
    if kernel_code_paddr is None or "_text" not in syms or "_end" not in syms:
        return None
    return KernelText(syms["_text"], kernel_code_paddr, syms["_end"] - syms["_text"])


def page_offset_from_kcore(path: Path | str = "/proc/kcore") -> int | None:
    """The direct-map base (``page_offset_base``) from ``/proc/kcore``'s RAM segments, None if unreadable.

    kexec-tools does the same (``get_kernel_page_offset``): with KASLR the
    base moves every boot, so no constant will do.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        head = os.pread(fd, EHDR64.size, 0)
        if len(head) < EHDR64.size or head[:4] != ELFMAG:
            return None
        eh = EHDR64.unpack(head)
        table = os.pread(fd, eh.e_phnum * PHDR64.size, eh.e_phoff)
        for i in range(len(table) // PHDR64.size):
            ph = PHDR64.unpack(table, i * PHDR64.size)
            if (ph.p_type == PT_LOAD and ph.p_paddr not in (0, (1 << 64) - 1)
                    and 0xFF00000000000000 <= ph.p_vaddr < START_KERNEL_MAP):
                return int(ph.p_vaddr - ph.p_paddr)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def elfcorehdr_for_system(root: Path | str = "/", *, mode: str = "classic") -> bytes:
    """The elfcorehdr for the running system, from ``/proc`` and ``/sys`` below ``root`` (needs root).

    ``mode`` picks the RAM list (see :func:`kdumpkit.kexec.iomem.crash_memory_ranges`).
    The kernel text PT_LOAD is left out when ``/proc/kallsyms`` hides
    addresses; ``p_vaddr`` of RAM is 0 when ``/proc/kcore`` is unreadable.
    Nothing here is needed for kexec_file_load, which builds its own.
    """
    from kdumpkit.kexec.iomem import crash_memory_ranges, parse_iomem, read_iomem

    rootp = Path(root)
    iomem = parse_iomem(read_iomem(rootp))
    code = iomem.kernel_code()
    return build_elfcorehdr(read_cpu_notes(rootp), read_vmcoreinfo_region(rootp),
                            kernel_text(rootp, code[0] if code else None), crash_memory_ranges(iomem, mode=mode),
                            page_offset=page_offset_from_kcore(rootp / "proc/kcore"))
