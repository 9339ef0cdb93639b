"""``kdumpkit receive DIR`` — the ssh target's receiver (use as a forced command; see capture/receive.py)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("receive", help="receive a dump over ssh (authorized_keys forced command)",
                       description='In authorized_keys: command="kdumpkit receive /var/crash",restrict ssh-… KEY')
    p.add_argument("directory", help="the only directory crash folders are created in")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.capture.receive import client_request, exit_code_for, free_bytes, receive
    from kdumpkit.errors import KdumpkitError

    original = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        req = client_request(original if original is not None else shlex.join(args.rest))
        path = receive(args.directory, req, sys.stdin.buffer)
    except KdumpkitError as e:
        print(f"kdumpkit receive: {e}", file=sys.stderr)
        return exit_code_for(e)
    if req.probe:
        print(f"kdumpkit-receive ok free={free_bytes(path)}")
    return 0
