"""The newc writer: exact bytes, round trip, and what the host's cpio reads."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kdumpkit.lab import cpio


def test_header_layout_is_exact() -> None:
    h = cpio.header(cpio.Entry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n"), ino=1)
    assert h[:6] == b"070701"
    assert len(h) % 4 == 0
    assert h[6:14] == b"00000001"                    # ino
    assert int(h[14:22], 16) == stat.S_IFREG | 0o755  # mode
    assert int(h[54:62], 16) == 10                    # filesize
    assert int(h[94:102], 16) == 5                    # namesize incl. NUL
    assert h[110:115] == b"init\0"


def test_archive_is_padded_and_ends_with_trailer() -> None:
    data = cpio.write([cpio.Entry("a", stat.S_IFREG | 0o644, b"xyz")])
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-124:]


def test_round_trip_and_determinism() -> None:
    t = cpio.Tree()
    t.file("bin/busybox", b"\x7fELF" + bytes(1001), 0o755)
    t.symlink("bin/sh", "/bin/busybox")
    t.node("dev/console", stat.S_IFCHR, 5, 1)
    t.dir("proc")
    a = t.archive()
    assert a == t.archive()
    entries = {e.name: e for e in cpio.read(a)}
    assert list(entries) == sorted(entries)          # parents first
    assert stat.S_ISDIR(entries["bin"].mode)
    assert entries["bin/busybox"].data == b"\x7fELF" + bytes(1001)
    assert stat.S_ISLNK(entries["bin/sh"].mode) and entries["bin/sh"].data == b"/bin/busybox"
    assert (entries["dev/console"].rdevmajor, entries["dev/console"].rdevminor) == (5, 1)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_host_cpio_lists_and_extracts(tmp_path: Path) -> None:
    t = cpio.Tree()
    t.file("etc/lab/modules", b"virtio\n")
    t.file("init", b"#!/bin/sh\necho hi\n", 0o755)
    t.symlink("bin/sh", "busybox")
    (tmp_path / "a.cpio").write_bytes(t.archive())
    out = subprocess.run(["cpio", "-t", "-F", str(tmp_path / "a.cpio")], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["bin", "bin/sh", "etc", "etc/lab", "etc/lab/modules", "init"]
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "-F", str(tmp_path / "a.cpio")], cwd=dest, check=True)
    assert (dest / "init").read_text() == "#!/bin/sh\necho hi\n"
    assert (dest / "init").stat().st_mode & 0o777 == 0o755
    assert (dest / "bin/sh").readlink() == Path("busybox")
