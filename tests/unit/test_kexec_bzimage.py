"""bzImage setup header: synthetic images, and the lab's real Debian kernels when cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpkit.errors import ConfigError
from kdumpkit.kexec.bzimage import SETUP_HEADER, SETUP_HEADER_OFFSET, parse_bzimage, read_bzimage


def fake_bzimage(*, relocatable: int = 1, xloadflags: int = 3, version: int = 0x020F, init_size: int = 64 << 20,
                 cmdline_size: int = 2047, payload: bytes = b"KERNEL") -> bytes:
    head = bytearray(0x4000)
    head[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + SETUP_HEADER.size] = SETUP_HEADER.pack(
        setup_sects=31, boot_flag=0xAA55, header=b"HdrS", version=version, kernel_version=0x3000,
        relocatable_kernel=relocatable, xloadflags=xloadflags, init_size=init_size, cmdline_size=cmdline_size,
        kernel_alignment=0x200000)
    head[0x3200:0x3200 + 14] = b"6.1.0-test #1\0"
    return bytes(head) + payload


def test_synthetic_header() -> None:
    b = parse_bzimage(fake_bzimage())
    assert b.version == (2, 15) and b.setup_size == 32 * 512 and b.init_size == 64 << 20
    assert b.relocatable and b.kernel_64 and b.above_4g and b.cmdline_size == 2047
    assert b.version_string == "6.1.0-test #1"
    b.check_crash_kernel()


@pytest.mark.parametrize("kw,msg", [({"relocatable": 0}, "not relocatable"), ({"xloadflags": 0}, "64-bit entry")])
def test_not_a_crash_kernel(kw: dict[str, int], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        parse_bzimage(fake_bzimage(**kw)).check_crash_kernel()


def test_not_a_bzimage(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a bzImage"):
        parse_bzimage(b"\x7fELF" + bytes(0x1000))
    with pytest.raises(ConfigError, match="too short"):
        parse_bzimage(b"x")
    with pytest.raises(ConfigError, match="older than 2.10"):
        parse_bzimage(fake_bzimage(version=0x0209))
    with pytest.raises(ConfigError, match="cannot read"):
        read_bzimage(tmp_path / "missing")


def test_lab_kernels() -> None:
    kernels = sorted(Path.home().glob(".cache/kdumpkit/lab/kernels/*/*/root/boot/vmlinuz-*"))
    if not kernels:
        pytest.skip("no lab kernels cached (kdumpkit lab fetch)")
    for k in kernels:
        b = read_bzimage(k)
        b.check_crash_kernel()
        assert b.version >= (2, 12) and 32 << 20 < b.init_size < 256 << 20
        assert k.name.removeprefix("vmlinuz-") in b.version_string
