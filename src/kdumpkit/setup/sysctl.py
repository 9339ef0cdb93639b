"""The sysctls that decide whether a crash becomes a dump, in ``/etc/sysctl.d/90-kdumpkit.conf``.

Why these: without ``panic_on_oops`` an oops kills one task and the machine
limps on with no dump; without ``unknown_nmi_panic`` the "dump" NMI button of
a hung server is ignored; without the sysrq dump bit (0x8) SysRq-c from the
console does nothing.  ``kdumpkit status`` warns about the same three.  The
lockup/hung-task/warn panics are opt-in: they turn recoverable trouble into
reboots, which is a site decision.

Settings come from ``[extra.setup]`` in the kdumpkit config::

    [extra.setup]
    sysrq = true              # true: add the dump bit to the current value; or an exact number
    panic_on_oops = true
    unknown_nmi_panic = true
    softlockup_panic = false
    hung_task_panic = false
    panic_on_warn = false

A setting that is false is simply not written (kdumpkit never forces a 0).
"""

from __future__ import annotations

from typing import Any

from kdumpkit.errors import ConfigError
from kdumpkit.kexec.status import SYSRQ_ENABLE_DUMP
from kdumpkit.setup.system import MARK, Context, find_program

SYSCTL_CONF = "etc/sysctl.d/90-kdumpkit.conf"
DEBIAN_SYSRQ_DEFAULT = 0x1B6  # CONFIG_MAGIC_SYSRQ_DEFAULT_ENABLE on Debian kernels
DEFAULTS: dict[str, bool | int] = {"sysrq": True, "panic_on_oops": True, "unknown_nmi_panic": True,
                                   "softlockup_panic": False, "hung_task_panic": False, "panic_on_warn": False}
WHY = {"sysrq": "SysRq-c from the console forces a dump",
       "panic_on_oops": "an oops panics (and dumps) instead of killing one task",
       "unknown_nmi_panic": "the NMI button dumps a hung machine",
       "softlockup_panic": "a soft lockup panics and dumps",
       "hung_task_panic": "a task hung in D state panics and dumps",
       "panic_on_warn": "a WARN() panics and dumps"}


def settings(extra: dict[str, Any]) -> dict[str, bool | int]:
    """``[extra.setup]`` merged over the defaults; unknown keys and wrong types are ConfigErrors."""
    table = extra.get("setup", {})
    if not isinstance(table, dict):
        raise ConfigError("extra.setup: expected a table")
    out = dict(DEFAULTS)
    for key, value in table.items():
        if key in ("crashkernel",):
            continue
        if key not in DEFAULTS:
            raise ConfigError(f"extra.setup.{key}: unknown (known: {', '.join(DEFAULTS)}, crashkernel)")
        if key == "sysrq":
            if isinstance(value, bool) or (isinstance(value, int) and value >= 0):
                out[key] = value
                continue
            raise ConfigError("extra.setup.sysrq: true, false or a bitmask number")
        if not isinstance(value, bool):
            raise ConfigError(f"extra.setup.{key}: expected true or false")
        out[key] = value
    return out


def sysrq_value(setting: bool | int, current: int | None) -> int | None:
    """The kernel.sysrq to write: the current value plus the dump bit (1 = all stays 1)."""
    if setting is False:
        return None
    if setting is not True:
        return int(setting)
    base = DEBIAN_SYSRQ_DEFAULT if current is None else current
    return 1 if base == 1 else base | SYSRQ_ENABLE_DUMP


def render(values: dict[str, bool | int], current_sysrq: int | None) -> str:
    lines = [f"# {MARK}", "# Make more kinds of crash end in a dump (kdumpkit status checks these)."]
    sysrq = sysrq_value(values["sysrq"], current_sysrq)
    if sysrq is not None:
        lines += [f"# {WHY['sysrq']}", f"kernel.sysrq = {sysrq}"]
    for key in ("panic_on_oops", "unknown_nmi_panic", "softlockup_panic", "hung_task_panic", "panic_on_warn"):
        if values[key]:
            lines += [f"# {WHY[key]}", f"kernel.{key} = 1"]
    return "\n".join(lines) + "\n"


def _current_sysrq(ctx: Context) -> int | None:
    try:
        return int(ctx.path("proc/sys/kernel/sysrq").read_text().strip())
    except (OSError, ValueError):
        return None


def install(ctx: Context, extra: dict[str, Any]) -> None:
    values = settings(extra)
    current = _current_sysrq(ctx)
    if isinstance(values["sysrq"], int) and not isinstance(values["sysrq"], bool) \
            and values["sysrq"] != 1 and not values["sysrq"] & SYSRQ_ENABLE_DUMP:
        ctx.note("warn", f"kernel.sysrq = {values['sysrq']} has no dump bit (8): SysRq-c only via /proc/sysrq-trigger")
    text = render(values, current)
    if ctx.write(SYSCTL_CONF, text, detail="applied now, no reboot needed"):
        _apply(ctx, text)


def _apply(ctx: Context, text: str) -> None:
    """``sysctl --system``; without procps (a minimal Debian has none), the values go to /proc/sys directly."""
    if find_program(ctx.root, "sysctl"):
        ctx.run(["sysctl", "--system"], "load /etc/sysctl.d")
        return
    if ctx.dry_run or not ctx.live:
        ctx.note("info", "no sysctl program: the values would be written to /proc/sys")
        return
    failed = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if line.startswith("#") or not sep:
            continue
        try:
            ctx.path("proc/sys/" + key.strip().replace(".", "/")).write_text(value.strip() + "\n")
        except OSError:
            failed.append(key.strip())
    if failed:
        ctx.note("warn", f"no sysctl program and /proc/sys refused {', '.join(failed)}: applied at the next boot")
    else:
        ctx.note("info", "no sysctl program: values written to /proc/sys (systemd-sysctl applies them at boot)")


def uninstall(ctx: Context) -> None:
    if ctx.remove(SYSCTL_CONF):
        ctx.note("info", "the running kernel keeps the kdumpkit sysctl values until reboot")
