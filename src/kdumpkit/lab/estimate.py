"""The smallest ``crashkernel=`` that really works, measured by crashing the lab guest.

Tables (kdumpctl's) and formulas (``kdumpctl estimate``) guess; this boots
the capture kernel with its initramfs under decreasing reservations and
bisects to the smallest one with which a capture completes.  A failure is
whatever the lab reports: ``kexec_file_load`` refusing an image that does not
fit, ``Initramfs unpacking failed``, an OOM kill in the capture, a timeout.
Each trial is a full crash cycle (about a minute with TCG), so this is a
command to run by hand, never part of ``make test``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import LabError
from kdumpkit.kexec import crashkernel
from kdumpkit.kexec.bzimage import read_bzimage
from kdumpkit.lab.kernels import Kernel
from kdumpkit.lab.run import run

#: Reservations tried, largest first (MiB).
SIZES_MB = (512, 384, 256, 192, 160, 128, 112, 96, 88, 80, 72, 64)
SZ_1M = 1 << 20


@dataclass
class Trial:
    mb: int
    ok: bool
    detail: str
    capture_s: float | None = None


@dataclass
class CrashkernelEstimate:
    capture: str
    mem_mb: int
    smallest_mb: int | None
    first_failed_mb: int | None
    margin_mb: int
    table_mb: int
    formula_mb: int
    trials: list[Trial] = field(default_factory=list)

    @property
    def recommended_mb(self) -> int | None:
        return None if self.smallest_mb is None else self.smallest_mb + self.margin_mb


def _formula_mb(k: Kernel, initrd_size: int, modules_size: int, mem_mb: int) -> int:
    kernel_size = read_bzimage(k.vmlinuz).init_size
    est = crashkernel.estimate(kernel_size=kernel_size, modules_size=modules_size, initramfs_size=initrd_size,
                               system_ram=mem_mb * SZ_1M)
    return -(-est.estimated // SZ_1M)


def estimate_crashkernel(k: Kernel, *, capture: str = "kdumpkit", mem_mb: int = 1024, sizes: tuple[int, ...] = SIZES_MB,
                         margin: float = 0.25, timeout: float = 300, accel: str = "auto",
                         on_trial: Callable[[Trial], None] | None = None) -> CrashkernelEstimate:
    """Bisect ``sizes`` (MiB, largest first) for the smallest reservation that captures."""
    cand = sorted(s for s in sizes if s < mem_mb)
    trials: dict[int, Trial] = {}
    initrd_size = modules_size = 0

    def trial(mb: int) -> bool:
        nonlocal initrd_size, modules_size
        with tempfile.TemporaryDirectory(prefix="kdumpkit-ck-") as tmp:
            try:
                r = run(k, out=Path(tmp), mem_mb=mem_mb, crashkernel=f"{mb}M", capture=capture, timeout=timeout,
                        accel=accel)
                t = Trial(mb, True, "captured", r.timings.get("capture"))
                if r.initramfs:
                    initrd_size = r.initramfs.get("capture_compressed", 0)
            except LabError as e:
                t = Trial(mb, False, str(e).split(" (console log")[0])
        trials[mb] = t
        if on_trial is not None:
            on_trial(t)
        return t.ok

    lo, hi = 0, len(cand) - 1   # invariant: cand[hi] works (checked first), everything below lo fails
    if not trial(cand[hi]):
        smallest = None
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            if trial(cand[mid]):
                hi = mid
            else:
                lo = mid + 1
        smallest = cand[hi]
    failed = max((t.mb for t in trials.values() if not t.ok and (smallest is None or t.mb < smallest)), default=None)
    if not initrd_size:
        from kdumpkit.lab.initramfs import build_base

        initrd_size = len(build_base(k)[0])
    modules_size = sum(p.stat().st_size for p in k.modules_dir.rglob("virtio*.ko"))
    table = crashkernel.default_crashkernel("x86_64").size_for(mem_mb * SZ_1M) // SZ_1M
    margin_mb = 0 if smallest is None else max(16, int(smallest * margin) // 8 * 8)
    return CrashkernelEstimate(capture, mem_mb, smallest, failed, margin_mb, table,
                               _formula_mb(k, initrd_size, modules_size, mem_mb),
                               sorted(trials.values(), key=lambda t: -t.mb))
