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


@functools.lru_cache(maxsize=1)
def kvm_works() -> bool:
    """Whether KVM really runs guest code here (a 4 s SeaBIOS boot probe).

    ``/dev/kvm`` existing is not enough: on some hosts QEMU aborts ("failed to
    set MSR 0x10a") or hangs in the BIOS.  The probe boots the BIOS with KVM and
    looks for its output on the debug console.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which(QEMU) is None:
        return False
    with tempfile.TemporaryDirectory(prefix="kdumpkit-kvm-") as tmp:
        log = Path(tmp) / "bios.log"
        cmd = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "64", "-nodefaults", "-display", "none",
               "-no-reboot", "-chardev", f"file,id=dbg,path={log}", "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
        try:
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            return False
        deadline = time.monotonic() + 4
        ok = False
        while time.monotonic() < deadline and p.poll() is None:
            if log.is_file() and b"Booting from" in log.read_bytes():
                ok = True
                break
            time.sleep(0.1)
        if p.poll() is None:
            p.kill()
        p.wait()
        return ok


def choose_accel(accel: str) -> str:
    """``kvm`` or ``tcg`` for ``auto|kvm|tcg``; asking for kvm where it fails is an error."""
    if accel == "auto":
        return "kvm" if kvm_works() else "tcg"
    if accel == "kvm" and not kvm_works():
        raise LabError("KVM does not work on this host (probe failed); use --accel tcg")
    if accel not in ("kvm", "tcg"):
        raise LabError(f"unknown accelerator {accel!r}")
    return accel


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
