"""``kdumpkit setup``: crashkernel= on the boot loader, sysctls, boot units — and ``--undo``.

Why one orchestrator over small modules: the steps are independent
(bootloader, sysctl, systemd), but the admin needs one answer — what
changed, what was already in place, and whether a reboot is needed.  Each
step records :class:`~kdumpkit.setup.system.Change` entries in a shared
:class:`~kdumpkit.setup.system.Context`; nothing is written when the content
is already there, so a second run reports only "unchanged".
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdumpkit.errors import ConfigError
from kdumpkit.setup import bootloader, sysctl, systemd
from kdumpkit.setup.config import Config, load_config
from kdumpkit.setup.postboot import report_dirs
from kdumpkit.setup.system import Change, Context, Runner, subprocess_runner

DEFAULT_CONFIG = "/etc/kdumpkit/kdumpkit.toml"  # what ``kdumpkit capture`` reads by default
STEPS = ("bootloader", "sysctl", "units")


@dataclass
class SetupResult:
    changes: list[Change]
    reboot_needed: bool = False
    crashkernel: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.changes)

    def as_dict(self) -> dict[str, Any]:
        return {"crashkernel": self.crashkernel, "reboot_needed": self.reboot_needed, "changed": self.changed,
                "changes": [{"kind": c.kind, "action": c.action, "target": c.target, "detail": c.detail}
                            for c in self.changes]}


def default_exe() -> str:
    """The absolute path of the ``kdumpkit`` program the units should run."""
    found = shutil.which("kdumpkit")
    if found:
        return os.path.abspath(found)
    return os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "kdumpkit")


def running_release(root: Path) -> str | None:
    """The running kernel's release (``uname -r``) as seen under ``root``."""
    try:
        return (root / "proc/sys/kernel/osrelease").read_text().strip() or None
    except OSError:
        return os.uname().release if str(root) == "/" else None


def read_config(root: Path, path: str | None) -> tuple[Config, str]:
    """The config setup follows (``--config``, else the default path under root, else the defaults)."""
    if path and path != DEFAULT_CONFIG:  # the units pass the default path explicitly: it may not exist yet
        return load_config(path), os.path.abspath(path)
    p = root / DEFAULT_CONFIG.lstrip("/")
    return (load_config(str(p)) if p.exists() else Config()), DEFAULT_CONFIG


def setup(*, root: str | Path = "/", config: str | None = None, crashkernel: str | None = None,
          dry_run: bool = False, runner: Runner = subprocess_runner, live: bool | None = None,
          exe: str | None = None, arch: str = "x86_64", steps: tuple[str, ...] = STEPS) -> SetupResult:
    """Install everything (or the chosen ``steps``); ``live`` (default: root is /) runs commands."""
    rootp = Path(root)
    bad = set(steps) - set(STEPS)
    if bad:
        raise ConfigError(f"unknown setup step(s) {', '.join(sorted(bad))} (known: {', '.join(STEPS)})")
    ctx = Context(rootp, runner=runner, dry_run=dry_run, live=(str(root) == "/") if live is None else live)
    cfg, cfg_path = read_config(rootp, config)
    if not config and not (rootp / DEFAULT_CONFIG.lstrip("/")).exists():
        ctx.note("info", f"no {DEFAULT_CONFIG}: the defaults apply (local /var/crash, level 31, lzo); "
                         f"kdumpkit config import -o {DEFAULT_CONFIG} translates an existing kdump setup")
    setup_table = cfg.extra.get("setup", {}) if isinstance(cfg.extra.get("setup", {}), dict) else {}
    sysctl.settings(cfg.extra)  # validate [extra.setup] before anything is written
    spec = crashkernel or setup_table.get("crashkernel")
    if spec is not None and not isinstance(spec, str):
        raise ConfigError("extra.setup.crashkernel: expected a string such as \"2G-64G:256M,64G-:512M\"")
    result = SetupResult(ctx.changes)
    if "bootloader" in steps:
        choice = bootloader.choose(rootp, spec, arch=arch)  # validated before any file is touched
        result.crashkernel = choice.text
        result.reboot_needed = bootloader.install(ctx, choice)
    if "sysctl" in steps:
        sysctl.install(ctx, cfg.extra)
    if "units" in steps:
        append = cfg.extra.get("cmdline_append", "")
        if not isinstance(append, str):
            raise ConfigError("extra.cmdline_append: expected a string")
        program = exe or default_exe()
        systemd.install(ctx, exe=program, config=cfg_path, mounts=report_dirs(cfg), append=append)
        systemd.build_initramfs(ctx, exe=program, config=cfg_path, release=running_release(rootp),
                                config_file=Path(config) if config else rootp / DEFAULT_CONFIG.lstrip("/"))
        if not result.reboot_needed:
            ctx.note("info", f"start now with: systemctl start {systemd.LOAD_UNIT} (or reboot)")
    return result


def undo(*, root: str | Path = "/", dry_run: bool = False, runner: Runner = subprocess_runner,
         live: bool | None = None) -> SetupResult:
    """Remove everything :func:`setup` installed (files carrying kdumpkit's mark only)."""
    rootp = Path(root)
    ctx = Context(rootp, runner=runner, dry_run=dry_run, live=(str(root) == "/") if live is None else live)
    systemd.uninstall(ctx)
    sysctl.uninstall(ctx)
    bootloader.uninstall(ctx)
    return SetupResult(ctx.changes, reboot_needed=any("reboot" in c.target for c in ctx.changes if c.kind == "note"))
