"""``/proc/iomem``: the physical memory map, and the RAM a vmcore must describe.

``/proc/iomem`` prints one resource per line, ``start-end : name``, with
*inclusive* ends and two spaces of indent per nesting level ("Kernel code"
and "Crash kernel" sit inside a "System RAM" entry).  Unprivileged readers
see every address as zero, which must not be mistaken for "no RAM".

:func:`crash_memory_ranges` answers "which physical ranges does the
elfcorehdr list as PT_LOADs", in the two ways that exist:

* ``mode="classic"`` -- kexec-tools' ``get_crash_memory_ranges`` (x86): every
  line containing "System RAM" at any depth, minus every "Crash kernel"
  range and minus the GART aperture;
* ``mode="file"`` -- the kernel's own builder for ``kexec_file_load``
  (``prepare_elf_headers`` + ``elf_header_exclude_ranges``): System RAM minus
  ``[0, 1 MiB)`` ("always reserved", the capture kernel may reuse it),
  minus the crash kernel ranges.  This is what the lab's vmcores show.

All computed ranges are half-open ``(start, end)`` tuples; only
:class:`Resource` keeps the inclusive ``end`` the file prints.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import ConfigError, KdumpkitError

SZ_1M = 1 << 20
_LINE = re.compile(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


class Kind(enum.Enum):
    """What a resource is, in the classes kexec-tools and the kernel distinguish."""

    RAM = "ram"
    ACPI_TABLES = "acpi"
    ACPI_NVS = "acpi_nvs"
    RESERVED = "reserved"
    PMEM = "pmem"
    PMEM_LEGACY = "pmem_legacy"
    CRASH_KERNEL = "crash_kernel"
    KERNEL_CODE = "kernel_code"
    KERNEL_RODATA = "kernel_rodata"
    KERNEL_DATA = "kernel_data"
    KERNEL_BSS = "kernel_bss"
    GART = "gart"
    OTHER = "other"


def classify(name: str) -> Kind:
    """The kind of a resource name (kexec-tools' string tests, plus the kernel image parts)."""
    if "System RAM" in name:  # also "System RAM (kmem)", "System RAM (virtio_mem)"
        return Kind.RAM
    if name.startswith("ACPI Tables"):
        return Kind.ACPI_TABLES
    if name.startswith("ACPI Non-volatile Storage"):
        return Kind.ACPI_NVS
    if name.startswith("Persistent Memory (legacy)"):
        return Kind.PMEM_LEGACY
    if name.startswith("Persistent Memory"):
        return Kind.PMEM
    if name in ("reserved", "Reserved"):
        return Kind.RESERVED
    if name.startswith("Crash kernel"):
        return Kind.CRASH_KERNEL
    if name.startswith("GART"):
        return Kind.GART
    return {"Kernel code": Kind.KERNEL_CODE, "Kernel rodata": Kind.KERNEL_RODATA,
            "Kernel data": Kind.KERNEL_DATA, "Kernel bss": Kind.KERNEL_BSS}.get(name, Kind.OTHER)


@dataclass
class Resource:
    """One ``/proc/iomem`` line; ``end`` is inclusive, as printed."""

    start: int
    end: int
    name: str
    depth: int = 0
    children: list[Resource] = field(default_factory=list)

    @property
    def kind(self) -> Kind:
        return classify(self.name)

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def walk(self) -> Iterator[Resource]:
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass
class Iomem:
    """The parsed tree; ``roots`` are the top-level resources in file order."""

    roots: list[Resource]

    def walk(self) -> Iterator[Resource]:
        """Every resource, depth first, in file order."""
        for r in self.roots:
            yield from r.walk()

    def of_kind(self, kind: Kind) -> list[Resource]:
        return [r for r in self.walk() if r.kind is kind]

    def system_ram_size(self) -> int:
        """Bytes of top-level System RAM: close to the ``memblock_phys_mem_size()`` crashkernel= compares."""
        return sum(r.size for r in self.roots if r.kind is Kind.RAM)

    def crash_kernel(self) -> list[tuple[int, int]]:
        """Half-open "Crash kernel" ranges (low and high part if both exist)."""
        return [(r.start, r.end + 1) for r in self.of_kind(Kind.CRASH_KERNEL)]

    def kernel_code(self) -> tuple[int, int] | None:
        """Half-open physical range of "Kernel code", or None."""
        rs = self.of_kind(Kind.KERNEL_CODE)
        return (rs[0].start, rs[0].end + 1) if rs else None

    def kernel_image_size(self) -> int:
        """Kernel code + rodata + data + bss, as kdumpctl's fallback ``get_kernel_size`` counts it."""
        kinds = (Kind.KERNEL_CODE, Kind.KERNEL_RODATA, Kind.KERNEL_DATA, Kind.KERNEL_BSS)
        return sum(r.size for r in self.walk() if r.kind in kinds)


def parse_iomem(text: str, *, allow_zero: bool = False) -> Iomem:
    """Parse ``/proc/iomem`` text into a tree.

    Raises :class:`KdumpkitError` when every address is zero (the file was
    read without root) unless ``allow_zero``; a malformed line is a
    :class:`ConfigError` naming its line number.
    """
    roots: list[Resource] = []
    stack: list[Resource] = []
    nonzero = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise ConfigError(f"/proc/iomem line {lineno}: cannot parse {line!r}")
        depth = len(m.group(1)) // 2
        start, end = int(m.group(2), 16), int(m.group(3), 16)
        if end < start:
            raise ConfigError(f"/proc/iomem line {lineno}: end {end:#x} below start {start:#x}")
        nonzero = nonzero or end != 0
        res = Resource(start, end, m.group(4).rstrip(), depth)
        while stack and stack[-1].depth >= depth:
            stack.pop()
        if stack:
            stack[-1].children.append(res)
        else:
            roots.append(res)
        stack.append(res)
    if roots and not nonzero and not allow_zero:
        raise KdumpkitError("/proc/iomem shows only zero addresses: it must be read as root")
    return Iomem(roots)


def read_iomem(root: Path | str = "/") -> str:
    """The text of ``<root>/proc/iomem``."""
    path = Path(root) / "proc/iomem"
    try:
        return path.read_text()
    except OSError as e:
        raise KdumpkitError(f"cannot read {path}: {e.strerror or e}") from e


# -- range arithmetic (half-open) ---------------------------------------------------
def subtract(ranges: Iterable[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    """``ranges`` minus ``cut``; a range may split in two (kexec-tools' ``exclude_region``)."""
    cs, ce = cut
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if ce <= s or cs >= e:
            out.append((s, e))
            continue
        if s < cs:
            out.append((s, cs))
        if ce < e:
            out.append((ce, e))
    return out


def crash_memory_ranges(iomem: Iomem, *, mode: str = "file") -> list[tuple[int, int]]:
    """The half-open RAM ranges the elfcorehdr lists as PT_LOADs, sorted.

    ``mode="file"`` is what the kernel builds for kexec_file_load (and what
    kdumpkit's default loader gets); ``mode="classic"`` is kexec-tools'
    list for kexec_load, which keeps the first 640 KiB (kexec-tools then
    redirects it to a backup copy -- kdumpkit's classic loader does not
    implement the backup region, see :mod:`kdumpkit.kexec.loader`).
    """
    if mode not in ("file", "classic"):
        raise ConfigError(f"crash memory mode must be 'file' or 'classic', not {mode!r}")
    if mode == "file":
        ram = [(r.start, r.end + 1) for r in iomem.roots if r.kind is Kind.RAM]
        # "System RAM (kmem)" of dax devices sits below its parent device.
        ram += [(r.start, r.end + 1) for root in iomem.roots if root.kind is not Kind.RAM
                for r in root.walk() if r is not root and r.kind is Kind.RAM]
        cuts = [(0, SZ_1M), *iomem.crash_kernel()]
    else:
        ram = [(r.start, r.end + 1) for r in iomem.walk() if r.kind is Kind.RAM]
        cuts = [*iomem.crash_kernel(), *((r.start, r.end + 1) for r in iomem.of_kind(Kind.GART))]
    for cut in cuts:
        ram = subtract(ram, cut)
    return sorted(r for r in ram if r[1] > r[0])


def from_e820(entries: Iterable[tuple[int, int, str]], crash: Iterable[tuple[int, int]] = (),
              kernel: dict[str, tuple[int, int]] | None = None) -> str:
    """Synthesize ``/proc/iomem`` text from a firmware map (inclusive ``(start, end, type)``).

    For tests and for checking a guest whose console shows only
    ``BIOS-e820:`` lines: "usable" becomes "System RAM", "ACPI data" "ACPI
    Tables", "ACPI NVS" "ACPI Non-volatile Storage"; crash and kernel ranges
    (half-open) are nested in the RAM that holds them.  The first page is
    reported reserved as Linux does on x86 (``e820: update [mem
    0x00000000-0x00000fff] usable ==> reserved``).
    """
    names = {"usable": "System RAM", "reserved": "Reserved", "ACPI data": "ACPI Tables",
             "ACPI NVS": "ACPI Non-volatile Storage", "persistent (type 12)": "Persistent Memory (legacy)"}
    lines: list[str] = []
    inner = [(s, e, "Crash kernel") for s, e in crash]
    inner += [(s, e, n) for n, (s, e) in (kernel or {}).items()]
    for start, end, typ in sorted(entries):
        name = names.get(typ, typ)
        if name == "System RAM" and start == 0:
            lines.append(f"{0:08x}-{0xfff:08x} : Reserved")
            start = 0x1000
        lines.append(f"{start:08x}-{end:08x} : {name}")
        if name == "System RAM":
            for s, e, n in sorted(inner):
                if start <= s and e - 1 <= end:
                    lines.append(f"  {s:08x}-{e - 1:08x} : {n}")
    return "\n".join(lines) + "\n"


_E820 = re.compile(r"BIOS-e820: \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] (.+?)\s*$")
_CRASH_RESERVE = re.compile(r"Reserving (\d+)MB of memory at (\d+)MB for crashkernel")


def e820_from_console(text: str) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
    """``BIOS-e820`` entries and the crashkernel reservation from a boot log (first boot only)."""
    entries: list[tuple[int, int, str]] = []
    crash: list[tuple[int, int]] = []
    for line in text.splitlines():
        m = _E820.search(line)
        if m:
            entry = (int(m.group(1), 16), int(m.group(2), 16), m.group(3))
            if entry in entries:
                break  # the log repeats (capture kernel boot): stop at the first repeat
            entries.append(entry)
        c = _CRASH_RESERVE.search(line)
        if c and not crash:
            size, at = int(c.group(1)) * SZ_1M, int(c.group(2)) * SZ_1M
            crash.append((at, at + size))
    return entries, crash
