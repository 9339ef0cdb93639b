"""``crashkernel=``: parse, format, evaluate for a RAM size, read back what was reserved.

The parser follows the kernel (``kernel/crash_reserve.c``, earlier
``kernel/kexec_core.c`` / ``kernel/crash_core.c``) rather than a prettier
grammar, because what matters is what the *kernel* will reserve:

* numbers go through ``memparse``: ``simple_strtoull(s, 0)`` (so ``0x10M`` is
  hex and ``010M`` is *octal*) followed by an optional K/M/G/T/P/E suffix
  (either case);
* a value with a ``:`` before the first blank is the range form
  ``start-[end]:size[,start-[end]:size…][@offset]``; each range is
  ``[start, end)`` (start inclusive, end exclusive) and is compared with the
  system RAM size *rounded up to 128 MiB* (Linux ≥ 4.19, "kdump: round up the
  total memory size to 128M for crashkernel reservation"), the first match wins;
  a size not below that total is an error;
* otherwise it is ``size[@offset]``, or with a suffix ``size,high``,
  ``size,low`` (and ``size,cma`` on Linux ≥ 6.16);
* ``crashkernel=auto`` was a RHEL ≤ 8 kernel patch, never upstream: rejected
  with a clear message.

The RAM size the kernel compares is ``memblock_phys_mem_size()``: the sum of
usable RAM in the firmware map (``/proc/iomem``'s top-level "System RAM"), not
``MemTotal`` (which excludes the kernel image, reserved and crash memory).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import ConfigError, KdumpkitError

SZ_1M = 1 << 20
SZ_128M = 128 << 20
ULLONG_MAX = (1 << 64) - 1
SUFFIXES = ("high", "low", "cma")
_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


class CrashkernelSyntaxError(ConfigError):
    """A ``crashkernel=`` value the kernel would reject; says what and where."""

    def __init__(self, value: str, pos: int | None, what: str) -> None:
        super().__init__(value, pos, what)
        self.value = value
        self.pos = pos
        self.what = what

    def __str__(self) -> str:
        where = f" at character {self.pos + 1}" if self.pos is not None else ""
        return f"crashkernel={self.value!r}: {self.what}{where}"


# -- memparse ------------------------------------------------------------------
def memparse(s: str, pos: int = 0) -> tuple[int, int]:
    """The kernel's ``memparse`` at ``s[pos:]``: ``(value, end_pos)``; ``end_pos == pos`` when no number.

    Like ``simple_strtoull`` with base 0 the value wraps at 64 bits, and the
    suffix shift does too (the kernel does not check overflow either).
    """
    i = pos
    base = 10
    if s[i:i + 2].lower() == "0x" and i + 2 < len(s) and s[i + 2] in "0123456789abcdefABCDEF":
        base, i = 16, i + 2
    elif s[i:i + 1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    start = i
    while i < len(s) and s[i].lower() in digits:
        i += 1
    if i == start:
        return 0, pos
    value = int(s[start:i], base) & ULLONG_MAX
    if i < len(s) and s[i].lower() in _SHIFT:
        value = (value << _SHIFT[s[i].lower()]) & ULLONG_MAX
        i += 1
    return value, i


def parse_size(text: str) -> int:
    """A human size (``1G``, ``1024M``, ``0x40000000``, ``1.5G``, ``2GiB``) in bytes, for options like ``--ram``."""
    t = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtTpPeE]?)(?:i?[bB])?", t)
    if m:
        return int(float(m.group(1)) * (1 << _SHIFT.get(m.group(2).lower(), 0)))
    value, end = memparse(t)
    if end != len(t) or end == 0:
        raise ConfigError(f"not a size: {text!r} (examples: 1G, 512M, 0x40000000)")
    return value


def format_size(n: int) -> str:
    """The shortest exact kernel spelling: ``256M``, ``2G``, ``1536K``, ``4097``."""
    if n == 0:
        return "0"
    for suffix, shift in (("E", 60), ("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


# -- the parsed value -------------------------------------------------------------
@dataclass(frozen=True)
class CrashkernelRange:
    """One ``start-end:size`` entry; ``end`` None means open (``2G-:128M``)."""

    start: int
    end: int | None
    size: int

    def matches(self, total: int) -> bool:
        return self.start <= total and (self.end is None or total < self.end)


@dataclass(frozen=True)
class Crashkernel:
    """One ``crashkernel=`` value, in whichever form it was written."""

    size: int | None = None                     # simple form
    ranges: tuple[CrashkernelRange, ...] = ()   # range form
    offset: int | None = None                   # ``@offset`` (simple or range form)
    suffix: str | None = None                   # "high" | "low" | "cma"
    text: str = field(default="", compare=False)

    @property
    def is_range_form(self) -> bool:
        return bool(self.ranges)

    def format(self) -> str:
        """The value back in canonical kernel syntax (without ``crashkernel=``)."""
        if self.ranges:
            body = ",".join(f"{format_size(r.start)}-{format_size(r.end) if r.end is not None else ''}:"
                            f"{format_size(r.size)}" for r in self.ranges)
        else:
            body = format_size(self.size or 0)
        if self.offset is not None:
            body += f"@{format_size(self.offset)}"
        if self.suffix:
            body += f",{self.suffix}"
        return body

    def size_for(self, system_ram: int, *, round_128m: bool = True) -> int:
        """Bytes the kernel reserves with ``system_ram`` bytes of RAM (0 when no range matches).

        ``round_128m=False`` gives the behaviour of kernels before 4.19,
        which compared the exact ``memblock_phys_mem_size()``.
        """
        if not self.ranges:
            return self.size or 0
        total = _round_total(system_ram, round_128m)
        for i, r in enumerate(self.ranges):
            if r.size >= total:
                raise CrashkernelSyntaxError(self.text or self.format(), None,
                                             f"range {i + 1}: size {format_size(r.size)} is not below the "
                                             f"{'rounded ' if round_128m else ''}RAM size {format_size(total)} "
                                             "(the kernel rejects it)")
            if r.matches(total):
                return r.size
        return 0

    def matching_range(self, system_ram: int, *, round_128m: bool = True) -> CrashkernelRange | None:
        total = _round_total(system_ram, round_128m)
        return next((r for r in self.ranges if r.matches(total)), None)


def _round_total(system_ram: int, round_128m: bool) -> int:
    return -(-system_ram // SZ_128M) * SZ_128M if round_128m else system_ram


def _expect_number(value: str, pos: int, what: str) -> tuple[int, int]:
    n, end = memparse(value, pos)
    if end == pos:
        got = repr(value[pos]) if pos < len(value) else "end of value"
        raise CrashkernelSyntaxError(value, pos, f"{what} expected, got {got}")
    return n, end


def parse(value: str) -> Crashkernel:
    """Parse the text after ``crashkernel=``; raises :class:`CrashkernelSyntaxError`.

    The value ends at the first blank, as on the kernel command line.
    """
    if value.startswith("crashkernel="):
        value = value[len("crashkernel="):]
    value = value.split(" ", 1)[0].split("\t", 1)[0]
    if value == "auto" or value.startswith("auto,") or value.startswith("auto@"):
        raise CrashkernelSyntaxError(value, None, "'auto' is historical (a RHEL <= 8 kernel patch, never upstream) "
                                     "and not supported; use a size or a range table, e.g. "
                                     "'2G-64G:256M,64G-:512M' (kdumpkit crashkernel plan)")
    if not value:
        raise CrashkernelSyntaxError(value, 0, "empty value")
    colon = value.find(":")
    if colon >= 0:
        return _parse_ranges(value)
    size, pos = _expect_number(value, 0, "memory value")
    offset = suffix = None
    if pos < len(value) and value[pos] == "@":
        offset, pos = _expect_number(value, pos + 1, "memory value after '@'")
    if pos < len(value) and value[pos] == ",":
        word = value[pos + 1:]
        if word not in SUFFIXES:
            raise CrashkernelSyntaxError(value, pos + 1, f"unknown suffix {word!r} (known: ,high ,low ,cma)")
        if offset is not None:
            raise CrashkernelSyntaxError(value, pos, f"'@offset' cannot be combined with ',{word}'")
        suffix, pos = word, len(value)
    if pos != len(value):
        raise CrashkernelSyntaxError(value, pos, f"unrecognized character {value[pos]!r}")
    return Crashkernel(size=size, offset=offset, suffix=suffix, text=value)


def _parse_ranges(value: str) -> Crashkernel:
    ranges: list[CrashkernelRange] = []
    pos = 0
    while True:
        start, pos = _expect_number(value, pos, "range start")
        if pos >= len(value) or value[pos] != "-":
            raise CrashkernelSyntaxError(value, pos, "'-' expected after the range start")
        pos += 1
        end: int | None = None
        if pos < len(value) and value[pos] != ":":
            end, pos = _expect_number(value, pos, "range end")
            if end <= start:
                raise CrashkernelSyntaxError(value, pos, f"range end {format_size(end)} <= start {format_size(start)}")
        if pos >= len(value) or value[pos] != ":":
            raise CrashkernelSyntaxError(value, pos, "':' expected after the range")
        size, pos = _expect_number(value, pos + 1, "reservation size")
        ranges.append(CrashkernelRange(start, end, size))
        if pos < len(value) and value[pos] == ",":
            if value[pos + 1:] in SUFFIXES:
                raise CrashkernelSyntaxError(value, pos + 1, f"',{value[pos + 1:]}' needs the simple form size,{value[pos + 1:]}")
            pos += 1
            continue
        break
    offset = None
    if pos < len(value) and value[pos] == "@":
        offset, pos = _expect_number(value, pos + 1, "memory value after '@'")
    if pos != len(value):
        raise CrashkernelSyntaxError(value, pos, f"unrecognized character {value[pos]!r}")
    return Crashkernel(ranges=tuple(ranges), offset=offset, text=value)


# -- the command line as a whole ---------------------------------------------------
def from_cmdline(cmdline: str) -> dict[str | None, Crashkernel]:
    """The ``crashkernel=`` options of a command line, keyed by suffix (None for the plain one).

    Like the kernel's ``get_last_crashkernel`` the last occurrence of each
    kind wins.  Anything after ``--`` belongs to init and is ignored.
    """
    out: dict[str | None, Crashkernel] = {}
    for word in cmdline.split():
        if word == "--":
            break
        if word.startswith("crashkernel="):
            ck = parse(word)
            out[ck.suffix] = ck
    return out


@dataclass(frozen=True)
class Reservation:
    """What the kernel would reserve: main (below 4G unless ``,high``) and low part."""

    size: int
    low_size: int = 0
    offset: int | None = None
    high: bool = False

    @property
    def total(self) -> int:
        return self.size + self.low_size


DEFAULT_CRASH_KERNEL_LOW_SIZE = 256 * SZ_1M  # x86: max(swiotlb + 8M, 256M) with the default 64M swiotlb


def reservation_for(cmdline: str, system_ram: int, *, round_128m: bool = True) -> Reservation | None:
    """The x86_64 reservation for a whole command line (None: nothing reserved).

    ``crashkernel=X`` wins over ``crashkernel=X,high``; a ``,high`` reservation
    gets a low part from ``crashkernel=Y,low`` or the default 256M (x86).
    The fallback to high memory when a plain reservation does not fit below
    4G depends on the memory map and is not modelled.
    """
    opts = from_cmdline(cmdline)
    plain = opts.get(None)
    if plain is not None:
        size = plain.size_for(system_ram, round_128m=round_128m)
        return Reservation(size, offset=plain.offset) if size else None
    high = opts.get("high")
    if high is not None and high.size:
        low = opts.get("low")
        return Reservation(high.size, low.size or 0 if low is not None else DEFAULT_CRASH_KERNEL_LOW_SIZE, high=True)
    return None


# -- what the running kernel reserved ---------------------------------------------
@dataclass(frozen=True)
class Reserved:
    """Reserved crash kernel memory as the running kernel reports it."""

    ranges: tuple[tuple[int, int], ...]     # inclusive [start, end] from /proc/iomem
    kexec_crash_size: int | None            # /sys/kernel/kexec_crash_size (resizable part), None if absent

    @property
    def total(self) -> int:
        return sum(e - s + 1 for s, e in self.ranges)


def read_reserved(root: Path | str = "/") -> Reserved:
    """Read "Crash kernel" ranges from ``/proc/iomem`` and ``/sys/kernel/kexec_crash_size``.

    A low + high reservation shows two "Crash kernel" entries.  Unprivileged
    readers see zero addresses in ``/proc/iomem``; that is reported as an
    error rather than as "nothing reserved".
    """
    from kdumpkit.kexec.iomem import Kind, parse_iomem, read_iomem

    rootp = Path(root)
    tree = parse_iomem(read_iomem(rootp))
    ranges = tuple((r.start, r.end) for r in tree.walk() if r.kind is Kind.CRASH_KERNEL)
    size_file = rootp / "sys/kernel/kexec_crash_size"
    try:
        kcs: int | None = int(size_file.read_text().strip())
    except FileNotFoundError:
        kcs = None
    except (OSError, ValueError) as e:
        raise KdumpkitError(f"cannot read {size_file}: {e}") from e
    return Reserved(ranges, kcs)


# -- kdumpctl's defaults and estimate ----------------------------------------------
DEFAULT_TABLES = {
    "x86_64": "2G-64G:256M,64G-:512M",
    "s390x": "2G-64G:256M,64G-:512M",
    "aarch64": "2G-4G:256M,4G-64G:320M,64G-:576M",
    "ppc64le": "2G-4G:384M,4G-16G:512M,16G-64G:1G,64G-128G:2G,128G-:4G",
}
SME_SEV_EXTRA = 64 * SZ_1M


def default_crashkernel(arch: str = "x86_64", *, sme_sev: bool = False) -> Crashkernel:
    """kdumpctl's ``get-default-crashkernel`` table for ``arch`` (kdump-lib.sh).

    With SME/SEV active kdumpctl adds 64M to every entry (x86_64 and s390x
    only), for the swiotlb bounce buffers an encrypted guest needs.
    """
    try:
        ck = parse(DEFAULT_TABLES[arch])
    except KeyError:
        raise ConfigError(f"no default crashkernel table for {arch!r} (known: {', '.join(DEFAULT_TABLES)})") from None
    if sme_sev and arch in ("x86_64", "s390x"):
        ck = Crashkernel(ranges=tuple(CrashkernelRange(r.start, r.end, r.size + SME_SEV_EXTRA) for r in ck.ranges))
        ck = Crashkernel(ranges=ck.ranges, text=ck.format())
    return ck


@dataclass(frozen=True)
class Estimate:
    """kdumpctl-style estimate of the memory the capture kernel needs."""

    kernel: int
    modules: int
    initramfs: int
    runtime: int
    luks: int
    initramfs_factor: int
    baseline: int          # the default-table value for this RAM size

    @property
    def estimated(self) -> int:
        return self.kernel + self.modules + self.initramfs_factor * self.initramfs + self.runtime + self.luks

    @property
    def recommended(self) -> int:
        """max(table value, estimate), rounded up to a whole MiB."""
        return math.ceil(max(self.baseline, self.estimated) / SZ_1M) * SZ_1M


def estimate(*, kernel_size: int, modules_size: int, initramfs_size: int, system_ram: int,
             luks_memory: int = 0, runtime: int = 16 * SZ_1M, initramfs_factor: int = 3,
             arch: str = "x86_64") -> Estimate:
    """``kdumpctl estimate``: kernel + modules + 3 x initramfs + 16M runtime + LUKS2 keyslot memory.

    The initramfs counts three times: the compressed copy, the unpacked
    files, and the slack of unpacking (the lab measured ~2-3 MB of
    reservation per unpacked MB; see lab-notes).  Older kdumpctl versions
    used 1 x initramfs + 64M runtime: pass ``initramfs_factor=1,
    runtime=64M`` to get those numbers.
    """
    baseline = default_crashkernel(arch).size_for(system_ram)
    return Estimate(kernel_size, modules_size, initramfs_size, runtime, luks_memory, initramfs_factor, baseline)


def loaded_modules_size(root: Path | str = "/", names: set[str] | None = None) -> int:
    """Sum of the static sizes in ``/proc/modules`` (only ``names`` if given, e.g. the capture initramfs' modules)."""
    path = Path(root) / "proc/modules"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    total = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit() and (names is None or parts[0] in names):
            total += int(parts[1])
    return total
