"""A tiny kernel module that oopses or spins, for the oops and softlockup scenarios.

Userspace has no way to oops a Debian kernel or spin in it with preemption off
(no lkdtm, no test_lockup in Debian's configs, and SysRq-c calls panic()
directly), so these scenarios need a module built against the kernel's headers.
"""

from __future__ import annotations

from pathlib import Path

from kdumpkit.errors import LabError
from kdumpkit.lab.kernels import Kernel


def crash_module(kernel: Kernel) -> Path:
    """Path of ``kdumpkit_lab_crash.ko`` built for ``kernel``."""
    raise LabError(f"building a crash module for {kernel.release} is not implemented yet")
