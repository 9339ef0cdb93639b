"""Where a capture goes: a local directory, a raw device, ssh, NFS.

Every destination gets the same writes in the same order — ``dmesg.txt``
(fsynced first), ``kallsyms.gz`` when the loader packed a ``/proc/kallsyms``
snapshot into the capture initramfs (:data:`KALLSYMS_NAME`), the vmcore (one :class:`~kdumpkit.capture.engine.Output` per
attempt, so ENOSPC can fall back), ``manifest.json`` last — then retention.
Seekable local files get the configured format; raw devices and ssh get the
kdump-compressed dump as a flattened stream (they cannot seek).

Raw device layout (restored by ``kdumpkit restore-raw`` on the next boot)::

    0      4096-byte kdumpkit header: magic, version, flags, timestamp,
           hostname, crash id, offsets/lengths of the regions below
    4096   dmesg.txt bytes
    K      kallsyms.gz bytes         (version 2; K = next 4096 boundary)
    S      flattened vmcore stream   (S = next 4096 boundary)
    M      manifest.json bytes       (right after the stream)

The header is written first with ``complete = 0`` and rewritten with the
lengths when everything is down; a capture killed midway is still restorable
up to the last whole record of the stream.  Version 1 headers (no kallsyms
fields) read with ``kallsyms_len = 0``: the header block is zero-padded.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import re
import shlex
import socket
import stat
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from kdumpkit.capture.dmesg import fsync_dir, write_synced
from kdumpkit.capture.engine import FileOutput, Output
from kdumpkit.capture.retention import apply_retention
from kdumpkit.dump.base import Buffer
from kdumpkit.dump.sink import Sink
from kdumpkit.errors import KdumpkitError, NoSpaceError, OutputError, UsageError
from kdumpkit.kexec.status import in_capture_kernel
from kdumpkit.setup.blockdev import volatile_fs
from kdumpkit.setup.config import Keep, Target
from kdumpkit.structs import Struct

Log = Callable[[str], None]
RAW_MAGIC = b"KDUMPKIT-RAW\0\0\0\0"
RAW_VERSION = 2
RAW_BLOCK = 4096
RAW_COMPLETE = 1
RAW_HEADER = Struct("kdumpkit_raw_header", [
    ("magic", "16s"), ("version", "I"), ("flags", "I"), ("timestamp", "Q"),
    ("hostname", "64s"), ("crash_id", "96s"),
    ("dmesg_off", "Q"), ("dmesg_len", "Q"), ("stream_off", "Q"), ("stream_len", "Q"),
    ("manifest_off", "Q"), ("manifest_len", "Q"),
    ("kallsyms_off", "Q"), ("kallsyms_len", "Q"),  # version 2
])
EXIT_RECEIVE_NOSPACE = 75  # the receiver's "disk full" (ssh itself uses 255)
KALLSYMS_NAME = "kallsyms.gz"
RECEIVE_NAMES = ("dmesg.txt", KALLSYMS_NAME, "vmcore.flat", "manifest.json")


def crash_id_for(hostname: str, when: float | None = None) -> str:
    """``<hostname>-<YYYY-MM-DD-HH:MM:SS>`` (kdump-utils' folder naming, local time)."""
    return f"{hostname}-{time.strftime('%Y-%m-%d-%H:%M:%S', time.localtime(when))}"


class Destination(ABC):
    """One target during one capture."""

    vmcore_name = "vmcore"
    streams = False  # True: the vmcore is a flattened stream

    def __init__(self, target: Target, log: Log | None = None) -> None:
        self.target = target
        self.log = log or (lambda msg: None)
        self.location = target.describe()
        self.digests: dict[str, str] = {}  # streamed SHA-256 by file name

    @abstractmethod
    def open(self, crash_id: str) -> None:
        """Reach the target (mount, connect, create the crash folder); fail fast."""

    @abstractmethod
    def write_small(self, name: str, data: bytes) -> None:
        """dmesg.txt, kallsyms.gz or manifest.json, durable before returning."""

    @abstractmethod
    def open_vmcore(self) -> Output:
        """A fresh output for one write attempt."""

    def file_info(self) -> dict[str, dict[str, Any]]:
        """Size and SHA-256 of what was written (for the manifest)."""
        return {}

    def retention(self, keep: Keep) -> list[str]:
        return []

    def close(self) -> None:
        """Unmount, disconnect; never raises."""


# -- local directory -----------------------------------------------------------------------
def refuse_ram_target(path: str) -> None:
    """In a capture kernel, a local target must be on a mounted disk: the initramfs root is RAM.

    /init binds each local target's filesystem at its configured path; when
    that mount failed the path is a plain directory of the RAM root, and a
    dump written there vanishes at the reboot while the manifest says saved.
    """
    fstype = volatile_fs(path)
    if fstype is not None and in_capture_kernel():
        raise OutputError(f"{path} is on the capture kernel's {fstype} (its disk was not mounted): "
                          "a dump there would be lost at the reboot")


class LocalDestination(Destination):
    def __init__(self, target: Target, log: Log | None = None, *, fmt: str = "kdump", base: str | None = None) -> None:
        super().__init__(target, log)
        self.base = base or target.path
        self.fmt = fmt
        self.dir = ""

    def open(self, crash_id: str) -> None:
        refuse_ram_target(self.base)
        # Every missing component 0700, not just the last: os.makedirs gives the
        # intermediate ones 0777 & ~umask, and the capture kernel's umask may be 000.
        missing: list[str] = []
        d = os.path.abspath(self.base)
        while not os.path.isdir(d) and os.path.dirname(d) != d:
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)
                os.chmod(d, 0o700)  # exactly 0700 whatever the umask
            except FileExistsError:
                if not os.path.isdir(d):
                    raise OutputError(f"cannot create {d}: not a directory") from None
            except OSError as e:
                raise OutputError(f"cannot create {d}: {e.strerror}") from None
        for n in range(100):  # never reuse a folder: a previous dump is never overwritten
            d = os.path.join(self.base, crash_id if n == 0 else f"{crash_id}.{n}")
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpaceError(d) from None
                raise OutputError(f"cannot create {d}: {e.strerror}") from None
            self.dir = d
            self.location = d
            fsync_dir(self.base)
            return
        raise OutputError(f"too many crash folders named {crash_id} in {self.base}")

    def write_small(self, name: str, data: bytes) -> None:
        write_synced(os.path.join(self.dir, name), data)

    def open_vmcore(self) -> Output:
        return FileOutput(os.path.join(self.dir, self.vmcore_name))

    def file_info(self) -> dict[str, dict[str, Any]]:
        from kdumpkit.capture.manifest import file_entry

        out = {}
        for name in ("dmesg.txt", KALLSYMS_NAME, self.vmcore_name):
            p = os.path.join(self.dir, name)
            if os.path.exists(p):
                out[name] = file_entry(p)
        return out

    def retention(self, keep: Keep) -> list[str]:
        return apply_retention(self.base, keep, self.dir, log=self.log)


# -- NFS ----------------------------------------------------------------------------------
#: Added to the mount options unless the configuration sets them: a dead server
#: fails the target (soft, ~40 s) instead of hanging the capture kernel, and no
#: lock daemon is needed (kdump-tools mounts ``soft,tcp,nolock`` too).
NFS_DEFAULTS = (("soft", ("soft", "hard")), ("timeo=100", ("timeo",)), ("retrans=3", ("retrans",)),
                ("nolock", ("lock", "nolock")))
MOUNT_TIMEOUT = 120


def split_server(server: str) -> tuple[str, str]:
    """``host:/export`` (host may be ``[v6]``) → (host without brackets, ``/export``)."""
    host, export = server.split(":/", 1)
    return host.strip("[]"), "/" + export


def resolve_ipv4(host: str) -> str:
    """The IPv4 address of ``host`` (an address is returned as is)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise OutputError(f"nfs: cannot resolve {host}: {e.strerror or e}") from None
    return str(infos[0][4][0])


def nfs_mount_argv(target: Target, mnt: str, resolve: Callable[[str], str] = resolve_ipv4) -> list[str]:
    """The ``mount`` command for ``target``, complete enough for busybox.

    busybox ``mount`` hands the options to the kernel as they are: unlike
    ``mount.nfs`` it neither resolves the server (the kernel wants ``addr=``)
    nor negotiates the version, so both are added here (``vers=`` from the
    target's ``version`` unless the options carry one); ``nfs4`` for v4.
    """
    host, export = split_server(target.server)
    opts = [o.strip() for o in target.mount_options.split(",") if o.strip()]
    keys = {o.split("=", 1)[0] for o in opts}
    if not keys & {"vers", "nfsvers"}:
        opts.insert(0, f"vers={target.nfs_vers}")
    for option, names in NFS_DEFAULTS:
        if not keys & set(names):
            opts.append(option)
    if "addr" not in keys:
        opts.append(f"addr={resolve(host)}")
    fstype = "nfs4" if target.nfs_vers.startswith("4") else "nfs"
    return ["mount", "-t", fstype, "-o", ",".join(opts), f"{host}:{export}", mnt]


class NfsDestination(LocalDestination):
    """``mount -t nfs4 server:/export`` on a private mount point, then a local directory there."""

    def __init__(self, target: Target, log: Log | None = None, *, fmt: str = "kdump",
                 runner: Callable[[list[str]], None] | None = None,
                 resolve: Callable[[str], str] = resolve_ipv4) -> None:
        super().__init__(target, log, fmt=fmt, base="/nonexistent")
        self.mnt = ""
        self.mounted = False
        self.run = runner or _run_checked
        self.resolve = resolve

    def open(self, crash_id: str) -> None:
        self.mnt = tempfile.mkdtemp(prefix="kdumpkit-nfs-")
        self.run(nfs_mount_argv(self.target, self.mnt, self.resolve))
        self.mounted = True
        self.base = os.path.join(self.mnt, self.target.path.lstrip("/"))
        super().open(crash_id)
        self.location = f"{self.target.server}:{os.path.relpath(self.dir, self.mnt)}"

    def close(self) -> None:
        if self.mnt:
            try:
                if self.mounted:
                    self.run(["umount", self.mnt])
                    self.mounted = False
                os.rmdir(self.mnt)
            except (KdumpkitError, OSError) as e:
                self.log(f"nfs: cannot unmount {self.mnt}: {e}")
            self.mnt = ""


def _run_checked(cmd: list[str], timeout: float = MOUNT_TIMEOUT) -> None:
    """Run ``cmd``; a failure or a timeout is an OutputError, and no wait is unbounded.

    ``subprocess.run`` waits for a killed child without limit, and a process
    stuck in an NFS mount may take long to die: after the kill it gets 5 s,
    then it is left behind (the capture moves on to the next target).
    """
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    except OSError as e:
        raise OutputError(f"{cmd[0]}: {e.strerror}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        raise OutputError(f"{' '.join(cmd)}: no answer within {timeout:.0f} s") from None
    if proc.returncode:
        raise OutputError(f"{' '.join(cmd)}: {(err or out).strip() or f'exit {proc.returncode}'}")


# -- sequential streams (raw device, ssh) -------------------------------------------------
class _Stream:
    """A write-only binary stream on an fd with an optional capacity, hashing what passes.

    ENOSPC (or running past ``limit``) becomes :class:`NoSpaceError`, which the
    engine answers with the next dump level.
    """

    def __init__(self, fd: int, *, limit: int | None = None, what: str = "stream") -> None:
        self.fd = fd
        self.limit = limit
        self.what = what
        self.written = 0
        self.sha = hashlib.sha256()

    def write(self, data: Buffer) -> int:
        view = memoryview(data).cast("B")
        if self.limit is not None and self.written + len(view) > self.limit:
            raise NoSpaceError(f"{self.what}: {self.limit} bytes available")
        self.sha.update(view)
        while len(view):
            try:
                n = os.write(self.fd, view)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpaceError(self.what) from None
                if e.errno == errno.EPIPE:
                    raise BrokenPipeError(e.errno, e.strerror) from None
                raise OutputError(f"writing {self.what}: {e.strerror}") from None
            view = view[n:]
            self.written += n
        return len(data)

    def flush(self) -> None:
        pass


class _StreamOutput(Output):
    def __init__(self, stream: _Stream, on_commit: Callable[[], None], on_discard: Callable[[], None]) -> None:
        from kdumpkit.dump.flattened import FlattenedSink

        self.stream = stream
        self.sink = FlattenedSink(stream)  # type: ignore[arg-type]
        self._commit = on_commit
        self._discard = on_discard

    def commit(self) -> None:
        self.sink.close()
        self._commit()

    def discard(self) -> None:
        try:
            self.sink.abort()
        except (OutputError, OSError):
            pass
        self._discard()

    def keep_partial(self) -> None:
        try:
            self.sink.abort()
        except (OutputError, OSError):
            pass
        self._discard()


# -- raw block device ---------------------------------------------------------------------
class RawDestination(Destination):
    vmcore_name = "vmcore.flat"
    streams = True

    def __init__(self, target: Target, log: Log | None = None) -> None:
        super().__init__(target, log)
        self.fd = -1
        self.capacity = 0
        self.header: dict[str, Any] = {}
        self.stream_off = RAW_BLOCK

    def open(self, crash_id: str) -> None:
        dev = self.target.device
        try:
            self.fd = os.open(dev, os.O_RDWR)
        except OSError as e:
            raise OutputError(f"cannot open raw target {dev}: {e.strerror}") from None
        st = os.fstat(self.fd)
        self.capacity = os.lseek(self.fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
        if self.capacity < 4 * RAW_BLOCK:
            raise OutputError(f"raw target {dev} is too small ({self.capacity} bytes; a plain file must be "
                              f"preallocated to the size it may use)")
        host = crash_id.rsplit("-", 6)[0] if crash_id.count("-") >= 6 else crash_id
        self.header = dict(magic=RAW_MAGIC, version=RAW_VERSION, flags=0, timestamp=int(time.time()),
                           hostname=host.encode()[:64], crash_id=crash_id.encode()[:96], dmesg_off=0, dmesg_len=0,
                           stream_off=RAW_BLOCK, stream_len=0, manifest_off=0, manifest_len=0,
                           kallsyms_off=0, kallsyms_len=0)
        self._write_header()
        self.location = f"{dev} ({crash_id})"

    def _pwrite(self, off: int, data: bytes) -> None:
        if off + len(data) > self.capacity:
            raise NoSpaceError(f"{self.target.device}: {self.capacity} bytes")
        try:
            view = memoryview(data)
            while len(view):
                n = os.pwrite(self.fd, view, off)
                view, off = view[n:], off + n
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise NoSpaceError(self.target.device) from None
            raise OutputError(f"writing {self.target.device}: {e.strerror}") from None

    def _write_header(self) -> None:
        blob = RAW_HEADER.pack(self.header)
        self._pwrite(0, blob + bytes(RAW_BLOCK - len(blob)))
        self._sync()

    def _sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise OutputError(f"fsync {self.target.device}: {e.strerror}") from None

    def write_small(self, name: str, data: bytes) -> None:
        if name == "dmesg.txt":
            self._pwrite(RAW_BLOCK, data)
            self.header.update(dmesg_off=RAW_BLOCK, dmesg_len=len(data))
            self.stream_off = _align(RAW_BLOCK + len(data), RAW_BLOCK)
            self.header.update(stream_off=self.stream_off)
        elif name == KALLSYMS_NAME:
            off = self.stream_off
            self._pwrite(off, data)
            self.stream_off = _align(off + len(data), RAW_BLOCK)
            self.header.update(kallsyms_off=off, kallsyms_len=len(data), stream_off=self.stream_off)
        elif name == "manifest.json":
            off = self.header["stream_off"] + self.header["stream_len"]
            self._pwrite(off, data)
            self.header.update(manifest_off=off, manifest_len=len(data), flags=RAW_COMPLETE)
        else:
            raise UsageError(f"raw target: unexpected file {name}")
        self.digests[name] = hashlib.sha256(data).hexdigest()
        self._write_header()

    def open_vmcore(self) -> Output:
        os.lseek(self.fd, self.stream_off, os.SEEK_SET)
        stream = _Stream(self.fd, limit=self.capacity - self.stream_off - RAW_BLOCK, what=self.target.device)

        def done() -> None:
            self._sync()
            self.header.update(stream_len=stream.written)
            self.digests[self.vmcore_name] = stream.sha.hexdigest()
            self._write_header()

        return _StreamOutput(stream, done, lambda: None)

    def file_info(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if self.header.get("dmesg_len"):
            out["dmesg.txt"] = {"size": self.header["dmesg_len"], "sha256": self.digests.get("dmesg.txt")}
        if self.header.get("kallsyms_len"):
            out[KALLSYMS_NAME] = {"size": self.header["kallsyms_len"], "sha256": self.digests.get(KALLSYMS_NAME)}
        if self.header.get("stream_len"):
            out[self.vmcore_name] = {"size": self.header["stream_len"], "sha256": self.digests.get(self.vmcore_name)}
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


# -- ssh ----------------------------------------------------------------------------------
class SshDestination(Destination):
    """Streams to ``kdumpkit receive DIR`` on the far side, one ssh session per file.

    The key should be limited to the receiver in ``authorized_keys``::

        command="/usr/local/bin/kdumpkit receive /var/crash --keep-count 5",restrict ssh-ed25519 AAAA… kdump@host

    The forced command takes only ``--crash-id``, ``--name`` and the file's
    ``--size``/``--sha256`` from the client (``SSH_ORIGINAL_COMMAND``), so a
    stolen key can only add crash folders under that one directory.
    Retention there is the server's policy, written in that line: this side
    sends none (a receiver refuses ``--keep-*`` from a client).
    """

    vmcore_name = "vmcore.flat"
    streams = True

    def __init__(self, target: Target, log: Log | None = None) -> None:
        super().__init__(target, log)
        self.crash_id = ""
        self.sizes: dict[str, int] = {}

    def ssh_argv(self) -> list[str]:
        t = self.target
        dest = f"{t.user}@{t.host}" if t.user else t.host
        return ["ssh", "-i", t.key, "-p", str(t.port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={t.connect_timeout}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "IdentitiesOnly=yes",
                *t.ssh_options, dest]

    def remote(self, *args: str) -> str:
        return " ".join([self.target.remote_command, shlex.quote(self.target.path), *map(shlex.quote, args)])

    def open(self, crash_id: str) -> None:
        """Probe the receiver; it reserves the crash folder and may name it ``<crash_id>.N`` (taken name)."""
        self.crash_id = crash_id
        argv = self.ssh_argv() + [self.remote("--probe", "--crash-id", crash_id)]
        try:
            p = subprocess.run(argv, capture_output=True, timeout=self.target.connect_timeout * 3 + 10,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise OutputError("ssh: the ssh client is not installed") from None
        except subprocess.TimeoutExpired:
            raise OutputError(f"{self.location}: no answer within {self.target.connect_timeout * 3 + 10} s") from None
        if p.returncode != 0:
            raise OutputError(f"{self.location}: cannot reach the receiver: {_tail(p.stderr) or f'exit {p.returncode}'}")
        self.crash_id = _reserved_id(p.stdout, crash_id)
        self.location = f"{self.target.describe()}/{self.crash_id}"

    def _send(self, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], _Stream]:
        argv = self.ssh_argv() + [self.remote("--crash-id", self.crash_id, "--name", name, *extra)]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            raise OutputError(f"ssh: {e.strerror}") from None
        assert proc.stdin is not None
        return proc, _Stream(proc.stdin.fileno(), what=f"{self.location}/{name}")

    def _finish(self, proc: subprocess.Popen[bytes], name: str) -> None:
        if proc.stdin is None:  # already finished (a diagnosis after a broken pipe)
            if proc.returncode is None:
                proc.wait()
            self._check_status(proc, name, b"")
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.stdin = None  # closed: communicate() only collects stderr and the exit status
        try:
            _, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise OutputError(f"{self.location}/{name}: the receiver did not finish") from None
        self._check_status(proc, name, err)

    def _check_status(self, proc: subprocess.Popen[bytes], name: str, err: bytes) -> None:
        if proc.returncode == EXIT_RECEIVE_NOSPACE:
            raise NoSpaceError(f"{self.location}/{name} (remote disk full)")
        if proc.returncode != 0:
            raise OutputError(f"{self.location}/{name}: {_tail(err) or f'receiver exit {proc.returncode}'}")

    def write_small(self, name: str, data: bytes) -> None:
        """Declares size and SHA-256 up front: the receiver keeps a file that arrives cut or different unnamed."""
        proc, stream = self._send(name, "--size", str(len(data)), "--sha256", hashlib.sha256(data).hexdigest())
        try:
            stream.write(data)
        except BrokenPipeError:
            pass  # the exit status says why
        self._finish(proc, name)
        self.digests[name] = stream.sha.hexdigest()
        self.sizes[name] = len(data)

    def write_manifest(self, data: bytes, keep: Keep) -> None:
        """The last file of a crash; the receiver then applies ITS retention policy, never ``keep``.

        A client that could send limits could make the server delete every
        other host's dumps (issue #19), so ``[keep]`` does not travel.
        """
        if keep.active:
            self.log(f"{self.location}: [keep] is not sent; retention over ssh is the server's "
                     "(kdumpkit receive DIR --keep-count N in its authorized_keys)")
        self.write_small("manifest.json", data)

    def open_vmcore(self) -> Output:
        proc, stream = self._send(self.vmcore_name)
        state = {"done": False}

        def commit() -> None:
            self._finish(proc, self.vmcore_name)
            self.digests[self.vmcore_name] = stream.sha.hexdigest()
            self.sizes[self.vmcore_name] = stream.written
            state["done"] = True

        def discard() -> None:
            if not state["done"]:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()

        out = _StreamOutput(stream, commit, discard)
        return _BrokenPipeAware(out, lambda: self._finish(proc, self.vmcore_name))

    def file_info(self) -> dict[str, dict[str, Any]]:
        return {n: {"size": self.sizes[n], "sha256": self.digests[n]}
                for n in ("dmesg.txt", KALLSYMS_NAME, self.vmcore_name) if n in self.sizes}


class _BrokenPipeAware(Output):
    """When the receiver dies mid-stream, ask it why (ENOSPC → next level) instead of 'broken pipe'."""

    def __init__(self, inner: _StreamOutput, diagnose: Callable[[], None]) -> None:
        self.inner = inner
        self.diagnose = diagnose
        self.sink = _DiagnosingSink(inner, diagnose)

    def commit(self) -> None:
        try:
            self.inner.commit()
        except BrokenPipeError:
            self.diagnose()
            raise OutputError("ssh: the receiver closed the stream") from None

    def discard(self) -> None:
        self.inner.discard()

    def keep_partial(self) -> None:
        self.inner.keep_partial()


class _DiagnosingSink(Sink):
    def __init__(self, inner: Output, diagnose: Callable[[], None]) -> None:
        self.inner = inner.sink
        self.diagnose = diagnose

    def pwrite(self, offset: int, data: Buffer) -> None:
        try:
            self.inner.pwrite(offset, data)
        except BrokenPipeError:
            self.diagnose()
            raise OutputError("ssh: the receiver closed the stream") from None

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


def _reserved_id(probe_out: bytes, asked: str) -> str:
    """The folder the receiver reserved (``crash-id=`` in its answer): ``asked`` or ``asked.N``."""
    m = re.search(rb"\bcrash-id=(\S+)", probe_out or b"")
    got = m.group(1).decode("ascii", "replace") if m else ""
    return got if re.fullmatch(rf"{re.escape(asked)}(?:\.\d+)?", got) else asked


def _tail(err: bytes | str | None) -> str:
    if not err:
        return ""
    text = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def destination_for(target: Target, *, fmt: str, log: Log | None = None) -> Destination:
    if target.type == "local":
        return LocalDestination(target, log, fmt=fmt)
    if target.type == "nfs":
        return NfsDestination(target, log, fmt=fmt)
    if target.type == "raw":
        return RawDestination(target, log)
    if target.type == "ssh":
        return SshDestination(target, log)
    raise UsageError(f"unknown target type {target.type!r}")
