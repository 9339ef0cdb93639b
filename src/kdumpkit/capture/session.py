"""``kdumpkit capture``: what the capture kernel runs, start to finish.

kdump-utils' order, kept because it is right: save the kernel log first and
sync it, then the ``/proc/kallsyms`` snapshot ``kdumpkit load`` packed into
the initramfs (when there is one), then the vmcore (``vmcore.incomplete`` renamed when complete), then
the manifest, then retention, then the final action.  Unlike kdump.conf's one
target, targets are a fallback chain: an unreachable ssh host or a full disk
moves on to the next target.  A target whose disk cannot hold the dump even
at the last dump level keeps its dmesg.txt and a manifest that says
"dmesg-only".  Actions go through an injectable function, so tests (and
``--no-action``) never reboot the machine.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kdumpkit.capture.dmesg import crash_hostname, dmesg_bytes
from kdumpkit.capture.engine import SaveOptions, SaveResult, describe_failure, save_dump
from kdumpkit.capture.manifest import build_manifest, manifest_bytes
from kdumpkit.capture.targets import KALLSYMS_NAME, Destination, SshDestination, crash_id_for, destination_for
from kdumpkit.dump.base import Dump
from kdumpkit.dump.writer import Progress
from kdumpkit.errors import KdumpkitError, OutputError
from kdumpkit.kexec.kallsyms_snapshot import SNAPSHOT_PATH
from kdumpkit.setup.config import Config, Target

Log = Callable[[str], None]
Action = Callable[[str], None]
NO_ACTION_ENV = "KDUMPKIT_NO_ACTION"
ACTION_COMMANDS = {"reboot": ["reboot", "-f"], "halt": ["halt", "-f"], "poweroff": ["poweroff", "-f"]}
SYSRQ = {"reboot": "b", "halt": "o", "poweroff": "o"}


@dataclass
class TargetOutcome:
    target: str
    status: str  # complete | incomplete | dmesg-only | failed
    location: str = ""
    error: str = ""
    result: SaveResult | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaptureReport:
    crash_id: str
    outcomes: list[TargetOutcome]
    action: str

    @property
    def saved(self) -> TargetOutcome | None:
        return next((o for o in self.outcomes if o.status in ("complete", "incomplete")), None)


def system_action(name: str) -> None:
    """Really reboot / halt / power off / start a shell (the capture kernel's last act)."""
    if name == "shell":
        os.execv("/bin/sh", ["/bin/sh"])
    try:
        subprocess.run(ACTION_COMMANDS[name], timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:  # the commands can be missing from a minimal initramfs: ask the kernel directly
        with open("/proc/sysrq-trigger", "w") as f:
            f.write(SYSRQ[name])
    except OSError as e:
        raise OutputError(f"cannot {name}: {e.strerror}") from None


def printing_action(log: Log) -> Action:
    return lambda name: log(f"final action '{name}' not executed (--no-action or ${NO_ACTION_ENV})")


def options_for(cfg: Config, dest: Destination) -> SaveOptions:
    workers = cfg.num_threads or max(1, os.cpu_count() or 1)
    fmt = "flat" if dest.streams else cfg.format
    return SaveOptions(fmt=fmt, codec=cfg.codec_or_none if fmt != "elf" else None, dump_levels=cfg.dump_levels,
                       workers=workers if fmt != "elf" else 1, selfcheck=cfg.selfcheck, unfiltered_fallback=True)


def capture(cfg: Config, source: Dump, *, action: Action, log: Log | None = None, progress: Progress | None = None,
            destination: Callable[[Target], Destination] | None = None, now: float | None = None,
            kallsyms_path: str | None = SNAPSHOT_PATH) -> CaptureReport:
    """Run the capture flow over ``cfg.targets``; always ends by calling ``action``.

    ``kallsyms_path``: the load-time symbol snapshot, copied next to the dump
    as ``kallsyms.gz`` when the file exists (None: never).
    """
    say = log or (lambda msg: None)
    t_start = time.monotonic()
    hostname = crash_hostname(source)
    crash_id = crash_id_for(hostname, now)
    problems: list[str] = []
    dmesg: bytes | None = None
    t0 = time.monotonic()
    if cfg.dmesg:
        try:
            dmesg = dmesg_bytes(source)
        except KdumpkitError as e:
            problems.append(f"kernel log: {e}")
            say(f"warning: no kernel log: {e}")
    t_dmesg_extract = time.monotonic() - t0
    kallsyms = _read_snapshot(kallsyms_path, say)
    make = destination or (lambda t: destination_for(t, fmt=cfg.format, log=say))
    outcomes: list[TargetOutcome] = []
    for target in cfg.targets:
        outcome = _one_target(cfg, source, make(target), target, crash_id, hostname, dmesg, list(problems),
                              t_dmesg_extract, say, progress, kallsyms)
        outcomes.append(outcome)
        if outcome.status in ("complete", "incomplete"):
            break
        if outcome.error:  # the manifest of the target that takes the dump says why earlier ones did not
            problems.append(f"{outcome.target}: {outcome.status}: {outcome.error}")
    report = CaptureReport(crash_id, outcomes, "")
    if report.saved is None and cfg.failure_action == "dump_to_rootfs":
        say(f"no target took the dump: dump_to_rootfs ({cfg.rootfs_path})")
        rootfs = Target("local", path=cfg.rootfs_path)
        outcome = _one_target(cfg, source, make(rootfs), rootfs, crash_id, hostname, dmesg, list(problems),
                              t_dmesg_extract, say, progress, kallsyms)
        outcomes.append(outcome)
    report.action = cfg.final_action if report.saved is not None or cfg.failure_action == "dump_to_rootfs" \
        else cfg.failure_action
    say(f"capture finished in {time.monotonic() - t_start:.1f} s: "
        + ("; ".join(f"{o.target}: {o.status}{' (' + o.error + ')' if o.error else ''}" for o in outcomes)))
    action(report.action)
    return report


def _read_snapshot(path: str | None, say: Log) -> bytes | None:
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        say(f"warning: cannot read the kallsyms snapshot {path}: {e.strerror}")
        return None


def _save_vmcore(cfg: Config, source: Dump, dest: Destination, outcome: TargetOutcome, problems: list[str],
                 timings: dict[str, float], say: Log, progress: Progress | None, have_dmesg: bool) -> SaveResult | None:
    """The vmcore step of one target; whatever goes wrong, the target keeps its dmesg and gets a manifest.

    Full disks and failed filters fall back inside :func:`save_dump` (next
    level, then an unfiltered copy); what is left — no level fits, nothing
    readable, a writer bug — makes the target "dmesg-only", and the manifest
    says why, so the capture never ends with an empty folder.
    """
    name = outcome.target
    t0 = time.monotonic()
    result: SaveResult | None = None
    fallbacks: list[str] = []
    try:
        result = save_dump(source, dest.open_vmcore, options_for(cfg, dest), progress=progress,
                           log=lambda m: say(f"{name}: {m}"), fallbacks=fallbacks)
        outcome.status = "incomplete" if result.incomplete else "complete"
    except Exception as e:  # a bug in a writer must not cost the manifest (nor the next target)
        why = describe_failure(e)
        fallbacks.append(why)
        outcome.status = "dmesg-only" if have_dmesg else "failed"
        outcome.error = why
        say(f"{name}: {why}; keeping the kernel log only")
    problems.extend(f"vmcore: {why}" for why in fallbacks)
    timings["vmcore"] = time.monotonic() - t0
    outcome.result = result
    return result


def _one_target(cfg: Config, source: Dump, dest: Destination, target: Target, crash_id: str, hostname: str,
                dmesg: bytes | None, problems: list[str], t_extract: float, say: Log,
                progress: Progress | None, kallsyms: bytes | None = None) -> TargetOutcome:
    name = target.describe()
    timings: dict[str, float] = {}
    outcome = TargetOutcome(name, "failed")
    try:
        t0 = time.monotonic()
        dest.open(crash_id)
        timings["open"] = time.monotonic() - t0
        outcome.location = dest.location
        say(f"{name}: saving to {dest.location}")
        if dmesg is not None:
            t0 = time.monotonic()
            dest.write_small("dmesg.txt", dmesg)
            timings["dmesg"] = t_extract + time.monotonic() - t0
        if kallsyms is not None:
            try:
                dest.write_small(KALLSYMS_NAME, kallsyms)
            except KdumpkitError as e:  # the symbols are a convenience: never let them cost the vmcore
                problems.append(f"{KALLSYMS_NAME}: {e}")
        result = _save_vmcore(cfg, source, dest, outcome, problems, timings, say, progress, dmesg is not None)
        t0 = time.monotonic()
        files = dest.file_info()
        timings["checksums"] = time.monotonic() - t0
        manifest = build_manifest(crash_id=crash_id, hostname=hostname, dump=source, target=name,
                                  status=outcome.status, result=result, files=files, timings=timings,
                                  problems=problems)
        blob = manifest_bytes(manifest)
        if isinstance(dest, SshDestination):
            dest.write_manifest(blob, cfg.keep)  # retention runs on the receiving side
        else:
            dest.write_small("manifest.json", blob)
            if outcome.status != "failed" and cfg.keep.active:
                removed = dest.retention(cfg.keep)
                if removed:
                    say(f"{name}: retention removed {len(removed)} old dump(s)")
        outcome.manifest = manifest
    except KdumpkitError as e:
        outcome.status = "failed" if outcome.status not in ("complete", "incomplete") else outcome.status
        outcome.error = outcome.error or str(e)
        say(f"{name}: {e}")
    finally:
        dest.close()
    return outcome
