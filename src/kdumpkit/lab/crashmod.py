"""A tiny kernel module that oopses or spins, for the oops and softlockup scenarios.

Userspace cannot oops a Debian kernel or make it spin with preemption off:
Debian builds neither lkdtm nor test_lockup, and SysRq-c calls panic()
directly.  So these scenarios insert a module, built on the host against the
kernel's own headers (``linux-headers-<release>`` and the packages it depends
on, fetched like the kernel under the private apt configuration).  Only Debian
suite kernels have headers this way; custom kernels cannot run these scenarios.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from kdumpkit.errors import LabError
from kdumpkit.lab.cache import lab_dir
from kdumpkit.lab.kernels import Kernel, _apt_opts, _run

MODULE_NAME = "kdumpkit_lab_crash"
MODULE_SOURCE = r"""// SPDX-License-Identifier: GPL-2.0
/* kdumpkit lab: crash the kernel on purpose, from module init. */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/preempt.h>
#include <linux/string.h>

static char *action = "oops";
module_param(action, charp, 0444);
MODULE_PARM_DESC(action, "oops (NULL pointer write) or softlockup (spin with preemption off)");

static int *volatile lab_null;

static int __init lab_crash_init(void)
{
	pr_emerg("kdumpkit_lab_crash: action=%s\n", action);
	if (!strcmp(action, "oops")) {
		*lab_null = 1;
	} else if (!strcmp(action, "softlockup")) {
		preempt_disable();
		for (;;)
			cpu_relax();
	}
	return -EINVAL;
}
module_init(lab_crash_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdumpkit lab crash trigger");
"""


def _headers(kernel: Kernel) -> Path:
    """Unpacked ``linux-headers-<release>`` (+ common + kbuild); the build directory."""
    root = lab_dir("headers", kernel.name, kernel.package_version)
    build = root / "usr/src" / f"linux-headers-{kernel.release}"
    if (root / ".complete").is_file():
        return build
    opts, base = _apt_opts(kernel.name)
    pkg = f"linux-headers-{kernel.release}"
    show = _run(["apt-cache", *opts, "show", "--no-all-versions", pkg])
    deps = re.search(r"^Depends:(.*)$", show, re.M)
    wanted = [pkg] + [d for d in re.findall(r"(linux-(?:headers|kbuild)-[^\s,(]+)", deps.group(1) if deps else "")]
    dl = base / "debs-headers"
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir()
    _run(["apt-get", *opts, "-qq", "download", *wanted], cwd=dl, timeout=1800)
    for deb in sorted(dl.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(root)], timeout=900)
    shutil.rmtree(dl, ignore_errors=True)
    # Debian's headers Makefile includes the common tree by absolute path.
    mk = build / "Makefile"
    if not mk.is_file():
        raise LabError(f"{pkg} has no Makefile")
    mk.write_text(mk.read_text().replace("/usr/src/", f"{root}/usr/src/"))
    (root / ".complete").write_text(" ".join(wanted) + "\n")
    return build


def crash_module(kernel: Kernel) -> Path:
    """Path of ``kdumpkit_lab_crash.ko`` built for ``kernel`` (cached)."""
    if kernel.name == "custom":
        raise LabError("the oops and softlockup scenarios need kernel headers; custom kernels have none here")
    out = lab_dir("crashmod", kernel.name, kernel.package_version) / f"{MODULE_NAME}.ko"
    if out.is_file():
        return out
    if shutil.which("make") is None or shutil.which("gcc") is None:
        raise LabError("building the crash module needs make and gcc (make apt)")
    build = _headers(kernel)
    src = out.parent / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    (src / f"{MODULE_NAME}.c").write_text(MODULE_SOURCE)
    # No objtool: it is one more host binary that must run here, and a module
    # that exists to crash needs no stack validation.
    (src / "Kbuild").write_text(f"obj-m := {MODULE_NAME}.o\nOBJECT_FILES_NON_STANDARD := y\n")
    # The host's gcc, whatever version built the kernel: a one-function module
    # does not care.  Options the host's gcc does not know (a newer suite's
    # kernel was built with a newer gcc) are learned from its errors and
    # dropped by a wrapper, then the build is retried.
    drop = src / "drop-options"
    drop.write_text("")
    cc = src / "cc"
    cc.write_text('#!/bin/sh\ndrop=" $(cat "%s") "\nfor a; do shift; case "$drop" in *" $a "*) ;; '
                  '*) set -- "$@" "$a";; esac; done\nexec gcc "$@"\n'.replace("%s", str(drop)))
    cc.chmod(0o755)
    ko = src / f"{MODULE_NAME}.ko"
    for _attempt in range(10):
        p = subprocess.run(["make", "-C", str(build), f"M={src}", f"CC={cc}", "modules"], capture_output=True,
                           text=True, timeout=600)
        if p.returncode == 0 and ko.is_file():
            break
        unknown = re.findall(r"unrecognized command-line option [‘'`]([^’']+)[’']", p.stderr + p.stdout)
        known = drop.read_text().split()
        new = [o for o in unknown if o not in known]
        glibc = re.search(r"(\S+): .*version `(GLIBC_[0-9.]+)' not found", p.stderr + p.stdout)
        if glibc:
            raise LabError(f"the kernel headers' build tools for {kernel.release} need {glibc.group(2)}, newer than "
                           f"this host's C library; build the {kernel.name} crash module on a newer host")
        if not new:
            err = [ln for ln in (p.stderr + p.stdout).splitlines() if "rror" in ln] or p.stderr.splitlines()[-1:]
            raise LabError(f"building the crash module for {kernel.release} failed: {(err or ['?'])[0].strip()}")
        drop.write_text(" ".join(known + new) + "\n")
    else:
        raise LabError(f"building the crash module for {kernel.release} failed: too many unknown compiler options")
    shutil.copyfile(ko, out)
    return out
