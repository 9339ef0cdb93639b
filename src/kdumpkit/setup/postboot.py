"""The boot after a crash: restore raw-device dumps, then a triage report next to each new dump.

Why at boot and not in the capture kernel: the capture kernel has little
memory and one job (get the dump out, then reboot); the report reads the
log, symbols and a stack, which is cheap in the full system.  Why a report
per dump: none of the capture tools analyse (they save a dmesg at most), so
the person on call starts from "what crashed", not from "install crash".

A dump whose report fails still gets ``report.txt`` saying why, so a corrupt
dump is not retried on every boot.  Network targets (ssh, nfs) are not
scanned: their dumps live on another machine (run ``kdumpkit report`` there).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdumpkit.capture.retention import crash_dirs
from kdumpkit.errors import KdumpkitError, NotADumpError
from kdumpkit.setup.config import Config

Log = Callable[[str], None]
#: ``make_report(vmcore_path) -> (text, json)``
ReportFn = Callable[[str], tuple[str, dict[str, Any]]]
#: ``restore(device, out_dir) -> restored folder`` (raises NotADumpError when the device holds no dump)
RestoreFn = Callable[[str, str], str]
VMCORE_NAMES = ("vmcore", "vmcore.flat", "vmcore.incomplete")
REPORT_TXT = "report.txt"
REPORT_JSON = "report.json"


@dataclass
class PostBoot:
    restored: list[str] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"restored": self.restored, "reported": self.reported, "failed": self.failed}


def make_report(vmcore: str) -> tuple[str, dict[str, Any]]:
    """The triage report of one dump as text and JSON (analyze.report)."""
    from kdumpkit.analyze.report import build_report, render
    from kdumpkit.dump import open_dump

    with open_dump(vmcore) as dump:
        report = build_report(dump)
    return render(report, "text"), report.to_json()


def _restore(device: str, out_dir: str) -> str:
    from kdumpkit.capture.rawrestore import restore_raw

    return restore_raw(device, out_dir).folder


def report_dirs(cfg: Config) -> list[str]:
    """The local directories where dumps of this configuration land (local targets, rootfs for raw/fallback)."""
    dirs = [t.path for t in cfg.targets if t.type == "local"]
    if any(t.type == "raw" for t in cfg.targets) or cfg.failure_action == "dump_to_rootfs":
        dirs.append(cfg.rootfs_path)
    return list(dict.fromkeys(dirs))


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(data)


def report_folder(folder: str, *, make: ReportFn = make_report) -> bool | None:
    """Write the report files in ``folder``: True done, None nothing to do, False the report failed."""
    if os.path.exists(os.path.join(folder, REPORT_TXT)):
        return None
    vmcore = next((os.path.join(folder, n) for n in VMCORE_NAMES if os.path.isfile(os.path.join(folder, n))), None)
    if vmcore is None:
        return None
    ok = True
    try:
        text, data = make(vmcore)
    except KdumpkitError as e:
        text, data, ok = f"no report for {vmcore}: {e}\n", {"error": str(e)}, False
    except Exception as e:  # noqa: BLE001 - one bad dump must not stop the reports of the others
        text, data, ok = (f"no report for {vmcore}: internal error {type(e).__name__}: {e}\n",
                          {"error": f"{type(e).__name__}: {e}"}, False)
    try:
        _write(os.path.join(folder, REPORT_JSON), json.dumps(data, indent=2, default=str) + "\n")
        _write(os.path.join(folder, REPORT_TXT), text)  # last: its presence means "done"
    except OSError as e:
        raise KdumpkitError(f"cannot write the report in {folder}: {e.strerror}") from None
    return ok


def post_boot(cfg: Config, *, root: str | Path = "/", log: Log | None = None, make: ReportFn = make_report,
              restore: RestoreFn = _restore) -> PostBoot:
    """Restore raw targets (if they hold a dump), then report every dump that has no report yet."""
    say = log or (lambda msg: None)
    rootp = Path(root)
    out = PostBoot()
    for t in cfg.targets:
        if t.type != "raw":
            continue
        device = str(rootp / t.device.lstrip("/"))
        try:
            folder = restore(device, str(rootp / cfg.rootfs_path.lstrip("/")))
        except NotADumpError:
            continue
        except KdumpkitError as e:
            say(f"restore from {t.device} failed: {e}")
            out.failed.append(t.device)
            continue
        say(f"restored the dump on {t.device} to {folder}")
        out.restored.append(folder)
    for d in report_dirs(cfg):
        for cd in crash_dirs(str(rootp / d.lstrip("/"))):
            done = report_folder(cd.path, make=make)
            if done is None:
                continue
            (out.reported if done else out.failed).append(cd.path)
            say(f"{'report' if done else 'report failed'}: {os.path.join(cd.path, REPORT_TXT)}")
    return out
