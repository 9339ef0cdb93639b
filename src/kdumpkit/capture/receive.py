"""The receiving end of the ssh target: ``kdumpkit receive DIR`` behind a forced command.

Install the capture key on the dump server as::

    command="/usr/local/bin/kdumpkit receive /var/crash --keep-count 5",restrict ssh-ed25519 AAAA… kdump@client

``restrict`` drops port, agent and X11 forwarding and the pty; the forced
command means the key can do one thing: add files to a crash folder under
DIR.  The retention policy (``--keep-*``) is the server's, written in the
forced command; the request in ``SSH_ORIGINAL_COMMAND`` may name a crash id,
one of a fixed list of file names and the file's declared size and SHA-256,
nothing else — so no path and no deletion is ever chosen by the network.

Whoever holds the key, and any other local user who can write to DIR, may
be hostile.  So every file is created with ``O_EXCL|O_NOFOLLOW`` relative to
a directory descriptor the receiver opened and checked itself (owner, type,
mode), nothing already there is ever written through or reused, and a file
gets its final name only when the transfer is complete: the declared size
and SHA-256 matched (small files), or the flattened stream ended with its
end marker and nothing after it (``vmcore.flat``).  Anything else stays
``<name>.incomplete`` and the client gets a one-line error.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from kdumpkit.capture.naming import CRASH_ID, host_of, is_crash_id
from kdumpkit.capture.retention import apply_retention
from kdumpkit.capture.targets import EXIT_RECEIVE_NOSPACE, RECEIVE_NAMES
from kdumpkit.dump.flattened import END_MARKER, FLAT_HEADER_SIZE, FLAT_RECORD, FLAT_SIGNATURE
from kdumpkit.errors import KdumpkitError, NoSpaceError, OutputError, UsageError
from kdumpkit.setup.config import Keep, parse_size

__all__ = ["CRASH_ID", "client_request", "exit_code_for", "free_bytes", "policy_from", "receive"]

CHUNK = 1 << 20
STREAM_NAME = "vmcore.flat"
SMALL_MAX = 256 << 20  # dmesg, kallsyms, manifest: far below; bounds what one request may declare
PART = ".incomplete"
MAX_FOLDERS = 100  # crash_id, crash_id.1, … crash_id.99
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_SIZE = re.compile(r"[0-9]{1,15}\Z")


# -- the server's policy and the client's request ------------------------------------------
def add_policy_options(p: argparse.ArgumentParser) -> None:
    """The server's retention options: given to ``kdumpkit receive DIR`` in authorized_keys only."""
    p.add_argument("--keep-count", type=int, default=0, metavar="N", help="keep N crash folders per host")
    p.add_argument("--keep-age-days", type=float, default=0.0, metavar="DAYS", help="remove a host's folders older than DAYS")
    p.add_argument("--keep-size", default="0", metavar="SIZE", help="a host's folders may total SIZE (e.g. 20G)")


def policy_from(words: list[str], parsed: argparse.Namespace | None = None) -> tuple[Keep, list[str]]:
    """The retention policy in the forced command's words (over ``parsed``'s), and the other words."""
    p = argparse.ArgumentParser(prog="kdumpkit receive", add_help=False, allow_abbrev=False, exit_on_error=False)
    add_policy_options(p)
    try:
        ns, rest = p.parse_known_args(words, namespace=argparse.Namespace(**vars(parsed or argparse.Namespace())))
    except (argparse.ArgumentError, SystemExit):
        raise UsageError("bad retention options (--keep-count N, --keep-age-days D, --keep-size SIZE)") from None
    keep = Keep(count=ns.keep_count, age_days=ns.keep_age_days, size=parse_size(ns.keep_size, "--keep-size"))
    if keep.count < 0 or keep.age_days < 0:
        raise UsageError("retention limits must not be negative")
    return keep, rest


def client_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdumpkit receive", add_help=False, allow_abbrev=False, exit_on_error=False)
    p.add_argument("--probe", action="store_true")
    p.add_argument("--crash-id", default="")
    p.add_argument("--name", default="")
    p.add_argument("--size", default=None)
    p.add_argument("--sha256", default=None)
    return p


def client_request(original_command: str) -> argparse.Namespace:
    """The options in ``SSH_ORIGINAL_COMMAND``; anything before the first ``--option`` is ignored."""
    try:
        tokens = shlex.split(original_command)
    except ValueError:
        raise UsageError("unparsable request") from None
    first = next((i for i, t in enumerate(tokens) if t.startswith("--")), len(tokens))
    if any(t.startswith("--keep") for t in tokens[first:]):
        raise UsageError("retention is the server's policy (kdumpkit receive DIR --keep-count N in "
                         "authorized_keys); a client may not send --keep-*")
    try:
        ns, rest = client_parser().parse_known_args(tokens[first:])
    except (argparse.ArgumentError, SystemExit):
        raise UsageError("bad request options") from None
    if rest:
        raise UsageError(f"unexpected request arguments: {' '.join(rest)[:80]!r}")
    return ns


def check_request(req: argparse.Namespace) -> None:
    if not is_crash_id(req.crash_id):
        raise UsageError(f"bad crash id {req.crash_id[:80]!r}")
    if req.probe:
        return
    if req.name not in RECEIVE_NAMES:
        raise UsageError(f"refusing file name {req.name[:80]!r} (allowed: {', '.join(RECEIVE_NAMES)})")
    if req.size is not None and not _SIZE.match(req.size):
        raise UsageError(f"bad --size {req.size[:20]!r}")
    if req.sha256 is not None and not _SHA256.match(req.sha256):
        raise UsageError("bad --sha256 (64 lowercase hex digits)")
    if req.name != STREAM_NAME:
        if req.size is None or req.sha256 is None:
            raise UsageError(f"{req.name} needs --size and --sha256 (a client older than this receiver?)")
        if int(req.size) > SMALL_MAX:
            raise UsageError(f"{req.name}: {req.size} bytes is more than the {SMALL_MAX} allowed")


# -- what a complete transfer is ------------------------------------------------------------
class Declared:
    """The client said how long the file is and what it hashes to: nothing more, nothing less."""

    def __init__(self, size: int, sha256: str) -> None:
        self.size, self.sha256 = size, sha256
        self.got = 0
        self.sha = hashlib.sha256()

    def feed(self, block: memoryview) -> None:
        self.got += len(block)
        if self.got > self.size:
            raise OutputError(f"more than the declared {self.size} bytes")
        self.sha.update(block)

    def finish(self) -> None:
        if self.got < self.size:
            raise OutputError(f"transfer cut after {self.got} of {self.size} bytes")
        if self.sha.hexdigest() != self.sha256:
            raise OutputError("SHA-256 differs from the declared one")


class FlatStream:
    """Follows a flattened stream's record headers: complete means the end marker, then EOF.

    The vmcore's length is not known before it is written, but its format
    says where it ends: a cut stream lacks the marker, and a marker that is
    really a payload's last bytes is not at a record boundary.
    """

    def __init__(self) -> None:
        self.pending = bytearray()
        self.skip = 0
        self.header_seen = False
        self.ended = False

    def feed(self, block: memoryview) -> None:
        pos, n = 0, len(block)
        while pos < n:
            if self.skip:
                step = min(self.skip, n - pos)
                self.skip -= step
                pos += step
                continue
            if self.ended:
                raise OutputError("data after the stream's end marker")
            want = FLAT_RECORD.size if self.header_seen else FLAT_HEADER_SIZE
            step = min(want - len(self.pending), n - pos)
            self.pending += block[pos:pos + step]
            pos += step
            if len(self.pending) == want:
                self._take(bytes(self.pending))
                self.pending.clear()

    def _take(self, unit: bytes) -> None:
        if not self.header_seen:
            if not unit.startswith(FLAT_SIGNATURE):
                raise OutputError("not a makedumpfile flattened stream")
            self.header_seen = True
            return
        if unit == END_MARKER:
            self.ended = True
            return
        rec = FLAT_RECORD.unpack(unit)
        if rec.offset < 0 or rec.buf_size < 0:
            raise OutputError(f"corrupt record header (offset {rec.offset}, size {rec.buf_size})")
        self.skip = rec.buf_size

    def finish(self) -> None:
        if not self.ended:
            raise OutputError("stream ended without its end marker")


def _checks(req: argparse.Namespace) -> list[Declared | FlatStream]:
    out: list[Declared | FlatStream] = []
    if req.size is not None and req.sha256 is not None:
        out.append(Declared(int(req.size), req.sha256))
    if req.name == STREAM_NAME:
        out.append(FlatStream())
    return out


# -- directories the receiver trusts --------------------------------------------------------
def _oserror(what: str, e: OSError) -> KdumpkitError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(what)
    return OutputError(f"{what}: {e.strerror}")


def open_base(base: str) -> int:
    """DIR, created if missing; refused unless owned by us or root and, if others may write, sticky.

    In a directory others can write without the sticky bit they could rename
    our folders away and put their own in place between two sessions.
    """
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        st = os.lstat(base)
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
            raise OutputError(f"{base} is a symlink owned by uid {st.st_uid}: refusing")
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _oserror(f"cannot open {base}", e) from None
    st = os.fstat(fd)
    problem = ""
    if st.st_uid not in (0, os.geteuid()):
        problem = f"owned by uid {st.st_uid}"
    elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        problem = f"writable by others without the sticky bit (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        os.close(fd)
        raise OutputError(f"{base} is {problem}: refusing to store dumps there")
    return fd


def _open_own_dir(parent_fd: int, name: str, where: str) -> int:
    """``name`` in ``parent_fd``, only if it is a real directory of ours that nobody else can write."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OutputError(f"{where} is not a directory of the receiver's (a symlink or file): refusing") from None
        raise _oserror(f"cannot open {where}", e) from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise OutputError(f"{where} was not created by the receiver (uid {st.st_uid}, mode "
                          f"{stat.S_IMODE(st.st_mode):o}): refusing")
    return fd


def _new_dir(base_fd: int, base: str, name: str) -> bool:
    """mkdir 0700 in ``base_fd``: True if made now, False if something is there already."""
    try:
        os.mkdir(name, 0o700, dir_fd=base_fd)
    except FileExistsError:
        return False
    except OSError as e:
        raise _oserror(f"cannot create {os.path.join(base, name)}", e) from None
    _sync_dir(base_fd)
    return True


def open_folder(base_fd: int, base: str, crash_id: str) -> int:
    """The crash folder, created now or by an earlier session of the same crash (then checked)."""
    _new_dir(base_fd, base, crash_id)
    return _open_own_dir(base_fd, crash_id, os.path.join(base, crash_id))


def reserve_folder(base_fd: int, base: str, crash_id: str) -> str:
    """A fresh folder for a new crash: ``crash_id``, else ``crash_id.1``…; never one already there.

    A planted or left-over folder of that name is left alone rather than
    refused, so whoever can guess the next crash id cannot stop it arriving.
    """
    for n in range(MAX_FOLDERS):
        name = crash_id if n == 0 else f"{crash_id}.{n}"
        if is_crash_id(name) and _new_dir(base_fd, base, name):
            return name
    raise OutputError(f"no free crash folder name for {crash_id} in {base}")


def _sync_dir(fd: int) -> None:
    """Make a new entry survive a reset; a filesystem that cannot sync directories is not an error."""
    try:
        os.fsync(fd)
    except OSError:
        pass


@contextmanager
def _locked(folder_fd: int) -> Iterator[None]:
    """Serialises "is the final name free?" with taking it, across concurrent sessions."""
    fcntl.flock(folder_fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(folder_fd, fcntl.LOCK_UN)


def _absent(folder_fd: int, name: str, where: str) -> None:
    try:
        os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    raise OutputError(f"{where} exists (will not overwrite)")


def _create_part(folder_fd: int, folder: str, name: str) -> int:
    with _locked(folder_fd):
        _absent(folder_fd, name, os.path.join(folder, name))
        part = os.path.join(folder, name + PART)
        try:
            return os.open(name + PART, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                           dir_fd=folder_fd)
        except FileExistsError:
            raise OutputError(f"{part} exists: another transfer of {name} is running or was cut "
                              "(will not overwrite)") from None
        except OSError as e:
            raise _oserror(f"cannot create {part}", e) from None


def _commit(folder_fd: int, folder: str, name: str) -> str:
    final = os.path.join(folder, name)
    with _locked(folder_fd):
        _absent(folder_fd, name, final)
        try:
            os.rename(name + PART, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except OSError as e:
            raise _oserror(f"cannot rename {final}{PART}", e) from None
    _sync_dir(folder_fd)
    return final


def _copy(stdin: BinaryIO, fd: int, checks: list[Declared | FlatStream]) -> None:
    while True:
        block = stdin.read(CHUNK)
        if not block:
            break
        view = memoryview(block)
        for c in checks:
            c.feed(view)
        while len(view):
            view = view[os.write(fd, view):]
    for c in checks:
        c.finish()
    os.fsync(fd)


def _store(folder_fd: int, folder: str, req: argparse.Namespace, stdin: BinaryIO) -> str:
    fd = _create_part(folder_fd, folder, req.name)
    part = os.path.join(folder, req.name + PART)
    try:
        _copy(stdin, fd, _checks(req))
    except OSError as e:
        err = _oserror(f"writing {part}", e)
        if isinstance(err, NoSpaceError):  # the client retries at the next dump level: make room for it
            with suppress(OSError):
                os.unlink(req.name + PART, dir_fd=folder_fd)
        raise err from None
    except OutputError as e:
        raise OutputError(f"{req.name}: {e}; kept as {part}") from None
    finally:
        os.close(fd)
    return _commit(folder_fd, folder, req.name)


def receive(base: str, req: argparse.Namespace, stdin: BinaryIO, keep: Keep | None = None) -> str:
    """Store stdin as ``base/<crash-id>/<name>``; returns the final path.

    A probe reserves the crash folder instead and returns its name (maybe
    ``<crash-id>.1``).  After ``manifest.json``, the last file of a crash,
    ``keep`` — the server's policy — prunes that host's older folders.
    """
    check_request(req)
    base_fd = open_base(base)
    try:
        if req.probe:
            if not os.access(base, os.W_OK):
                raise OutputError(f"{base} is not writable")
            return reserve_folder(base_fd, base, req.crash_id)
        folder = os.path.join(base, req.crash_id)
        folder_fd = open_folder(base_fd, base, req.crash_id)
        try:
            final = _store(folder_fd, folder, req, stdin)
        finally:
            os.close(folder_fd)
    finally:
        os.close(base_fd)
    host = host_of(req.crash_id)
    if req.name == "manifest.json" and keep is not None and keep.active and host is not None:
        apply_retention(base, keep, folder, host=host, owner=os.geteuid())
    return final


def exit_code_for(e: Exception) -> int:
    return EXIT_RECEIVE_NOSPACE if isinstance(e, NoSpaceError) else 1


def free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0
