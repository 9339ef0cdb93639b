"""The crashed kernel's ``init_uts_ns.name`` (what ``uname -a`` said).

makedumpfile copies it into the kdump header's ``utsname``; crash checks its
``machine`` field.  VMCOREINFO gives ``SYMBOL(init_uts_ns)`` and, since 5.11,
``OFFSET(uts_namespace.name)`` (before that the name sat after a ``struct
kref``, 4 bytes, padded to offset 4 — we fall back to that).
"""

from __future__ import annotations

from kdumpkit.dump.base import Dump
from kdumpkit.errors import KdumpkitError
from kdumpkit.structs import cstr

UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")
UTS_LEN = 65
LEGACY_NAME_OFFSET = 4


def read_utsname(dump: Dump) -> dict[str, str] | None:
    """The six utsname strings, or None when the dump cannot tell."""
    try:
        from kdumpkit.kernel.memory import kernel_memory
        from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

        info = VmcoreInfo.from_dump(dump)
        sym = info.symbol("init_uts_ns")
        if sym is None:
            return None
        off = info.offset("uts_namespace.name")
        raw = kernel_memory(dump, info).read_virt(sym + (off if off is not None else LEGACY_NAME_OFFSET),
                                                  UTS_LEN * len(UTS_FIELDS))
    except KdumpkitError:
        return None
    uts = {f: cstr(raw[i * UTS_LEN:(i + 1) * UTS_LEN]) for i, f in enumerate(UTS_FIELDS)}
    # A wrong offset reads garbage: trust it only if the release matches VMCOREINFO.
    if info.osrelease is not None and uts["release"] != info.osrelease:
        return None
    return uts
