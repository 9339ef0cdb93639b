"""Does the filter agree with the kernel's own bookkeeping?

Page filtering trusts ``struct page`` offsets and page-type values from
VMCOREINFO; a wrong one (a new kernel era, a distro backport) silently
drops the wrong pages.  The kernel counts its free pages itself, so the
number of pages the filter found in buddy blocks must match it:

* **NR_FREE_PAGES** — ``zone.vm_stat[NUMBER(NR_FREE_PAGES)]`` summed over
  every zone of every online node.  VMCOREINFO exports what this needs:
  ``SYMBOL(node_data)`` + ``LENGTH(node_data)`` (NUMA) or
  ``SYMBOL(contig_page_data)``, ``SYMBOL(node_online_map)``,
  ``OFFSET(pglist_data.node_zones)``, ``OFFSET(pglist_data.nr_zones)``,
  ``SIZE(zone)``, ``OFFSET(zone.vm_stat)``, ``NUMBER(NR_FREE_PAGES)``.  The
  global ``vm_zone_stat`` is not exported, and node counters such as
  NR_FILE_PAGES live in ``pglist_data.vm_stat`` whose offset is not
  exported either, so file pages are not checked.

The zone counter lags the truth by the per-CPU deltas not yet folded in
(at most ``stat_threshold`` ≤ 125 pages per CPU per zone), and pages in
isolated pageblocks are buddy pages the counter leaves out; the margin is
therefore ``max(1% of RAM, 125 × CPUs × zones)`` pages.  A wrong offset or
page-type value misses by far more (typically everything or nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdumpkit.errors import KdumpkitError, KernelError
from kdumpkit.kernel.mm import plausible

if TYPE_CHECKING:
    from kdumpkit.kernel.memory import KernelMemory
    from kdumpkit.kernel.pageflags import PageFlagsSpec
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

__all__ = ["SelfCheck", "kernel_free_pages", "run_selfcheck"]

STAT_THRESHOLD_MAX = 125
MAX_NUMNODES = 1 << 10
MARGIN_FRACTION = 0.01


@dataclass
class SelfCheck:
    """Outcome of the comparison (``ok`` is also True when nothing could be compared)."""

    ok: bool
    message: str
    free_found: int | None = None
    free_kernel: int | None = None
    margin: int | None = None
    counter: str | None = None
    """Which kernel counter was used, e.g. ``"zone.vm_stat[NR_FREE_PAGES] (3 zones, node_data)"``."""
    checked: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "message": self.message, "free_found": self.free_found,
                "free_kernel": self.free_kernel, "margin": self.margin, "counter": self.counter, **self.details}


def _online_nodes(kmem: KernelMemory, info: VmcoreInfo, max_nodes: int) -> list[int]:
    sym = info.symbol("node_online_map")
    if not sym:
        return [0]
    nbytes = info.size("nodemask_t") or 8
    nbytes = min(nbytes, (max_nodes + 7) // 8 or 1)
    try:
        raw = kmem.read_virt(sym, max(nbytes, 1))
    except KdumpkitError:
        return [0]
    mask = int.from_bytes(raw, "little") & ((1 << max_nodes) - 1)
    return [n for n in range(mask.bit_length()) if mask >> n & 1] or [0]


def kernel_free_pages(kmem: KernelMemory, info: VmcoreInfo) -> tuple[int, str, int]:
    """``(free pages, counter description, zones)`` from the zones' vm_stat; raises :class:`KernelError`."""
    idx = info.number("NR_FREE_PAGES")
    zone_size = info.size("zone")
    off_vm = info.offset("zone.vm_stat")
    off_zones = info.offset("pglist_data.node_zones")
    off_nr = info.offset("pglist_data.nr_zones")
    if idx is None or zone_size is None or off_vm is None or off_zones is None:
        raise KernelError("VMCOREINFO lacks NUMBER(NR_FREE_PAGES), SIZE(zone), OFFSET(zone.vm_stat) "
                          "or OFFSET(pglist_data.node_zones)")
    pgdats: list[int] = []
    where: str
    node_data = info.symbol("node_data")
    if node_data:
        # MAX_NUMNODES is at most 1 << NODES_SHIFT (10): more is a bad fact, not a bigger machine
        n = plausible("LENGTH(node_data)", info.length("node_data") or 1, 1, MAX_NUMNODES)
        for node in _online_nodes(kmem, info, n):
            p = kmem.read_pointer(node_data + node * kmem.pointer_size)
            if p:
                pgdats.append(p)
        where = "node_data"
    else:
        cpd = info.symbol("contig_page_data")
        if not cpd:
            raise KernelError("VMCOREINFO has neither SYMBOL(node_data) nor SYMBOL(contig_page_data)")
        pgdats.append(cpd)
        where = "contig_page_data"
    total = 0
    zones = 0
    for pgdat in pgdats:
        nr_zones = kmem.read_s32(pgdat + off_nr) if off_nr is not None else 4
        if not 0 < nr_zones <= 8:
            raise KernelError(f"pglist_data at {pgdat:#x} has nr_zones={nr_zones}")
        for z in range(nr_zones):
            zone = pgdat + off_zones + z * zone_size
            v = kmem._int(zone + off_vm + idx * 8, 8, signed=True)
            total += max(v, 0)
            zones += 1
    return total, f"zone.vm_stat[NR_FREE_PAGES] ({zones} zones of {len(pgdats)} node(s), {where})", zones


def run_selfcheck(kmem: KernelMemory, info: VmcoreInfo, spec: PageFlagsSpec, *, free_seen: int, ram_pages: int,
                  ncpus: int) -> SelfCheck:
    """Compare ``free_seen`` (pages in buddy blocks) with the kernel's NR_FREE_PAGES."""
    if not spec.can_find_free:
        return SelfCheck(True, "not checked: buddy pages are not recognisable from VMCOREINFO", free_found=free_seen)
    try:
        kernel, counter, zones = kernel_free_pages(kmem, info)
    except KdumpkitError as e:
        return SelfCheck(True, f"not checked: {e}", free_found=free_seen)
    margin = max(int(ram_pages * MARGIN_FRACTION), STAT_THRESHOLD_MAX * ncpus * max(zones, 1))
    diff = free_seen - kernel
    ok = abs(diff) <= margin
    if ok:
        msg = f"free pages {free_seen} vs kernel {kernel} ({diff:+d}, margin {margin})"
    else:
        msg = (f"free pages found in struct page ({free_seen}) disagree with the kernel's {counter} ({kernel}) "
               f"by {diff:+d} pages, beyond the margin of {margin}: VMCOREINFO offsets or page-type values "
               f"may not fit this kernel")
    return SelfCheck(ok, msg, free_found=free_seen, free_kernel=kernel, margin=margin, counter=counter, checked=True)
