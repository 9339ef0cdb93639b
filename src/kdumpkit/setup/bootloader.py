"""Put ``crashkernel=`` on the boot loader's kernel command line.

Why two methods: Fedora/RHEL systems manage boot entries with ``grubby``
(BLS snippets; editing ``/etc/default/grub`` there changes nothing), Debian
generates ``grub.cfg`` from ``/etc/default/grub`` plus the drop-ins in
``/etc/default/grub.d/*.cfg`` (sourced in name order, which is how
kdump-tools ships its own value).  A drop-in is ours alone, so undo is
removing a file, and the admin's ``/etc/default/grub`` is never edited.

The value defaults to kdumpctl's table for the architecture (the range form,
so one value fits after a RAM upgrade too), validated against this machine's
RAM before anything is written: a value the kernel would reject, or one that
reserves nothing here, is caught now and not after a reboot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.errors import ConfigError, KdumpkitError
from kdumpkit.kexec import crashkernel as ck
from kdumpkit.kexec.iomem import parse_iomem, read_iomem
from kdumpkit.kexec.status import human, meminfo
from kdumpkit.setup.system import MARK, Context, find_program

GRUB_DROPIN = "etc/default/grub.d/kdumpkit.cfg"
KDUMP_TOOLS_DROPIN = "etc/default/grub.d/kdump-tools.cfg"
STATE = "var/lib/kdumpkit/bootloader.json"
AUTO = "auto-plan"


@dataclass(frozen=True)
class Choice:
    """The crashkernel= value to write and what it reserves on this machine."""

    value: ck.Crashkernel
    ram: int | None
    reserves: int | None
    source: str  # "given" | "kdumpctl default table (x86_64)"
    warnings: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return self.value.format()


def system_ram(root: Path) -> int | None:
    """RAM as crashkernel= compares it (``/proc/iomem``), else MemTotal; None when neither is readable."""
    try:
        return parse_iomem(read_iomem(root)).system_ram_size()
    except KdumpkitError:
        return meminfo(root).get("MemTotal")


def choose(root: Path, spec: str | None = None, *, arch: str = "x86_64") -> Choice:
    """Validate ``spec`` (or take the default table); raises ConfigError for a value the kernel rejects."""
    ram = system_ram(root)
    warnings: list[str] = []
    if spec is None or spec == AUTO:
        value = ck.default_crashkernel(arch)
        source = f"kdumpctl default table ({arch})"
    else:
        value = ck.parse(spec)  # CrashkernelSyntaxError is a ConfigError: refused, exit 2
        source = "given"
        if value.offset is not None:
            warnings.append(f"crashkernel={value.format()}: a fixed @offset fails to reserve when that "
                            "memory is in use; prefer no offset")
    reserves: int | None = None
    if ram:
        reserves = value.size_for(ram)  # raises for a range size not below the RAM size
        if value.size is not None and not value.ranges and value.size >= ram:
            raise ConfigError(f"crashkernel={value.format()}: {ck.format_size(value.size)} is not below "
                              f"this machine's RAM ({human(ram)})")
        if value.ranges and reserves == 0:
            warnings.append(f"crashkernel={value.format()} reserves nothing with {human(ram)} RAM: "
                            "give --crashkernel SIZE (e.g. 192M)")
    else:
        warnings.append("cannot read this machine's RAM size: the value was not checked against it")
    return Choice(value, ram, reserves, source, tuple(warnings))


def current_value(root: Path) -> str | None:
    """The plain crashkernel= the running kernel was booted with, canonical, or None."""
    try:
        cmdline = (root / "proc/cmdline").read_text()
        opts = ck.from_cmdline(cmdline)
    except (OSError, KdumpkitError):
        return None
    plain = opts.get(None)
    return plain.format() if plain is not None else None


def method(root: Path) -> str:
    """``grubby``, ``grub-dropin`` (Debian-style /etc/default/grub.d) or ``manual``."""
    if find_program(root, "grubby"):
        return "grubby"
    if (root / "etc/default/grub").exists() or (root / "etc/default/grub.d").is_dir() \
            or find_program(root, "update-grub"):
        return "grub-dropin"
    return "manual"


def dropin_text(value: str) -> str:
    return (f"# {MARK}\n"
            "# crashkernel= reserves the memory the capture kernel runs in (kdumpkit status shows it).\n"
            "# The kernel uses the last crashkernel= on its command line, so this value wins over earlier ones.\n"
            f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel={value}"\n')


def _state_text(how: str, value: str) -> str:
    return json.dumps({"_comment": MARK, "method": how, "crashkernel": value}, indent=2, sort_keys=True) + "\n"


def _read_state(ctx: Context) -> dict[str, str]:
    try:
        data = json.loads(ctx.path(STATE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _regenerate_grub(ctx: Context) -> None:
    if find_program(ctx.root, "update-grub"):
        ctx.run(["update-grub"], "regenerate grub.cfg")
    elif find_program(ctx.root, "grub-mkconfig"):
        ctx.run(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"], "regenerate grub.cfg")
    else:
        ctx.note("warn", "no update-grub or grub-mkconfig: regenerate grub.cfg yourself")


def install(ctx: Context, choice: Choice) -> bool:
    """Write the value with the detected method; True when a reboot is needed for it to take effect."""
    for w in choice.warnings:
        ctx.note("warn", w)
    value = choice.text
    how = method(ctx.root)
    if how == "grubby":
        state_changed = ctx.write(STATE, _state_text(how, value), detail="what setup gave grubby")
        if state_changed:
            ctx.run(["grubby", "--update-kernel=ALL", f"--args=crashkernel={value}"], "every boot entry")
    elif how == "grub-dropin":
        if ctx.path(KDUMP_TOOLS_DROPIN).exists():
            ctx.note("info", f"/{KDUMP_TOOLS_DROPIN} also sets crashkernel=; kdumpkit's drop-in is read after it "
                             "and its value wins")
        changed = ctx.write(GRUB_DROPIN, dropin_text(value), detail=f"crashkernel={value}")
        ctx.write(STATE, _state_text(how, value), detail="what setup wrote")
        if changed:
            _regenerate_grub(ctx)
    else:
        ctx.note("warn", f"no grubby and no GRUB found: add crashkernel={value} to your boot loader's kernel "
                         "command line yourself")
    running = current_value(ctx.root)
    if running == value:
        ctx.note("info", f"the running kernel already booted with crashkernel={value}")
        return False
    reserved = f" (reserves {ck.format_size(choice.reserves)})" if choice.reserves else ""
    ctx.note("info", f"reboot needed: crashkernel={value}{reserved} takes effect at the next boot"
                     + (f"; running with crashkernel={running}" if running else ""))
    return True


def uninstall(ctx: Context) -> None:
    """Undo :func:`install`: remove the drop-in or the grubby argument setup added."""
    state = _read_state(ctx)
    if state.get("method") == "grubby":
        ctx.run(["grubby", "--update-kernel=ALL", "--remove-args=crashkernel"], "remove crashkernel= from entries")
    if ctx.remove(GRUB_DROPIN):
        _regenerate_grub(ctx)
    ctx.remove(STATE)
    if state:
        ctx.note("info", "reboot to release the crash kernel memory")
