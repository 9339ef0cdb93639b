"""``kdumpkit capture [--config FILE] [--vmcore /proc/vmcore]`` — the capture kernel's job."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from kdumpkit.cli.progress import progress_reporter

DEFAULT_CONFIG = "/etc/kdumpkit/kdumpkit.toml"
EXIT_INCOMPLETE = 3


def register(sub: Any) -> None:
    p = sub.add_parser("capture", help="save /proc/vmcore to the configured targets, then reboot",
                       description="Run inside the capture kernel: dmesg first, then the vmcore and a manifest, "
                                   "to the first target that takes it; then the final action.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML configuration (default {DEFAULT_CONFIG})")
    p.add_argument("--vmcore", default="/proc/vmcore", help="the dump to save (default /proc/vmcore)")
    p.add_argument("--no-action", action="store_true",
                   help="do not reboot/halt/poweroff/shell afterwards (also: KDUMPKIT_NO_ACTION=1)")
    p.add_argument("--json", action="store_true", help="JSON progress events and a JSON report on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.capture.session import NO_ACTION_ENV, capture, printing_action, system_action
    from kdumpkit.dump import open_dump
    from kdumpkit.kexec.status import in_capture_kernel
    from kdumpkit.setup.config import Config, load_config

    cfg = load_config(args.config) if os.path.exists(args.config) or args.config != DEFAULT_CONFIG else Config()

    def log(msg: str) -> None:
        if args.json:
            print(json.dumps({"event": "log", "message": msg}), file=sys.stderr, flush=True)
        else:
            print(f"kdumpkit: {msg}", file=sys.stderr, flush=True)

    no_action = args.no_action or os.environ.get(NO_ACTION_ENV, "") not in ("", "0")
    if not no_action and not in_capture_kernel():
        log("not a capture kernel (no /proc/vmcore or no elfcorehdr= on the command line): "
            "the final action is not taken here")
        no_action = True
    action = printing_action(log) if no_action else system_action
    with open_dump(args.vmcore) as src, progress_reporter("capture", json_events=args.json) as progress:
        report = capture(cfg, src, action=action, log=log, progress=progress)
    if args.json:
        print(json.dumps({"crash_id": report.crash_id, "action": report.action,
                          "targets": [{"target": o.target, "status": o.status, "location": o.location,
                                       "error": o.error} for o in report.outcomes]}, indent=2))
    saved = report.saved
    if saved is None:
        return 1
    return EXIT_INCOMPLETE if saved.status == "incomplete" else 0
