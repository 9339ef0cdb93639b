"""kexec syscalls: argument marshalling with the syscall injected -- never the real call on the host."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_kexec_bzimage import fake_bzimage

from kdumpkit.cli.main import main
from kdumpkit.errors import ConfigError, UnsupportedError, UsageError
from kdumpkit.kexec import loader, syscalls
from kdumpkit.kexec.syscalls import (
    KEXEC_ARCH_X86_64,
    KEXEC_FILE_NO_INITRAMFS,
    KEXEC_FILE_ON_CRASH,
    KEXEC_FILE_UNLOAD,
    KEXEC_ON_CRASH,
    KexecError,
    KexecSegment,
    Segment,
)


@pytest.fixture(autouse=True)
def _no_real_syscall(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that forgets to inject the syscall fails instead of loading a crash kernel into this machine."""
    def refuse(*args: Any) -> int:
        raise AssertionError("the real kexec syscall was about to be called")
    monkeypatch.setattr(syscalls, "_real_syscall", refuse)


class Recorder:
    def __init__(self, ret: int = 0, inspect: Any = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.ret = ret
        self.inspect = inspect

    def __call__(self, *args: Any) -> int:
        self.calls.append(args)
        if self.inspect:
            self.inspect(*args)
        return self.ret


def _v(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


def test_kexec_file_load_marshalling() -> None:
    rec = Recorder()
    syscalls.kexec_file_load(5, 6, "irqpoll nr_cpus=1", KEXEC_FILE_ON_CRASH, syscall=rec, arch="x86_64")
    nr, kfd, ifd, length, buf, flags = rec.calls[0]
    assert (_v(nr), _v(kfd), _v(ifd), _v(length), _v(flags)) == (320, 5, 6, 18, KEXEC_FILE_ON_CRASH)
    assert buf.raw == b"irqpoll nr_cpus=1\0"  # cmdline_len counts the NUL


def test_kexec_file_load_without_initrd_and_unload() -> None:
    rec = Recorder()
    syscalls.kexec_file_load(5, None, "", KEXEC_FILE_ON_CRASH, syscall=rec, arch="x86_64")
    assert _v(rec.calls[0][2]) == -1 and _v(rec.calls[0][5]) == KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS
    assert _v(rec.calls[0][3]) == 1
    syscalls.kexec_file_unload(syscall=rec, arch="x86_64")
    nr, kfd, ifd, length, buf, flags = rec.calls[1]
    assert (_v(nr), _v(kfd), _v(ifd), _v(length), _v(buf), _v(flags)) == (320, -1, -1, 0, None,
                                                                         KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH)
    with pytest.raises(ConfigError, match="NUL"):
        syscalls.kexec_file_load(5, None, "a\0b", 0, syscall=rec, arch="x86_64")


@pytest.mark.parametrize("err,words", [
    (errno.EPERM, "CAP_SYS_BOOT"), (errno.EBUSY, "unload"), (errno.ENOMEM, "reservation is too small"),
    (errno.EINVAL, "rejected"), (errno.EKEYREJECTED, "signature"), (errno.EBADMSG, "signature"),
    (errno.ENOSYS, "CONFIG_KEXEC"), (12345, "unexpected"),
])
def test_errno_becomes_a_clear_error(err: int, words: str) -> None:
    with pytest.raises(KexecError) as ei:
        syscalls.kexec_file_load(5, 6, "x", KEXEC_FILE_ON_CRASH, syscall=Recorder(-err), arch="x86_64")
    assert ei.value.errno == err and words in str(ei.value) and "kexec_file_load failed" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_unknown_arch() -> None:
    with pytest.raises(UnsupportedError, match="riscv64"):
        syscalls.kexec_file_load(5, 6, "x", 0, syscall=Recorder(), arch="riscv64")


def test_kexec_load_marshalling() -> None:
    seen: list[tuple[bytes, int, int, int]] = []

    def inspect(nr: Any, entry: Any, count: Any, arr: Any, flags: Any) -> None:
        ptr = ctypes.cast(arr, ctypes.POINTER(KexecSegment))
        for i in range(_v(count)):
            s = ptr[i]
            seen.append((ctypes.string_at(s.buf, s.bufsz), s.bufsz, s.mem, s.memsz))

    rec = Recorder(inspect=inspect)
    segs = [Segment(b"kernel", 0x6F000000, 0x2000), Segment(b"hdr", 0x7E000000, 0x1000)]
    syscalls.kexec_load(0x6F000200, segs, KEXEC_ON_CRASH | KEXEC_ARCH_X86_64, syscall=rec, arch="x86_64")
    nr, entry, count, _arr, flags = rec.calls[0]
    assert (_v(nr), _v(entry), _v(count), _v(flags)) == (246, 0x6F000200, 2, 1 | (62 << 16))
    assert seen == [(b"kernel", 6, 0x6F000000, 0x2000), (b"hdr", 3, 0x7E000000, 0x1000)]
    syscalls.kexec_load_unload(syscall=rec, arch="x86_64")
    assert _v(rec.calls[1][2]) == 0 and rec.calls[1][3] is None


@pytest.mark.parametrize("segs,msg", [
    ([], "at least one"), ([Segment(b"", 0x1001, 0x1000)], "not page aligned"),
    ([Segment(b"x" * 0x1001, 0x1000, 0x1000)], "do not fit"),
    ([Segment(b"", 0x1000, 0x2000), Segment(b"", 0x2000, 0x1000)], "overlap"),
    ([Segment(b"", i * 0x1000, 0x1000) for i in range(17)], "at most 16"),
])
def test_kexec_load_checks_segments_first(segs: list[Segment], msg: str) -> None:
    rec = Recorder()
    with pytest.raises(ConfigError, match=msg):
        syscalls.kexec_load(0, segs, KEXEC_ON_CRASH, syscall=rec, arch="x86_64")
    assert rec.calls == []


# -- loader --------------------------------------------------------------------------------
def test_capture_cmdline_like_kdumpctl() -> None:
    line = loader.capture_cmdline('BOOT_IMAGE=/vmlinuz root=UUID=x ro quiet crashkernel=512M hugepages=100 '
                                  'nr_cpus=8 foo="a b" -- single', append="irqpoll nr_cpus=1 reset_devices",
                                  extra="console=ttyS0")
    assert line == 'BOOT_IMAGE=/vmlinuz root=UUID=x ro foo="a b" irqpoll nr_cpus=1 reset_devices console=ttyS0'
    assert "transparent_hugepage=never" in loader.capture_cmdline("ro")
    assert loader.capture_cmdline("ro panic=5", append="panic=10 irqpoll", extra="panic=1") == "ro irqpoll panic=1"
    assert loader.split_cmdline(' a  b="x y"\n') == ["a", 'b="x y"']
    with pytest.raises(ConfigError, match="quote"):
        loader.split_cmdline('a="b')


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text("6.1.0-56-amd64\n")
    (tmp_path / "proc/cmdline").write_text("root=/dev/vda ro quiet crashkernel=256M\n")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.1.0-56-amd64").write_bytes(fake_bzimage())
    (tmp_path / "var/lib/kdump").mkdir(parents=True)
    (tmp_path / "var/lib/kdump/initrd.img-6.1.0-56-amd64").write_bytes(b"INITRD")  # kdump-tools' capture image
    yield tmp_path


def test_plan_and_load_pass_the_right_files(root: Path) -> None:
    plan = loader.plan_load(root=root, default_append="irqpoll nr_cpus=1", append="panic=1")
    assert plan.kernel == root / "boot/vmlinuz-6.1.0-56-amd64" and plan.initrd == root / "var/lib/kdump/initrd.img-6.1.0-56-amd64"
    assert plan.cmdline == "root=/dev/vda ro irqpoll nr_cpus=1 panic=1"
    got: dict[str, Any] = {}

    def fake(nr: Any, kfd: Any, ifd: Any, length: Any, buf: Any, flags: Any) -> int:
        got["kernel"] = os.pread(_v(kfd), 4, 0x202)
        got["initrd"] = os.pread(_v(ifd), 16, 0)
        got["cmdline"] = buf.value.decode()
        got["flags"] = _v(flags)
        return 0

    loader.load(plan, syscall=fake)
    assert got == {"kernel": b"HdrS", "initrd": b"INITRD", "cmdline": plan.cmdline, "flags": KEXEC_FILE_ON_CRASH}
    (root / "var/lib/kdumpkit").mkdir()
    (root / "var/lib/kdumpkit/initrd.img-6.1.0-56-amd64").write_bytes(b"OURS")
    assert loader.plan_load(root=root).initrd == root / "var/lib/kdumpkit/initrd.img-6.1.0-56-amd64"
    assert loader.plan_load(root=root, cmdline="console=ttyS0", append="x=1").cmdline == "console=ttyS0 x=1"


def test_plan_errors(root: Path) -> None:
    with pytest.raises(UsageError, match="--mode must be"):
        loader.plan_load(root=root, mode="other")
    with pytest.raises(UsageError, match="--kernel"):
        loader.plan_load(root=root, kernel=root / "nope")
    (root / "var/lib/kdump/initrd.img-6.1.0-56-amd64").unlink()
    with pytest.raises(UsageError, match="no capture initramfs for 6.1.0-56-amd64: run kdumpkit initramfs build"):
        loader.plan_load(root=root)
    (root / "boot/initrd.img-6.1.0-56-amd64").write_bytes(b"SYSTEM")  # the boot initramfs is never taken by itself
    with pytest.raises(UsageError, match="is the system's boot initramfs, not a capture one"):
        loader.plan_load(root=root)
    assert loader.plan_load(root=root, initrd=root / "boot/initrd.img-6.1.0-56-amd64").initrd is not None
    assert loader.plan_load(root=root, no_initrd=True).initrd is None
    (root / "boot/vmlinuz-6.1.0-56-amd64").write_bytes(fake_bzimage(cmdline_size=16))
    with pytest.raises(UsageError, match="accepts 15"):
        loader.plan_load(root=root, no_initrd=True)
    (root / "boot/vmlinuz-6.1.0-56-amd64").write_bytes(b"\x7fELF" + bytes(4096))
    with pytest.raises(ConfigError, match="not a bzImage"):
        loader.plan_load(root=root, no_initrd=True)
    assert loader.plan_load(root=root, no_initrd=True, check_image=False).kernel.name.startswith("vmlinuz")


def test_unload_uses_the_matching_syscall() -> None:
    rec = Recorder()
    loader.unload(syscall=rec)
    loader.unload(mode="classic", syscall=rec)
    assert [_v(c[0]) for c in rec.calls] == [320, 246]


def test_cli_load_dry_run_and_classic(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", "--root", str(root), "--dry-run", "--append", "panic=1"]) == 0
    out = capsys.readouterr().out
    assert "would load (file)" in out and "crashkernel" not in out and "panic=1" in out and "quiet" not in out
    assert main(["load", "--root", str(root), "--mode", "classic"]) != 0   # no /proc/iomem below this root
    assert "iomem" in capsys.readouterr().err
