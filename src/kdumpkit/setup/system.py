"""What ``kdumpkit setup`` does to a system: files under a root, commands through a runner.

Why this indirection: setup edits boot loader, sysctl and systemd state, and
none of that may happen by accident in a test or a ``--dry-run``.  Every file
is written under ``root`` (``/`` on a real system, a ``tmp_path`` in tests),
only when its content differs (so a second run changes nothing), and every
command goes through an injectable :data:`Runner`.  The record of what was
done (:class:`Change`) is what the CLI prints and what ``--json`` returns.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import KdumpkitError, OutputError

#: ``runner(argv) -> exit status``; must not raise for a non-zero exit.
Runner = Callable[[Sequence[str]], int]
SBIN_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
MARK = "written by kdumpkit setup; kdumpkit setup --undo removes it"


def subprocess_runner(argv: Sequence[str]) -> int:
    """Run a command on the real system, output passed through; a missing program is an error."""
    try:
        return subprocess.run(list(argv), check=False, timeout=600).returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KdumpkitError(f"cannot run {argv[0]}: {e}") from None


def find_program(root: Path, name: str) -> str | None:
    """The absolute path of ``name`` inside ``root`` (as seen from that system), or None."""
    for d in SBIN_DIRS:
        p = root / d / name
        if p.is_file() and os.access(p, os.X_OK):
            return "/" + d + "/" + name
    return None


@dataclass(frozen=True)
class Change:
    """One thing setup did or would do: a file (create/update/remove/unchanged) or a command (run/skip)."""

    kind: str  # "file" | "command" | "note"
    action: str  # create | update | remove | unchanged | absent | run | skipped | failed | info | warn
    target: str  # a path (as on the real system) or a command line
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.action in ("create", "update", "remove", "run")

    def line(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.action:<9} {self.target}{extra}"


@dataclass
class Context:
    """Where setup works and how: the root, the runner, and whether anything may change."""

    root: Path
    runner: Runner = subprocess_runner
    dry_run: bool = False
    live: bool = True  # run commands (update-grub, sysctl, systemctl); False for an offline --root
    changes: list[Change] = field(default_factory=list)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def note(self, action: str, text: str) -> None:
        self.changes.append(Change("note", action, text))

    def write(self, rel: str, content: str, *, mode: int = 0o644, detail: str = "") -> bool:
        """Write ``content`` to ``root/rel`` if it differs; True when it changed (or would)."""
        p = self.path(rel)
        try:
            old = p.read_text(encoding="utf-8") if p.exists() else None
        except OSError as e:
            raise OutputError(f"cannot read {p}: {e.strerror}") from None
        same_mode = old is not None and (p.stat().st_mode & 0o7777) == mode
        if old == content and same_mode:
            self.changes.append(Change("file", "unchanged", "/" + rel.lstrip("/"), detail))
            return False
        action = "create" if old is None else "update"
        if not self.dry_run:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                tmp = p.with_name(f".{p.name}.kdumpkit-tmp")
                tmp.write_text(content, encoding="utf-8")
                os.chmod(tmp, mode)
                os.replace(tmp, p)
            except OSError as e:
                raise OutputError(f"cannot write {p}: {e.strerror}") from None
        self.changes.append(Change("file", action, "/" + rel.lstrip("/"), detail))
        return True

    def remove(self, rel: str, *, only_if_ours: bool = True) -> bool:
        """Remove ``root/rel`` if it exists (and carries our mark); True when it changed (or would)."""
        p = self.path(rel)
        if not p.exists():
            self.changes.append(Change("file", "absent", "/" + rel.lstrip("/")))
            return False
        try:
            if only_if_ours and MARK not in p.read_text(encoding="utf-8", errors="replace"):
                self.changes.append(Change("note", "warn", f"/{rel.lstrip('/')} was not written by kdumpkit: kept"))
                return False
            if not self.dry_run:
                p.unlink()
        except OSError as e:
            raise OutputError(f"cannot remove {p}: {e.strerror}") from None
        self.changes.append(Change("file", "remove", "/" + rel.lstrip("/")))
        return True

    def run(self, argv: Sequence[str], why: str = "") -> bool:
        """Run ``argv`` (unless dry-run or offline); a failure is recorded, not raised: later steps still matter."""
        line = " ".join(argv)
        if self.dry_run or not self.live:
            reason = "dry run" if self.dry_run else f"not the running system ({self.root})"
            self.changes.append(Change("command", "skipped", line, f"{why}; {reason}" if why else reason))
            return False
        rc = self.runner(argv)
        self.changes.append(Change("command", "run" if rc == 0 else "failed", line,
                                   why if rc == 0 else f"exit status {rc}"))
        return rc == 0
