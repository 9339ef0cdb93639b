"""The receiving end of the ssh target: ``kdumpkit receive DIR`` behind a forced command.

Install the capture key on the dump server as::

    command="/usr/local/bin/kdumpkit receive /var/crash",restrict ssh-ed25519 AAAA… kdump@client

``restrict`` drops port, agent and X11 forwarding and the pty; the forced
command means the key can do one thing: add files to a crash folder under
DIR.  What the client asked for arrives in ``SSH_ORIGINAL_COMMAND``; only the
options below are taken from it (never a directory), and names are checked
against a fixed list, so no path from the network reaches the filesystem.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shlex
import shutil
from typing import BinaryIO

from kdumpkit.capture.dmesg import fsync_dir
from kdumpkit.capture.retention import apply_retention
from kdumpkit.capture.targets import EXIT_RECEIVE_NOSPACE, RECEIVE_NAMES
from kdumpkit.dump.flattened import END_MARKER
from kdumpkit.errors import NoSpaceError, OutputError, UsageError
from kdumpkit.setup.config import Keep

CRASH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
CHUNK = 1 << 20


def client_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdumpkit receive", add_help=False, exit_on_error=False)
    p.add_argument("--probe", action="store_true")
    p.add_argument("--crash-id", default="")
    p.add_argument("--name", default="")
    p.add_argument("--keep-count", type=int, default=0)
    p.add_argument("--keep-age-days", type=float, default=0.0)
    p.add_argument("--keep-size", type=int, default=0)
    return p


def client_request(original_command: str) -> argparse.Namespace:
    """The options in ``SSH_ORIGINAL_COMMAND``; anything before the first ``--option`` is ignored."""
    try:
        tokens = shlex.split(original_command)
    except ValueError:
        raise UsageError("unparsable request") from None
    first = next((i for i, t in enumerate(tokens) if t.startswith("--")), len(tokens))
    try:
        ns, rest = client_parser().parse_known_args(tokens[first:])
    except (argparse.ArgumentError, SystemExit):
        raise UsageError("bad request options") from None
    if rest:
        raise UsageError(f"unexpected request arguments: {' '.join(rest)[:80]}")
    return ns


def check_request(req: argparse.Namespace) -> None:
    if not CRASH_ID.match(req.crash_id) or ".." in req.crash_id:
        raise UsageError(f"bad crash id {req.crash_id[:80]!r}")
    if not req.probe and req.name not in RECEIVE_NAMES:
        raise UsageError(f"refusing file name {req.name[:80]!r} (allowed: {', '.join(RECEIVE_NAMES)})")


def receive(base: str, req: argparse.Namespace, stdin: BinaryIO) -> str:
    """Store stdin as ``base/<crash-id>/<name>``; returns the final path (probe: the base)."""
    check_request(req)
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {base}: {e.strerror}") from None
    if req.probe:
        if not os.access(base, os.W_OK):
            raise OutputError(f"{base} is not writable")
        return base
    folder = os.path.join(base, req.crash_id)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(folder) from None
        raise OutputError(f"cannot create {folder}: {e.strerror}") from None
    final = os.path.join(folder, req.name)
    if os.path.lexists(final):
        raise OutputError(f"{final} exists (will not overwrite)")
    part = final + ".incomplete"
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise OutputError(f"cannot create {part}: {e.strerror}") from None
    tail = b""
    try:
        while True:
            block = stdin.read(CHUNK)
            if not block:
                break
            tail = (tail + block)[-len(END_MARKER):]
            view = memoryview(block)
            while len(view):
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            os.unlink(part)
            raise NoSpaceError(part) from None
        raise OutputError(f"writing {part}: {e.strerror}") from None
    os.close(fd)
    if req.name == "vmcore.flat" and tail != END_MARKER:
        raise OutputError(f"stream ended without its end marker; kept as {part}")
    os.replace(part, final)
    fsync_dir(folder)
    if req.name == "manifest.json":
        keep = Keep(count=req.keep_count, age_days=req.keep_age_days, size=req.keep_size)
        apply_retention(base, keep, folder)
    return final


def exit_code_for(e: Exception) -> int:
    return EXIT_RECEIVE_NOSPACE if isinstance(e, NoSpaceError) else 1


def free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0
