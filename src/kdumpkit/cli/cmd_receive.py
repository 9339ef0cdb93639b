"""``kdumpkit receive DIR [--keep-*]`` — the ssh target's receiver (a forced command; see capture/receive.py)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any


def register(sub: Any) -> None:
    from kdumpkit.capture.receive import add_policy_options

    p = sub.add_parser("receive", help="receive a dump over ssh (authorized_keys forced command)",
                       description='In authorized_keys: command="kdumpkit receive /var/crash --keep-count 5",'
                                   'restrict ssh-… KEY.  The --keep-* options are this server\'s retention policy, '
                                   "applied per host after each crash's manifest arrives; clients cannot set them.")
    p.add_argument("directory", help="the only directory crash folders are created in")
    add_policy_options(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.capture.receive import client_request, exit_code_for, free_bytes, policy_from, receive
    from kdumpkit.errors import KdumpkitError, UsageError

    original = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        keep, words = policy_from(args.rest, args)  # --keep-* after DIR arrive in ``rest``
        if original is None:  # run by hand or by a key without a forced command: the request is on the line
            req = client_request(shlex.join(words))
        elif words:
            raise UsageError(f"unexpected arguments in the forced command: {' '.join(words)[:80]!r}")
        else:
            req = client_request(original)
        result = receive(args.directory, req, sys.stdin.buffer, keep)
    except KdumpkitError as e:
        print(f"kdumpkit receive: {e}", file=sys.stderr)
        return exit_code_for(e)
    except OSError as e:  # facing the network: never a traceback, whatever the filesystem said
        print(f"kdumpkit receive: {e.strerror or e}", file=sys.stderr)
        return 1
    if req.probe:
        print(f"kdumpkit-receive ok free={free_bytes(args.directory)} crash-id={result}")
    return 0
