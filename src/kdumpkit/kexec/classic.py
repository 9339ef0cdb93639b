"""The segments of a crash load by ``kexec_load`` (``kdumpkit load --mode classic``), built in userspace.

This is the kdump paper's design: the running kernel only copies the
segments userspace hands it into the "Crash kernel" reservation, and on a
crash jumps to the entry point userspace named.  Everything else --
where the kernel goes, its boot parameters, the memory map the capture
kernel may use, the ELF core headers describing the dead kernel's memory,
and the code that bridges the two (purgatory) -- is prepared here, to match
what the kernel's own ``kexec_file_load`` builds for the same system
(``arch/x86/kernel/kexec-bzimage64.c``, ``arch/x86/kernel/crash.c``):

====================  ====================================================================
segment               contents, placement
====================  ====================================================================
``elfcorehdr``        :mod:`kdumpkit.kexec.elfcorehdr` with the kernel's RAM list (low
                      1 MiB and the crash ranges excluded, ``elf_header_exclude_ranges``),
                      at the start of the reservation (where kexec_file puts it too)
``purgatory``         :mod:`kdumpkit.kexec.purgatory`, patched with the kernel's 64-bit entry
                      (load address + 0x200) and the boot_params address; the entry point
``boot_params``       the zero page + the command line right after it (one segment, as
                      kexec_file does)
``kernel``            the bzImage minus its real-mode setup sectors, at the first
                      ``kernel_alignment`` boundary above the small segments and at least
                      ``pref_address``/1 MiB; ``memsz`` = ``init_size`` (the decompressor
                      works in place and needs that much from the load address)
``initrd``            the capture initramfs (+ the kallsyms snapshot archive) at the top
====================  ====================================================================

The zero page: the bzImage's setup header copied (``0x1f1`` up to ``0x202 +
byte[0x201]``), ``type_of_loader`` 0xff (undefined boot loader), ``loadflags``
0 (as kexec_file), ``cmd_line_ptr``/``ext_cmd_line_ptr``,
``ramdisk_image``/``ramdisk_size`` (+ ``ext_*``), ``hardware_subarch`` and
``screen_info``, ``acpi_rsdp_addr``, EDD from the running kernel's own
boot_params (``/sys/kernel/boot_params/data``; ``acpi_rsdp_addr`` also from
``/sys/firmware/efi/systab``), and the e820 table :func:`crash_e820` --
``crash_setup_memmap_entries``' list, in its order: System RAM below
1 MiB, ACPI tables, ACPI NVS, e820 "Reserved", the low crash range, the
crash range minus the elfcorehdr.  The command line gets ``elfcorehdr=<addr>K``
appended (kexec-tools' form; kexec_file prepends ``elfcorehdr=0x<addr>``).

Not done (kexec_file does them): EFI runtime services (``efi_info``, the
runtime memory map and ``SETUP_EFI`` setup_data) -- an EFI machine's capture
kernel runs without EFI runtime, ACPI still found through ``acpi_rsdp_addr``;
the RNG seed setup_data; IMA/DTB setup_data.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import KdumpkitError, UsageError
from kdumpkit.kexec import purgatory
from kdumpkit.kexec.bzimage import (
    BOOT_FLAG,
    HDRS_MAGIC,
    SETUP_HEADER,
    SETUP_HEADER_OFFSET,
    XLF_KERNEL_64,
)
from kdumpkit.kexec.elfcorehdr import (
    build_elfcorehdr,
    kernel_text,
    page_offset_from_kcore,
    read_cpu_notes,
    read_vmcoreinfo_region,
)
from kdumpkit.kexec.iomem import SZ_1M, Iomem, Kind, crash_memory_ranges, parse_iomem, read_iomem, subtract

PAGE = 4096
ZERO_PAGE_SIZE = 4096
# struct boot_params offsets (arch/x86/include/uapi/asm/bootparam.h)
BP_SCREEN_INFO, BP_SCREEN_INFO_SIZE = 0x000, 0x40
BP_EXT_MEM_K = 0x002                  # screen_info.ext_mem_k
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_ALT_MEM_K = 0x1E0
BP_E820_ENTRIES = 0x1E8
BP_EDDBUF_ENTRIES = 0x1E9
BP_EDD_MBR_SIG_BUF_ENTRIES = 0x1EA
BP_EDD_MBR_SIG_BUFFER, BP_EDD_MBR_SIG_SIZE = 0x290, 16 * 4
BP_E820_TABLE = 0x2D0
BP_EDDBUF, BP_EDDBUF_SIZE = 0xD00, 6 * 82
E820_MAX_ENTRIES_ZEROPAGE = 128
E820_ENTRY = struct.Struct("<QQI")
E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS = 1, 2, 3, 4
E820_NAMES = {E820_RAM: "usable", E820_RESERVED: "reserved", E820_ACPI: "ACPI data", E820_NVS: "ACPI NVS"}
TYPE_OF_LOADER = 0xFF
KERNEL_ENTRY_64 = 0x200               # startup_64 of the compressed kernel, from its load address
MIN_KERNEL_LOAD_ADDR = 0x100000
ELFCOREHDR_ARG_MAX = len(" elfcorehdr=") + 20 + 1


def _align_up(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class SegmentSpec:
    """One kexec segment: ``size`` bytes of ``name`` copied to ``mem``, zero-filled to ``memsz``."""

    name: str
    mem: int
    memsz: int
    size: int


@dataclass
class ClassicImage:
    """Everything ``kexec_load`` gets, except the initrd's bytes (read at load time)."""

    crash: tuple[int, int]
    segments: list[SegmentSpec]
    entry: int                       # the purgatory
    kernel_entry: int                # load address + 0x200
    boot_params_addr: int
    cmdline: str                     # as the capture kernel sees it (elfcorehdr= included)
    e820: list[tuple[int, int, int]]  # (addr, size, type), in crash_setup_memmap_entries' order
    data: dict[str, bytes]           # segment bytes by name, all but "initrd"
    notes: list[str] = field(default_factory=list)

    def segment(self, name: str) -> SegmentSpec:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(name)

    def table(self) -> list[str]:
        """The segment table for ``--dry-run``: address range, sizes, name."""
        rows = []
        for s in sorted(self.segments, key=lambda s: s.mem):
            rows.append(f"{s.mem:#014x}-{s.mem + s.memsz - 1:#014x}  {s.size:>10} bytes  memsz {s.memsz:>10}  "
                        f"{s.name}{'  (entry)' if s.mem <= self.entry < s.mem + s.memsz else ''}")
        return rows


# -- the memory map the capture kernel gets -----------------------------------------------
def crash_ranges(iomem: Iomem) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """``(crashk_res, crashk_low_res or None)`` as half-open ranges; the main one is the highest."""
    ranges = sorted(iomem.crash_kernel())
    if not ranges:
        raise UsageError("no 'Crash kernel' range in /proc/iomem: boot with crashkernel= "
                         "(kdumpkit crashkernel plan) before loading a capture kernel")
    if len(ranges) > 2:
        raise UsageError(f"{len(ranges)} 'Crash kernel' ranges in /proc/iomem; classic mode handles a main and a "
                         "low one only")
    return ranges[-1], (ranges[0] if len(ranges) == 2 else None)


def crash_e820(iomem: Iomem, elfcorehdr: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The e820 table for the capture kernel, as ``crash_setup_memmap_entries`` builds it.

    ``elfcorehdr`` is the half-open range of the headers, cut out of the
    crash range so the capture kernel never allocates it.  Entries are
    ``(addr, size, type)`` in the kernel's order (it sorts them at boot);
    past 128 entries the rest are dropped, as the kernel's ``add_e820_entry`` does.
    """
    out: list[tuple[int, int, int]] = []
    for r in iomem.walk():  # walk_iomem_res_desc(IORES_DESC_NONE, SYSTEM_RAM|BUSY, 0, 1M - 1): clipped
        if r.kind is Kind.RAM and r.start < SZ_1M:
            out.append((r.start, min(r.end + 1, SZ_1M) - r.start, E820_RAM))
    out += [(r.start, r.size, E820_ACPI) for r in iomem.walk() if r.kind is Kind.ACPI_TABLES]
    out += [(r.start, r.size, E820_NVS) for r in iomem.walk() if r.kind is Kind.ACPI_NVS]
    # IORES_DESC_RESERVED is what e820 "Reserved" entries carry; lower-case "reserved" (PNP, PCI) is not.
    out += [(r.start, r.size, E820_RESERVED) for r in iomem.walk() if r.name == "Reserved"]
    main, low = crash_ranges(iomem)
    if low is not None:
        out.append((low[0], low[1] - low[0], E820_RAM))
    for s, e in subtract([main], elfcorehdr):
        if e - s >= PAGE:
            out.append((s, e - s, E820_RAM))
    return out[:E820_MAX_ENTRIES_ZEROPAGE]


# -- the running kernel's own boot parameters ------------------------------------------
def read_boot_params(root: Path) -> bytes | None:
    """``/sys/kernel/boot_params/data`` (the running kernel's zero page), None when unreadable."""
    try:
        data = (root / "sys/kernel/boot_params/data").read_bytes()
    except OSError:
        return None
    return data if len(data) >= ZERO_PAGE_SIZE else None


def efi_rsdp(root: Path) -> int | None:
    """``ACPI20=`` (else ``ACPI=``) of ``/sys/firmware/efi/systab``, as kexec-tools' ``get_acpi_rsdp``."""
    try:
        text = (root / "sys/firmware/efi/systab").read_text()
    except OSError:
        return None
    for key in ("ACPI20", "ACPI"):
        m = re.search(rf"^{key}=(0x[0-9a-fA-F]+)", text, re.M)
        if m:
            return int(m.group(1), 16)
    return None


def build_boot_params(kernel: bytes, *, cmdline_addr: int, initrd: tuple[int, int] | None,
                      e820: list[tuple[int, int, int]], first: bytes | None, rsdp: int | None) -> bytes:
    """The zero page for the capture kernel (see the module docstring)."""
    bp = bytearray(ZERO_PAGE_SIZE)
    hdr_end = min(max(0x202 + kernel[0x201], SETUP_HEADER_OFFSET + SETUP_HEADER.size), BP_EDD_MBR_SIG_BUFFER)
    bp[SETUP_HEADER_OFFSET:hdr_end] = kernel[SETUP_HEADER_OFFSET:hdr_end]

    def put(field_name: str, fmt: str, value: int) -> None:
        struct.pack_into("<" + fmt, bp, SETUP_HEADER_OFFSET + SETUP_HEADER.offsetof(field_name), value)

    if first is not None:
        bp[BP_SCREEN_INFO:BP_SCREEN_INFO + BP_SCREEN_INFO_SIZE] = first[BP_SCREEN_INFO:BP_SCREEN_INFO + 0x40]
        bp[BP_EDDBUF:BP_EDDBUF + BP_EDDBUF_SIZE] = first[BP_EDDBUF:BP_EDDBUF + BP_EDDBUF_SIZE]
        bp[BP_EDDBUF_ENTRIES] = first[BP_EDDBUF_ENTRIES]
        bp[BP_EDD_MBR_SIG_BUFFER:BP_EDD_MBR_SIG_BUFFER + BP_EDD_MBR_SIG_SIZE] = \
            first[BP_EDD_MBR_SIG_BUFFER:BP_EDD_MBR_SIG_BUFFER + BP_EDD_MBR_SIG_SIZE]
        first_hdr = SETUP_HEADER.unpack(first, SETUP_HEADER_OFFSET)
        put("hardware_subarch", "I", first_hdr.hardware_subarch)
        rsdp = struct.unpack_from("<Q", first, BP_ACPI_RSDP_ADDR)[0] or rsdp
    else:
        put("hardware_subarch", "I", 0)
    put("hardware_subarch_data", "Q", 0)
    struct.pack_into("<Q", bp, BP_ACPI_RSDP_ADDR, rsdp or 0)
    put("type_of_loader", "B", TYPE_OF_LOADER)
    put("loadflags", "B", 0)
    put("cmd_line_ptr", "I", cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", bp, BP_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    addr, size = initrd or (0, 0)
    put("ramdisk_image", "I", addr & 0xFFFFFFFF)
    put("ramdisk_size", "I", size & 0xFFFFFFFF)
    struct.pack_into("<II", bp, BP_EXT_RAMDISK_IMAGE, addr >> 32, size >> 32)
    put("setup_data", "Q", 0)
    # memsize hints from the RAM entry that spans 1 MiB (none in a crash map, normally), as setup_boot_parameters
    struct.pack_into("<H", bp, BP_EXT_MEM_K, 0)
    struct.pack_into("<I", bp, BP_ALT_MEM_K, 0)
    for a, s, t in e820:
        end = a + s - 1
        if t == E820_RAM and a <= SZ_1M < end:
            mem_k = (end >> 10) - (SZ_1M >> 10)
            struct.pack_into("<H", bp, BP_EXT_MEM_K, min(mem_k, 0xFC00))
            struct.pack_into("<I", bp, BP_ALT_MEM_K, min(mem_k, 0xFFFFFFFF))
    bp[BP_E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        E820_ENTRY.pack_into(bp, BP_E820_TABLE + i * E820_ENTRY.size, *entry)
    return bytes(bp)


# -- the layout ----------------------------------------------------------------------------
def check_kernel(kernel: bytes, name: str) -> tuple[int, int, int, int, int]:
    """``(setup_size, init_size, kernel_alignment, pref_address, cmdline_size)``; UsageError if it cannot be a
    classic crash kernel."""
    if len(kernel) < SETUP_HEADER_OFFSET + SETUP_HEADER.size:
        raise UsageError(f"{name}: too short for a bzImage ({len(kernel)} bytes)")
    h = SETUP_HEADER.unpack(kernel, SETUP_HEADER_OFFSET)
    if h.header != HDRS_MAGIC or h.boot_flag != BOOT_FLAG:
        raise UsageError(f"{name}: not a bzImage (no 'HdrS' boot header)")
    if h.version < 0x020C:
        raise UsageError(f"{name}: boot protocol {h.version >> 8}.{h.version & 0xFF} is older than 2.12 "
                         "(no 64-bit entry flags)")
    if not h.xloadflags & XLF_KERNEL_64:
        raise UsageError(f"{name}: no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags {h.xloadflags:#x})")
    if not h.relocatable_kernel:
        raise UsageError(f"{name}: not relocatable (CONFIG_RELOCATABLE): it cannot run from the crashkernel "
                         "reservation")
    setup_size = ((h.setup_sects or 4) + 1) * 512
    if len(kernel) <= setup_size:
        raise UsageError(f"{name}: truncated bzImage ({len(kernel)} bytes, setup alone is {setup_size})")
    align = h.kernel_alignment if h.kernel_alignment and not h.kernel_alignment & (PAGE - 1) else 0x200000
    return setup_size, h.init_size, align, h.pref_address, h.cmdline_size


def build(root: Path | str, kernel: bytes, cmdline: str, initrd_size: int | None, *,
          kernel_name: str = "kernel") -> ClassicImage:
    """Lay out a crash load for the system below ``root`` (its /proc and /sys; needs root on a live system).

    ``initrd_size`` is the exact number of initrd bytes :func:`segments` will get (None: no initrd).
    """
    rootp = Path(root)
    setup_size, init_size, align, pref, cmdline_size = check_kernel(kernel, kernel_name)
    iomem = parse_iomem(read_iomem(rootp))
    (cs, ce), _low = crash_ranges(iomem)
    notes: list[str] = []
    code = iomem.kernel_code()
    ktext = kernel_text(rootp, code[0] if code else None)
    if ktext is None:
        notes.append("elfcorehdr: no kernel text PT_LOAD (/proc/kallsyms hides _text/_end, or no 'Kernel code')")
    hdr = build_elfcorehdr(read_cpu_notes(rootp), read_vmcoreinfo_region(rootp), ktext,
                           crash_memory_ranges(iomem, mode="file"),
                           page_offset=page_offset_from_kcore(rootp / "proc/kcore"))
    elf_addr = cs
    elf_memsz = _align_up(len(hdr), PAGE)
    purg_addr = elf_addr + elf_memsz
    bp_addr = purg_addr + PAGE
    line = f"{cmdline} elfcorehdr={elf_addr >> 10}K".strip()
    raw_line = line.encode() + b"\0"
    if len(line) >= cmdline_size:
        raise UsageError(f"the capture command line with elfcorehdr= has {len(line)} characters, the kernel "
                         f"accepts {cmdline_size - 1}")
    bp_memsz = _align_up(ZERO_PAGE_SIZE + len(raw_line), PAGE)
    small_end = bp_addr + bp_memsz
    body = len(kernel) - setup_size
    k_memsz = _align_up(max(init_size, body), PAGE)
    k_addr = _align_up(max(small_end, pref, MIN_KERNEL_LOAD_ADDR), align)
    i_size = initrd_size or 0
    i_memsz = _align_up(i_size, PAGE)
    i_addr = (ce - i_memsz) // PAGE * PAGE
    need = elf_memsz + PAGE + bp_memsz + k_memsz + i_memsz
    if k_addr + k_memsz > i_addr:
        raise UsageError(
            f"the crash kernel reservation is too small: {(ce - cs) >> 20} MiB at {cs:#x} holds elfcorehdr "
            f"{elf_memsz >> 10} KiB + purgatory 4 KiB + boot_params {bp_memsz >> 10} KiB, then the kernel at "
            f"{k_addr:#x} (aligned to {align >> 10} KiB) needs init_size {k_memsz >> 20} MiB and the initrd "
            f"{i_memsz >> 20} MiB ({need >> 20} MiB without alignment); raise crashkernel=")
    e820 = crash_e820(iomem, (elf_addr, elf_addr + elf_memsz))
    first = read_boot_params(rootp)
    if first is None:
        notes.append("boot_params: /sys/kernel/boot_params/data unreadable; screen_info, EDD and the ACPI RSDP "
                     "address are not passed on")
    if (rootp / "sys/firmware/efi").is_dir():
        notes.append("EFI: runtime services are not passed to the capture kernel in classic mode (no efi_info)")
    bp = build_boot_params(kernel, cmdline_addr=bp_addr + ZERO_PAGE_SIZE,
                           initrd=(i_addr, i_size) if initrd_size is not None else None,
                           e820=e820, first=first, rsdp=efi_rsdp(rootp))
    k_entry = k_addr + KERNEL_ENTRY_64
    purg = purgatory.purgatory_image(k_entry, bp_addr)
    segs = [SegmentSpec("elfcorehdr", elf_addr, elf_memsz, len(hdr)),
            SegmentSpec("purgatory", purg_addr, PAGE, len(purg)),
            SegmentSpec("boot_params", bp_addr, bp_memsz, ZERO_PAGE_SIZE + len(raw_line)),
            SegmentSpec("kernel", k_addr, k_memsz, body)]
    if initrd_size is not None:
        segs.append(SegmentSpec("initrd", i_addr, i_memsz, i_size))
    data = {"elfcorehdr": hdr, "purgatory": purg, "boot_params": bp + raw_line, "kernel": kernel[setup_size:]}
    return ClassicImage((cs, ce), segs, purg_addr, k_entry, bp_addr, line, e820, data, notes)


def segments(image: ClassicImage, initrd: bytes | None) -> list[tuple[SegmentSpec, bytes]]:
    """Each segment with its bytes; ``initrd`` must have exactly the planned size."""
    out = []
    for s in image.segments:
        if s.name == "initrd":
            if initrd is None or len(initrd) != s.size:
                raise KdumpkitError(f"the initrd has {0 if initrd is None else len(initrd)} bytes, {s.size} were "
                                    "planned (did it change since?)")
            out.append((s, initrd))
        else:
            out.append((s, image.data[s.name]))
    return out


def e820_lines(e820: list[tuple[int, int, int]]) -> list[str]:
    """The table as the capture kernel will print it (``BIOS-e820: [mem a-b] type``), sorted."""
    return [f"BIOS-e820: [mem {a:#018x}-{a + s - 1:#018x}] {E820_NAMES.get(t, f'type {t}')}"
            for a, s, t in sorted(e820)]
