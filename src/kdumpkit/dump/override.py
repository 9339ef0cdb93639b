"""A layer that gives any dump a VMCOREINFO note it lacks (or replaces a wrong one).

Hypervisor dumps (QEMU without ``-device vmcoreinfo``, VMware checkpoints,
LiME, AVML, LKCD) carry no VMCOREINFO, and everything kdumpkit knows about a
kernel without vmlinux comes from it.  The text can come from a file the
user saved on the running system (``/sys/kernel/vmcoreinfo`` points at it;
``makedumpfile -g`` writes it), or from the dump's own memory
(:mod:`kdumpkit.kernel.vmcoreinfo_scan`).  The layer changes nothing else:
pages, states and every other note pass through, and ``info`` says which
source the VMCOREINFO came from.
"""

from __future__ import annotations

from typing import Any

from kdumpkit.dump.base import Buffer, Dump, DumpInfo, Note, PageState
from kdumpkit.dump.elfnotes import parse_notes
from kdumpkit.errors import KdumpkitError, UsageError

AUTO_SCAN_LIMIT = 4 << 30  # bytes of memory an automatic scan reads before giving up


class VmcoreinfoOverride(Dump):
    """``inner`` with its VMCOREINFO note replaced (or added) by ``text``."""

    def __init__(self, inner: Dump, text: bytes, source: str) -> None:
        self.inner = inner
        self.vmcoreinfo_text = text
        self.vmcoreinfo_source = source
        self.format_name = inner.format_name  # type: ignore[misc]
        self.path = inner.path
        self.page_size = inner.page_size
        self.arch = inner.arch
        self.byteorder = inner.byteorder
        self.max_pfn = inner.max_pfn
        self.incomplete = inner.incomplete

    def __getattr__(self, name: str) -> Any:
        # Format-specific extras (direct_map_base, utsname, registers …) stay reachable.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def ram_runs(self) -> list[tuple[int, int]]:
        return self.inner.ram_runs()

    def dumped_runs(self) -> list[tuple[int, int]]:
        return self.inner.dumped_runs()

    def page_state(self, pfn: int) -> PageState:
        return self.inner.page_state(pfn)

    def missing_runs(self) -> list[tuple[int, int]]:
        return self.inner.missing_runs()

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        return self.inner._read_dumped(pfn, count)

    def notes(self) -> list[Note]:
        kept = [n for n in self.inner.notes() if n.name != "VMCOREINFO"]
        return [*kept, Note("VMCOREINFO", 0, self.vmcoreinfo_text)]

    def info(self) -> DumpInfo:
        base = self.inner.info()
        return DumpInfo(base.format, {**base.details, "vmcoreinfo_source": self.vmcoreinfo_source})

    def close(self) -> None:
        self.inner.close()


def load_vmcoreinfo_file(path: str) -> bytes:
    """VMCOREINFO text from ``path``: plain ``KEY=VALUE`` lines, or an ELF note holding them."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise UsageError(f"cannot read VMCOREINFO file {path}: {e.strerror}") from None
    if b"OSRELEASE=" not in data:
        raise UsageError(f"{path} does not look like VMCOREINFO (no OSRELEASE= line)")
    if not data.startswith(b"OSRELEASE=") and b"VMCOREINFO\0" in data[:64]:
        for note in parse_notes(data):
            if note.name == "VMCOREINFO":
                return note.desc
    text = data.split(b"\0", 1)[0]
    return text if text.endswith(b"\n") else text + b"\n"


def with_vmcoreinfo(dump: Dump, spec: str | None = None) -> Dump:
    """The dump as analysis should see it.

    ``spec`` is a file (its VMCOREINFO replaces the dump's), ``"scan"`` (search
    all of memory when the dump has none), ``"none"`` (leave it), or None: keep
    the dump's own note, and if there is none try a bounded memory scan.
    """
    if spec == "none":
        return dump
    if spec not in (None, "scan"):
        return VmcoreinfoOverride(dump, load_vmcoreinfo_file(spec), f"file {spec}")
    if dump.vmcoreinfo_raw() is not None:
        return dump
    from kdumpkit.kernel.vmcoreinfo_scan import scan_vmcoreinfo

    try:
        hit = scan_vmcoreinfo(dump, limit_bytes=None if spec == "scan" else AUTO_SCAN_LIMIT)
    except KdumpkitError:
        return dump
    if hit is None:
        return dump
    text, paddr = hit
    return VmcoreinfoOverride(dump, text, f"memory scan (note at physical {paddr:#x})")
