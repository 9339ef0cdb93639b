"""The boot-time pieces: two systemd units and a kernel postinst hook.

* ``kdumpkit-load.service`` loads the capture kernel at every boot (and
  unloads it on stop).  It is skipped, not failed, when no crash memory was
  reserved: ``/sys/kernel/kexec_crash_size`` is 0 after a boot without
  ``crashkernel=``, and a failed unit on every such boot would be noise.
* ``kdumpkit-report.service`` runs ``kdumpkit setup post-boot`` at every
  boot: restore a dump left on a raw device, then write ``report.txt`` and
  ``report.json`` next to each dump that has none — the first-pass triage
  is waiting when the admin logs in after the crash.
* ``/etc/kernel/postinst.d/zz-kdumpkit`` re-arms after a kernel update
  (Debian's hook directory; also run by kernel-install plugins that call it):
  it builds the capture initramfs for the new kernel, and reloads when the
  reinstalled kernel is the running one (otherwise the next boot loads it).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from kdumpkit.errors import ConfigError
from kdumpkit.setup.system import MARK, Change, Context, find_program

UNIT_DIR = "etc/systemd/system"
LOAD_UNIT = "kdumpkit-load.service"
REPORT_UNIT = "kdumpkit-report.service"
UNITS = (LOAD_UNIT, REPORT_UNIT)
WANTS_DIR = f"{UNIT_DIR}/multi-user.target.wants"
POSTINST_HOOK = "etc/kernel/postinst.d/zz-kdumpkit"


_PLAIN = re.compile(r"[A-Za-z0-9/._+:=,@-]+")


def unit_arg(value: str) -> str:
    """One argument of an ``Exec*=`` line, quoted by systemd's rules (systemd.service "Command lines").

    systemd splits on blanks, honours double quotes with C-style backslash
    escapes, expands ``%`` specifiers and ``$VAR``; so a value that is not plain is
    double-quoted with ``\\``, ``\\"``, ``%%`` and ``$$``.  A newline (or any
    control character) would end the directive and start another one: refused.
    """
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ConfigError(f"{value!r}: control characters cannot be passed to a systemd unit")
    if _PLAIN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def unit_path(value: str) -> str:
    """A path in a unit directive that takes a space-separated path list (``RequiresMountsFor=``).

    Such directives have no quoting, only specifiers: blanks and control
    characters cannot be expressed and are refused.
    """
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in value) or not value.startswith("/"):
        raise ConfigError(f"{value!r}: a unit path must be absolute, without blanks or control characters")
    return value.replace("%", "%%")


def load_unit(exe: str, append: str = "") -> str:
    extra = f" --append {unit_arg(append)}" if append else ""
    return f"""# {MARK}
[Unit]
Description=kdumpkit: load the capture kernel (kdump)
After=local-fs.target
ConditionPathExists=/sys/kernel/kexec_crash_size

[Service]
Type=oneshot
RemainAfterExit=yes
# No crash kernel memory reserved (no crashkernel= at boot): skip, do not fail.
ExecCondition=/bin/sh -c 'test "$$(cat /sys/kernel/kexec_crash_size)" -gt 0'
ExecStart={unit_arg(exe)} load{extra}
ExecStop={unit_arg(exe)} unload

[Install]
WantedBy=multi-user.target
"""


def report_unit(exe: str, config: str, mounts: list[str]) -> str:
    requires = f"RequiresMountsFor={' '.join(unit_path(m) for m in sorted(set(mounts)))}\n" if mounts else ""
    return f"""# {MARK}
[Unit]
Description=kdumpkit: restore raw-device dumps and write crash reports after a crash
After=local-fs.target network-online.target
{requires}
[Service]
Type=oneshot
ExecStart={unit_arg(exe)} setup post-boot --config {unit_arg(config)}
Nice=10
IOSchedulingClass=idle

[Install]
WantedBy=multi-user.target
"""


def postinst_hook(exe: str, config: str) -> str:
    return f"""#!/bin/sh
# {MARK}
# Re-arm kdump after a kernel update: build the capture initramfs for the new
# kernel; reload when the updated kernel is the one running.
version="$1"
[ -n "$version" ] || exit 0
[ -x {shlex.quote(exe)} ] || exit 0
config={shlex.quote(config)}
if [ -e "$config" ]; then set -- --config "$config"; else set --; fi
{shlex.quote(exe)} initramfs build --kernel-release "$version" "$@" ||
    echo "kdumpkit: capture initramfs for $version not built (kdump may not work after reboot)" >&2
if [ "$version" = "$(uname -r)" ] && systemctl -q is-active {LOAD_UNIT} 2>/dev/null; then
    systemctl restart {LOAD_UNIT} || echo "kdumpkit: reload failed (kdumpkit status)" >&2
fi
exit 0
"""


def install(ctx: Context, *, exe: str, config: str, mounts: list[str], append: str = "") -> None:
    changed = ctx.write(f"{UNIT_DIR}/{LOAD_UNIT}", load_unit(exe, append), detail="loads at boot")
    changed |= ctx.write(f"{UNIT_DIR}/{REPORT_UNIT}", report_unit(exe, config, mounts),
                         detail="reports after a crash")
    ctx.write(POSTINST_HOOK, postinst_hook(exe, config), mode=0o755, detail="re-arms after kernel updates")
    if not find_program(ctx.root, "systemctl"):
        ctx.note("warn", "no systemctl: enable kdumpkit-load.service and kdumpkit-report.service yourself")
        return
    if changed:
        ctx.run(["systemctl", "daemon-reload"])
    if not all(ctx.path(f"{WANTS_DIR}/{u}").exists() or ctx.path(f"{WANTS_DIR}/{u}").is_symlink() for u in UNITS):
        ctx.run(["systemctl", "enable", *UNITS], "start at every boot")
    else:
        ctx.changes.append(Change("command", "unchanged", "systemctl enable " + " ".join(UNITS), "already enabled"))


def initrd_path(release: str) -> str:
    """Where ``kdumpkit initramfs build`` puts the capture initramfs (the first place ``kdumpkit load`` looks)."""
    return f"var/lib/kdumpkit/initrd.img-{release}"


def build_initramfs(ctx: Context, *, exe: str, config: str, config_file: Path, release: str | None) -> None:
    """Build the capture initramfs when it is missing or older than the config it embeds (``config_file``)."""
    if release is None:
        ctx.note("warn", "kernel release unknown: build the capture initramfs with kdumpkit initramfs build")
        return
    initrd = ctx.path(initrd_path(release))
    if initrd.exists() and not (config_file.exists() and config_file.stat().st_mtime > initrd.stat().st_mtime):
        ctx.changes.append(Change("file", "unchanged", "/" + initrd_path(release), "capture initramfs"))
        return
    why = "capture initramfs missing" if not initrd.exists() else "the config changed since it was built"
    with_config = ["--config", config] if config_file.exists() else []  # else the built-in defaults
    ctx.run([exe, "initramfs", "build", "--kernel-release", release, *with_config], why)


def uninstall(ctx: Context) -> None:
    if find_program(ctx.root, "systemctl") and any(
            ctx.path(f"{WANTS_DIR}/{u}").is_symlink() or ctx.path(f"{WANTS_DIR}/{u}").exists() for u in UNITS):
        ctx.run(["systemctl", "disable", "--now", *UNITS], "stop (unloads the capture kernel)")
    removed = False
    for u in UNITS:
        removed |= ctx.remove(f"{UNIT_DIR}/{u}")
    ctx.remove(POSTINST_HOOK)
    images = ctx.path(initrd_path("x")).parent
    for img in sorted(images.glob("initrd.img-*")) if images.is_dir() else []:  # built by setup or the hook
        ctx.remove(str(img.relative_to(ctx.root)), only_if_ours=False)
    if removed and find_program(ctx.root, "systemctl"):
        ctx.run(["systemctl", "daemon-reload"])

