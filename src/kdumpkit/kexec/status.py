"""Is this machine ready to take a crash dump?  One check per line: ok, warn or fail.

Like ``kdumpctl status`` the answer is an exit code (non-zero when any check
fails), but every reason is shown, because "not operational" alone sends the
admin to read scripts.  All paths are read below ``root`` so tests run on a
fixture tree.

What fails: no crash kernel memory reserved; no capture kernel loaded; the
dump target (when given) has less free space than even a filtered dump needs.
What warns: sysctls that make some crashes not dump (``panic_on_oops=0``
keeps an oops from panicking; ``unknown_nmi_panic=0`` ignores the "dump"
NMI button); ``kernel.sysrq`` without the crash bit; a target with room for a
filtered but not for a full dump; a reservation smaller than kdumpctl's
default table recommends; no successful ``kdumpkit test`` recorded, or one
of another kernel release or an older configuration than the running ones.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdumpkit.errors import KdumpkitError
from kdumpkit.kexec import crashkernel
from kdumpkit.kexec.crashkernel import format_size
from kdumpkit.kexec.iomem import parse_iomem, read_iomem

OK, WARN, FAIL = "ok", "warn", "fail"
SYSRQ_ENABLE_DUMP = 0x8   # drivers/tty/sysrq.c: the group SysRq-c (crash) belongs to
LAST_TEST = "var/lib/kdumpkit/last-test.json"   # written by ``kdumpkit test`` on success (below root)


def human(n: int) -> str:
    """Bytes as a short binary-unit size (``1.5 GiB``)."""
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{int(v)} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class Check:
    name: str
    status: str   # ok | warn | fail
    detail: str


@dataclass
class Status:
    checks: list[Check]

    @property
    def ready(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "checks": [asdict(c) for c in self.checks]}


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def in_capture_kernel(root: Path | str = "/") -> bool:
    """Whether this is a capture kernel: ``/proc/vmcore`` exists and the loader passed ``elfcorehdr=``.

    Both, because either alone can mislead: a test points ``--vmcore`` at a
    file on a running system, and a hand-typed command line can carry anything.
    """
    rootp = Path(root)
    cmdline = _read(rootp, "proc/cmdline") or ""
    return (rootp / "proc/vmcore").exists() and any(w.startswith("elfcorehdr=") for w in cmdline.split())


def meminfo(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(root, "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def check_reservation(root: Path) -> list[Check]:
    cmdline = _read(root, "proc/cmdline") or ""
    checks: list[Check] = []
    try:
        opts = crashkernel.from_cmdline(cmdline)
    except KdumpkitError as e:
        return [Check("crashkernel", FAIL, f"invalid crashkernel= on the command line: {e}")]
    ram: int | None = None
    ranges: list[tuple[int, int]] = []
    try:
        iomem = parse_iomem(read_iomem(root))
        ram = iomem.system_ram_size()
        ranges = iomem.crash_kernel()
    except KdumpkitError:
        iomem = None
    size = _int(_read(root, "sys/kernel/kexec_crash_size"))
    total = sum(e - s for s, e in ranges) if iomem is not None else (size or 0)
    given = " ".join(ck.format() for ck in opts.values())
    if total == 0:
        why = f"crashkernel={given} is set but nothing was reserved (see dmesg)" if opts else \
            "no crashkernel= on the kernel command line (kdumpkit crashkernel plan suggests one)"
        return [Check("crashkernel", FAIL, why)]
    where = ", ".join(f"{s:#x}-{e - 1:#x}" for s, e in ranges) or "addresses need root"
    checks.append(Check("crashkernel", OK, f"{format_size(total)} reserved ({where})"
                        + (f" by crashkernel={given}" if given else "")))
    if ram:
        want = crashkernel.default_crashkernel("x86_64").size_for(ram)
        if want and total < want:
            checks.append(Check("crashkernel size", WARN, f"{format_size(total)} is below kdumpctl's default "
                                f"{format_size(want)} for {human(ram)} RAM"))
    return checks


def check_loaded(root: Path) -> Check:
    loaded = _read(root, "sys/kernel/kexec_crash_loaded")
    if loaded is None:
        return Check("capture kernel", FAIL, "/sys/kernel/kexec_crash_loaded missing (kernel without CONFIG_KEXEC?)")
    if loaded == "1":
        return Check("capture kernel", OK, "loaded")
    disabled = _read(root, "proc/sys/kernel/kexec_load_disabled") == "1"
    lockdown = _read(root, "sys/kernel/security/lockdown") or ""
    hint = "not loaded (kdumpkit load)"
    if disabled:
        hint += "; kernel.kexec_load_disabled=1 forbids loading until reboot"
    if "[integrity]" in lockdown or "[confidentiality]" in lockdown:
        hint += "; lockdown is on: only a signed kernel loads (kexec_file_load)"
    return Check("capture kernel", FAIL, hint)


def check_sysctls(root: Path) -> list[Check]:
    out: list[Check] = []
    sysrq = _int(_read(root, "proc/sys/kernel/sysrq"))
    if sysrq is not None:
        # SysRq-c is in the "dump" group (0x8); 1 enables all.  /proc/sysrq-trigger works regardless.
        if sysrq == 1 or sysrq & SYSRQ_ENABLE_DUMP:
            out.append(Check("kernel.sysrq", OK, f"{sysrq}: SysRq-c from the console can force a dump"))
        else:
            out.append(Check("kernel.sysrq", WARN, f"{sysrq}: SysRq-c only through /proc/sysrq-trigger "
                             "(set 1, or add 8, to allow it from the console)"))
    for name, why in (("panic_on_oops", "an oops kills a task without a dump"),
                      ("unknown_nmi_panic", "an NMI button press will not dump"),
                      ("panic_on_warn", None), ("softlockup_panic", None), ("hung_task_panic", None)):
        v = _int(_read(root, f"proc/sys/kernel/{name}"))
        if v is None:
            continue
        if why is None:
            if v:
                out.append(Check(f"kernel.{name}", OK, f"{v}: these also panic and dump"))
            continue
        out.append(Check(f"kernel.{name}", OK if v else WARN, f"{v}" + ("" if v else f": {why}")))
    return out


def check_target(root: Path, target: str) -> list[Check]:
    """Free space at ``target`` against the sizes a dump can take.

    Lower bound ("filtered"): memory that is neither free nor page cache,
    uncompressed -- roughly what dump level 31 keeps.  Upper bound: all RAM
    (dump level 0, uncompressed).
    """
    try:
        st = os.statvfs(target)
    except OSError as e:
        return [Check("target", FAIL, f"{target}: {e.strerror or e}")]
    free = st.f_bavail * st.f_frsize
    mi = meminfo(root)
    total = mi.get("MemTotal", 0)
    filtered = max(total - mi.get("MemFree", 0) - mi.get("Cached", 0) - mi.get("Buffers", 0), 0)
    if free < filtered:
        return [Check("target", FAIL, f"{target}: {human(free)} free, a filtered dump needs "
                      f"about {human(filtered)}")]
    if free < total:
        return [Check("target", WARN, f"{target}: {human(free)} free: enough for a filtered "
                      f"dump (~{human(filtered)}), not for a full one "
                      f"({human(total)})")]
    return [Check("target", OK, f"{target}: {human(free)} free, RAM "
                  f"{human(total)}")]


def _age(seconds: float) -> str:
    s = max(int(seconds), 0)
    for unit, n in (("day", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            v = s // n
            return f"{v} {unit}{'s' if unit == 'day' and v != 1 else ''} ago"
    return "just now"


def check_last_test(root: Path, now: float | None = None) -> Check:
    """The last successful ``kdumpkit test``: when, which kernel, and whether it still matches."""
    name = "last test"
    text = _read(root, LAST_TEST)
    if text is None:
        return Check(name, WARN, "no successful kdumpkit test recorded (kdumpkit test crashes this kernel "
                     "with this configuration in a QEMU guest)")
    try:
        rec = json.loads(text)
        kernel = rec["kernel"]["release"]
        when = float(rec["timestamp"])
    except (ValueError, KeyError, TypeError):
        return Check(name, WARN, f"/{LAST_TEST} is unreadable: run kdumpkit test again")
    age = _age((time.time() if now is None else now) - when)
    levels = rec.get("dump_levels") or []
    what = (f"passed {age} ({rec.get('time', '?')}): kernel {kernel}, dump level "
            f"{','.join(str(v) for v in levels) or '?'}, {rec.get('codec', '?')}, "
            f"crashkernel={rec.get('crashkernel', '?')}")
    problems: list[str] = []
    running = _read(root, "proc/sys/kernel/osrelease")
    if running and running != kernel:
        problems.append(f"the running kernel is {running}")
    cfg = rec.get("config")
    if isinstance(cfg, dict) and cfg.get("path") and cfg.get("sha256"):
        try:
            data = (root / str(cfg["path"]).lstrip("/")).read_bytes()
        except OSError:
            problems.append(f"{cfg['path']} is gone")
        else:
            import hashlib

            if hashlib.sha256(data).hexdigest() != cfg["sha256"]:
                problems.append(f"{cfg['path']} changed since")
    if problems:
        return Check(name, WARN, f"{what}; but {', '.join(problems)}: run kdumpkit test again")
    return Check(name, OK, what)


def status(root: Path | str = "/", target: str | None = None) -> Status:
    rootp = Path(root)
    checks = check_reservation(rootp)
    checks.append(check_loaded(rootp))
    checks += check_sysctls(rootp)
    if target is not None:
        checks += check_target(rootp, target)
    checks.append(check_last_test(rootp))
    return Status(checks)
