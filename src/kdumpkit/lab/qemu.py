"""Running QEMU: accelerator choice, the command line, console capture, QMP.

QEMU's serial port is its stdout; a thread stamps each line with the host
clock and appends it to ``console.log`` as it arrives, so a hung guest still
leaves a complete log behind.  A QMP socket is always opened (the ``nmi``
scenario needs it, and a clean ``quit`` is nicer than a kill).

``network=True`` adds one virtio-net NIC on QEMU's user-mode network (slirp:
no root, no bridge): the guest gets 10.0.2.15 by DHCP, and 10.0.2.2 is the
host's loopback, where e2e tests run their NFS and ssh servers.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import LabError
from kdumpkit.lab.console import Line, clean

QEMU = "qemu-system-x86_64"
#: The host as the guest sees it on the user-mode network (its 127.0.0.1).
USER_NET_HOST = "10.0.2.2"


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise LabError(f"{QEMU} not found (install qemu-system-x86: make apt)")
    return path


#: How long a KVM guest may take to print its first kernel console line.  A
#: working KVM prints "Linux version" well under a second after QEMU starts;
#: TCG on these machines needs ~1-2 s; 8 s leaves room for a loaded host.
KVM_PROBE_TIMEOUT_S = 8.0
#: Memory of the probe guest: enough for any lab kernel to decompress itself.
KVM_PROBE_MEM_MB = 256
_KERNEL_LINE = re.compile(rb"Linux version |^\[\s*\d+\.\d{6}\] ", re.M)


@dataclass(frozen=True)
class KvmProbe:
    """The outcome of the KVM probe and why (for the one-line error of ``--accel kvm``)."""

    ok: bool
    reason: str


def probe_kvm(qemu: str, vmlinuz: Path, timeout: float | None = None) -> KvmProbe:
    """Boot ``vmlinuz`` (no initrd) with KVM and wait for its first console line.

    A BIOS probe is not enough: on some hosts SeaBIOS boots under KVM but a
    Linux kernel never prints a line (docs/lab.md), and a run that picked KVM
    then waits its whole timeout with an empty console.  Only a kernel line
    on the serial port within ``timeout`` (default :data:`KVM_PROBE_TIMEOUT_S`)
    counts; the kernel is killed then.
    """
    timeout = KVM_PROBE_TIMEOUT_S if timeout is None else timeout
    with tempfile.TemporaryDirectory(prefix="kdumpkit-kvm-") as tmp:
        log = Path(tmp) / "serial.log"
        cmd = [qemu, "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", str(KVM_PROBE_MEM_MB), "-nodefaults",
               "-display", "none", "-no-reboot", "-monitor", "none", "-serial", f"file:{log}",
               "-kernel", str(vmlinuz), "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"]
        err = Path(tmp) / "stderr"
        try:
            with open(err, "wb") as ef:
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=ef)
        except OSError as e:
            return KvmProbe(False, f"cannot start {qemu}: {e.strerror}")
        deadline = time.monotonic() + timeout
        try:
            while True:
                if log.is_file() and _KERNEL_LINE.search(log.read_bytes()):
                    return KvmProbe(True, f"{vmlinuz.name} printed its first console line under KVM")
                if p.poll() is not None:
                    last = (err.read_text(errors="replace").strip().splitlines() or [f"exit {p.returncode}"])[-1]
                    return KvmProbe(False, f"QEMU with KVM exited before the kernel printed a line: {last}")
                if time.monotonic() > deadline:
                    return KvmProbe(False, f"no kernel console line within {timeout:.0f} s under KVM")
                time.sleep(0.1)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()


def _probe_kernel() -> Path | None:
    """A real kernel image to probe with: a cached lab kernel, else bookworm's (downloaded)."""
    from kdumpkit.lab import kernels
    from kdumpkit.lab.aptsrc import SUITES

    for suite in SUITES:
        k = kernels.cached(suite)
        if k is not None:
            return k.vmlinuz
    try:
        return kernels.fetch("bookworm").vmlinuz
    except LabError:
        return None


def _kvm_device_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _probe_cache_file() -> Path:
    from kdumpkit.lab.cache import lab_dir

    return lab_dir() / "kvm-probe.json"


@functools.lru_cache(maxsize=1)
def kvm_probe() -> KvmProbe:
    """Whether KVM really runs a Linux kernel here: cached per process, and per host boot on disk.

    ``/dev/kvm`` existing is not enough (QEMU may abort with "failed to set MSR
    0x10a", or boot the BIOS and then never run the kernel), so a real kernel
    is booted (:func:`probe_kvm`).  The answer is stored in the lab cache
    keyed by the host's boot id and the QEMU binary, so every pytest process
    does not pay the probe again; a reboot or another QEMU probes afresh.
    """
    if not _kvm_device_usable():
        return KvmProbe(False, "/dev/kvm is missing or not accessible")
    qemu = shutil.which(QEMU)
    if qemu is None:
        return KvmProbe(False, f"{QEMU} not found")
    key = {"boot_id": _boot_id(), "qemu": qemu}
    cache = _probe_cache_file()
    if key["boot_id"] is not None:
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return KvmProbe(bool(saved["ok"]), str(saved["reason"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    vmlinuz = _probe_kernel()
    if vmlinuz is None:
        return KvmProbe(False, "no kernel to probe KVM with (no cached lab kernel, download failed)")
    result = probe_kvm(qemu, vmlinuz)
    if key["boot_id"] is not None:
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "ok": result.ok, "reason": result.reason}) + "\n")
        os.replace(tmp, cache)
    return result


def kvm_works() -> bool:
    """Whether KVM boots a Linux kernel to its first console line here (see :func:`kvm_probe`)."""
    return kvm_probe().ok


def choose_accel(accel: str) -> str:
    """``kvm`` or ``tcg`` for ``auto|kvm|tcg``; asking for kvm where it fails is an error."""
    if accel not in ("auto", "kvm", "tcg"):
        raise LabError(f"unknown accelerator {accel!r}")
    if accel == "tcg":
        return "tcg"
    probe = kvm_probe()
    if accel == "auto":
        return "kvm" if probe.ok else "tcg"
    if not probe.ok:
        raise LabError(f"KVM does not work on this host ({probe.reason}); use --accel tcg")
    return "kvm"


@dataclass
class VMConfig:
    """What a lab VM is made of.

    ``vmlinuz=None`` boots from the first disk through its own boot loader
    (the installed-system lab); ``extra`` are further QEMU arguments (drives
    on other controllers, NICs); ``reboot=True`` lets a guest reboot instead
    of ending QEMU.
    """

    vmlinuz: Path | None
    initrd: Path | None
    cmdline: str
    mem_mb: int
    disks: list[Path]
    accel: str = "tcg"
    smp: int = 2
    network: bool = False  # one virtio-net NIC on user-mode networking
    extra: list[str] = field(default_factory=list)
    reboot: bool = False

    def command(self, qmp_socket: Path) -> list[str]:
        cpu = "host" if self.accel == "kvm" else "max"
        cmd = [qemu_binary(), "-accel", self.accel, "-cpu", cpu, "-smp", str(self.smp), "-m", str(self.mem_mb),
               "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none",
               "-qmp", f"unix:{qmp_socket},server=on,wait=off"]
        if not self.reboot:
            cmd.append("-no-reboot")
        if self.vmlinuz is not None:
            cmd += ["-kernel", str(self.vmlinuz), "-append", self.cmdline]
            if self.initrd is not None:
                cmd += ["-initrd", str(self.initrd)]
        for d in self.disks:
            cmd += ["-drive", f"file={d},if=virtio,format=raw,cache=unsafe"]
        if self.network:
            cmd += ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
        return cmd + self.extra


@dataclass
class VM:
    """A running QEMU with its console being recorded."""

    config: VMConfig
    console_log: Path
    lines: list[Line] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    _qmp_path: Path | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    on_line: Callable[[Line], None] | None = None

    def start(self, workdir: Path) -> None:
        self._qmp_path = workdir / "qmp.sock"
        cmd = self.config.command(self._qmp_path)
        (workdir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        self._t0 = time.monotonic()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with open(self.console_log, "wb") as log:
            for raw in self._proc.stdout:
                log.write(raw)
                log.flush()
                line = Line(round(time.monotonic() - self._t0, 3), clean(raw))
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
                if self.on_line is not None:
                    self.on_line(line)
        with self._cond:
            self._cond.notify_all()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_lines(self, seen: int, timeout: float) -> list[Line]:
        """Lines after the first ``seen``; waits up to ``timeout`` for new ones."""
        with self._cond:
            if len(self.lines) <= seen and self.running():
                self._cond.wait(timeout)
            return self.lines[seen:]

    def finish(self, timeout: float = 10) -> int:
        """Wait for QEMU to exit (killing it after ``timeout``); the exit code."""
        assert self._proc is not None
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            rc = self._proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        return rc

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(5)

    def qmp(self, command: str, **arguments: object) -> dict[str, object]:
        """Run one QMP command (after the capabilities handshake) and return its reply."""
        if self._qmp_path is None:
            raise LabError("VM not started")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            try:
                s.connect(str(self._qmp_path))
            except OSError as e:
                raise LabError(f"QMP connect failed: {e}") from None
            f = s.makefile("rwb")

            def call(cmd: str, args: dict[str, object] | None = None) -> dict[str, object]:
                msg: dict[str, object] = {"execute": cmd}
                if args:
                    msg["arguments"] = args
                f.write(json.dumps(msg).encode() + b"\n")
                f.flush()
                while True:
                    reply: dict[str, object] = json.loads(f.readline() or b"{}")
                    if not reply:
                        raise LabError(f"QMP closed during {cmd}")
                    if "return" in reply or "error" in reply:
                        return reply

            json.loads(f.readline())  # greeting
            call("qmp_capabilities")
            reply = call(command, dict(arguments) or None)
            if "error" in reply:
                raise LabError(f"QMP {command} failed: {reply['error']}")
            return reply
