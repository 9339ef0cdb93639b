"""VMCOREINFO: what the crashed kernel wrote about itself.

The kernel appends ``KEY=VALUE`` lines to a page-sized note (formats.md §2).
Everything kdumpkit knows about a kernel without vmlinux comes from here:
symbol addresses (already KASLR-relocated), structure sizes and offsets, and
a few numbers.  The value syntax differs per key family, so each family has
its own accessor instead of one generic "int" getter:

* ``SYMBOL()``, ``KERNELOFFSET``: hex without ``0x``;
* ``SIZE()``, ``OFFSET()``, ``LENGTH()``, ``PAGESIZE``, ``CRASHTIME``: decimal;
* ``NUMBER()``: signed decimal, or ``0x`` hex from arch code.

Parsing follows makedumpfile (the tool whose output we must match): the
**first** line starting with ``KEY=`` wins, a decimal parse with trailing
characters is retried as hex, and a final line without ``\\n`` is ignored
because the kernel may have been cut off while appending it.  Absent keys
read as ``None``; 0 is a valid value (e.g. ``NUMBER(phys_base)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from kdumpkit.errors import KernelError, VmcoreinfoMissingError

if TYPE_CHECKING:
    from kdumpkit.dump.base import Dump

__all__ = ["MAX_PAGE_SIZE", "MIN_PAGE_SIZE", "VmcoreInfo", "parse_vmcoreinfo"]

#: The page sizes Linux is built with: 4 KiB (x86_64, s390x, riscv64, and the
#: default elsewhere), 16 KiB and 64 KiB (arm64, ppc64, loongarch64, mips64),
#: 256 KiB (ppc44x, hexagon).  PAGESIZE outside this range is a corrupt note:
#: a page of 1 byte turns every page map into a byte map, one of 1 GiB makes
#: every page read a gigabyte.
MIN_PAGE_SIZE = 4096
MAX_PAGE_SIZE = 1 << 18


def parse_vmcoreinfo(text: bytes) -> dict[str, str]:
    """``KEY -> VALUE`` of the complete lines of ``text``; the first occurrence wins."""
    raw: dict[str, str] = {}
    # Only lines ending in "\n" are complete; the descriptor may also carry
    # NUL padding after the text.
    body = text.split(b"\0", 1)[0]
    lines = body.split(b"\n")
    for line in lines[:-1]:  # the last piece has no "\n": partial or empty
        key, sep, value = line.partition(b"=")
        if not sep or not key:
            continue
        k = key.decode("ascii", "replace").strip()
        if k not in raw:
            raw[k] = value.decode("ascii", "replace").strip()
    return raw


def _int_auto(key: str, value: str) -> int:
    """makedumpfile's number rule: decimal, else (trailing garbage) hex."""
    try:
        return int(value, 10)
    except ValueError:
        pass
    try:
        return int(value, 16)
    except ValueError:
        raise KernelError(f"VMCOREINFO {key}={value!r} is not a number") from None


def _int_hex(key: str, value: str) -> int:
    try:
        return int(value, 16)
    except ValueError:
        raise KernelError(f"VMCOREINFO {key}={value!r} is not a hex number") from None


@dataclass(frozen=True)
class VmcoreInfo:
    """Typed access to a parsed VMCOREINFO text."""

    text: bytes
    raw: Mapping[str, str] = field(default_factory=dict)

    # -- constructors -------------------------------------------------------
    @classmethod
    def from_text(cls, text: bytes | bytearray | memoryview) -> VmcoreInfo:
        data = bytes(text)
        return cls(data, MappingProxyType(parse_vmcoreinfo(data)))

    @classmethod
    def from_dump(cls, dump: Dump) -> VmcoreInfo:
        """The VMCOREINFO note of a dump; raises :class:`VmcoreinfoMissingError` without one."""
        raw = dump.vmcoreinfo_raw()
        if raw is None:
            raise VmcoreinfoMissingError(f"{getattr(dump, 'path', 'dump')} has no VMCOREINFO note")
        info = cls.from_text(raw)
        if not info.raw:
            raise VmcoreinfoMissingError(f"{getattr(dump, 'path', 'dump')}: VMCOREINFO note is empty")
        return info

    @classmethod
    def from_file(cls, path: str) -> VmcoreInfo:
        """A text file such as ``makedumpfile -g`` writes."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise KernelError(f"cannot read VMCOREINFO file {path}: {e.strerror}") from None
        info = cls.from_text(data)
        if not info.raw:
            raise VmcoreinfoMissingError(f"{path} holds no KEY=VALUE lines")
        return info

    @classmethod
    def from_live(cls, sysfs: str = "/sys/kernel/vmcoreinfo", kcore: str = "/proc/kcore") -> VmcoreInfo:
        """VMCOREINFO of the running kernel.

        ``/sys/kernel/vmcoreinfo`` gives the physical address and size of the
        note; its bytes are read through ``/proc/kcore`` (root only), whose
        RAM segments carry physical addresses in ``p_paddr``.  Kernels since
        4.19 also put a VMCOREINFO note in kcore itself, used as a fallback.
        """
        from kdumpkit.kernel._kcore import read_live_vmcoreinfo

        return cls.from_text(read_live_vmcoreinfo(sysfs, kcore))

    # -- generic access -----------------------------------------------------
    def get(self, key: str) -> str | None:
        return self.raw.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self.raw

    def _auto(self, key: str) -> int | None:
        v = self.raw.get(key)
        return None if v is None else _int_auto(key, v)

    # -- key families -------------------------------------------------------
    def symbol(self, name: str) -> int | None:
        """Runtime (already relocated) address of ``SYMBOL(name)``."""
        key = f"SYMBOL({name})"
        v = self.raw.get(key)
        return None if v is None else _int_hex(key, v)

    def size(self, name: str) -> int | None:
        return self._auto(f"SIZE({name})")

    def offset(self, name: str) -> int | None:
        """``OFFSET(struct.field)``; pass ``"struct.field"``."""
        return self._auto(f"OFFSET({name})")

    def length(self, name: str) -> int | None:
        return self._auto(f"LENGTH({name})")

    def number(self, name: str) -> int | None:
        """``NUMBER(name)``: signed decimal, or hex with ``0x`` (arch keys)."""
        return self._auto(f"NUMBER({name})")

    def config(self, name: str) -> str | None:
        """Value of ``CONFIG_<name>=`` (``"y"``), with or without the prefix."""
        key = name if name.startswith("CONFIG_") else f"CONFIG_{name}"
        return self.raw.get(key)

    # -- well-known keys ----------------------------------------------------
    @property
    def osrelease(self) -> str | None:
        return self.raw.get("OSRELEASE")

    @property
    def build_id(self) -> str | None:
        v = self.raw.get("BUILD-ID")
        return v.lower() if v else None

    @property
    def page_size(self) -> int | None:
        """``PAGESIZE``, checked once here: a power of two from :data:`MIN_PAGE_SIZE` to :data:`MAX_PAGE_SIZE`."""
        v = self._auto("PAGESIZE")
        if v is not None and not (MIN_PAGE_SIZE <= v <= MAX_PAGE_SIZE and v & (v - 1) == 0):
            raise KernelError(f"VMCOREINFO PAGESIZE={v} is not a page size "
                              f"(a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE})")
        return v

    @property
    def crashtime(self) -> int | None:
        return self._auto("CRASHTIME")

    @property
    def kerneloffset(self) -> int | None:
        v = self.raw.get("KERNELOFFSET")
        return None if v is None else _int_hex("KERNELOFFSET", v)

    def kernel_version(self) -> tuple[int, int, int] | None:
        """``(major, minor, patch)`` from OSRELEASE, for layout decisions."""
        rel = self.osrelease
        if not rel:
            return None
        nums: list[int] = []
        for part in rel.split(".")[:3]:
            digits = ""
            for ch in part:
                if not ch.isdigit():
                    break
                digits += ch
            if not digits:
                break
            nums.append(int(digits))
            if len(digits) != len(part):
                break
        while len(nums) < 3:
            nums.append(0)
        return (nums[0], nums[1], nums[2])

    def require_symbol(self, name: str) -> int:
        v = self.symbol(name)
        if v is None:
            raise KernelError(f"VMCOREINFO lacks SYMBOL({name})")
        return v

    def require_size(self, name: str) -> int:
        v = self.size(name)
        if v is None:
            raise KernelError(f"VMCOREINFO lacks SIZE({name})")
        return v

    def require_offset(self, name: str) -> int:
        v = self.offset(name)
        if v is None:
            raise KernelError(f"VMCOREINFO lacks OFFSET({name})")
        return v

