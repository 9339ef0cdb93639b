"""Shared fixtures: the lab's reference crash dumps.

``ref_bookworm``, ``ref_bullseye`` and ``ref_trixie`` are one real crash of each
lab kernel (SysRq-c, 1 GiB guest, crashkernel=256M), built once by
:func:`kdumpkit.lab.reference.reference_set` and cached under
``${KDUMPKIT_CACHE:-~/.cache/kdumpkit}/lab``.  On a fresh machine the first
use downloads the kernel and boots QEMU: about a minute per kernel with TCG
(docs/lab.md), so ``make test`` runs every real-kernel test instead of
skipping it.  A test parametrized by kernel name gets its set with
``request.getfixturevalue(f"ref_{kernel}")``.  Only a host without the lab's
tools (QEMU, busybox, kexec, makedumpfile, apt) skips them, with that reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kdumpkit.lab.reference import ReferenceSet


def qemu_missing_reason() -> str | None:
    """Why a lab test cannot boot a guest here, or None if it can."""
    for tool in ("qemu-system-x86_64", "busybox", "kexec", "makedumpfile", "apt-get", "dpkg"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (make apt installs the lab's tools)"
    return None


def require_qemu() -> None:
    """Skip the calling test with a visible reason when the lab cannot run."""
    reason = qemu_missing_reason()
    if reason is not None:
        pytest.skip(reason)


def _reference(kernel: str) -> ReferenceSet:
    from kdumpkit.errors import LabError
    from kdumpkit.lab.reference import reference_set

    try:
        return reference_set(kernel, build=False)
    except LabError:
        pass
    require_qemu()
    return reference_set(kernel)


@pytest.fixture
def lab_required() -> None:
    """Use in a test that boots QEMU: skips it, with the reason, where the lab cannot run."""
    require_qemu()


@pytest.fixture(scope="session")
def ref_bookworm() -> ReferenceSet:
    """The cached bookworm (6.1) reference crash (built on first use)."""
    return _reference("bookworm")


@pytest.fixture(scope="session")
def ref_bullseye() -> ReferenceSet:
    """The cached bullseye (5.10) reference crash (built on first use)."""
    return _reference("bullseye")


@pytest.fixture(scope="session")
def ref_trixie() -> ReferenceSet:
    """The cached trixie (6.12) reference crash (built on first use)."""
    return _reference("trixie")


@pytest.fixture(scope="session")
def debug_vmlinux_bookworm() -> Path:
    """Debian's debuginfo vmlinux of the bookworm lab kernel (``linux-image-*-dbg``, 860 MB).

    Used when already cached; fetched only in the full lab tier (``KDUMPKIT_LAB_FULL=1``).
    """
    from kdumpkit.lab.cache import lab_dir
    from kdumpkit.lab.kernels import _safe, cached, fetch_debug_vmlinux

    k = cached("bookworm")
    if k is None:
        pytest.skip("no cached bookworm lab kernel")
    have = lab_dir("debug", "bookworm") / _safe(k.package_version) / f"vmlinux-{k.release}"
    if not have.is_file() and os.environ.get("KDUMPKIT_LAB_FULL") != "1":
        pytest.skip("the debuginfo vmlinux (860 MB download) is fetched in the full lab tier only")
    return fetch_debug_vmlinux(k)
