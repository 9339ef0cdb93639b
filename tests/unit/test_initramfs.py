"""The capture initramfs: tree contents, configuration checks, the trimmed runtime really runs.

No QEMU: the runtime is tried by ``chroot`` into the unpacked tree (root only).
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kdumpkit.errors import ConfigError
from kdumpkit.lab import cpio
from kdumpkit.setup import initramfs, runtime

CFG = """dump_level = 31
codec = "lzo"
final_action = "poweroff"
failure_action = "halt"
[[target]]
type = "raw"
device = "/dev/vdb"
"""

needs_busybox = pytest.mark.skipif(not Path(initramfs.BUSYBOX).is_file(), reason="busybox-static not installed")


@pytest.fixture(scope="module")
def tree() -> cpio.Tree:
    if not Path(initramfs.BUSYBOX).is_file():
        pytest.skip("busybox-static not installed")
    t, order, rt = initramfs.capture_tree(CFG, modules_dir=None, mounts=[initramfs.parse_mount("/dev/vdc:/var/crash")])
    assert order == [] and rt.files > 50
    return t


def test_tree_has_init_runtime_and_config(tree: cpio.Tree) -> None:
    names = set(tree.names())
    for n in ("init", "bin/busybox", "bin/sh", "bin/kdumpkit", "etc/kdumpkit/kdumpkit.toml",
              "opt/kdumpkit/bin/python3", "opt/kdumpkit/kdumpkit.py", "opt/kdumpkit/site/kdumpkit/cli/main.pyc",
              "opt/kdumpkit/site/kdumpkit/cli/cmd_capture.pyc", "opt/kdumpkit/site/kdumpkit/capture/session.pyc"):
        assert n in names, n
    # only the capture-path commands: no lab, no report, no rich
    assert "opt/kdumpkit/site/kdumpkit/cli/cmd_lab.pyc" not in names
    assert not any(n.startswith("opt/kdumpkit/site/rich") for n in names)
    assert not any(n.endswith(".py") and n.startswith("opt/kdumpkit/site/kdumpkit") for n in names)


def test_init_files_follow_the_config(tree: cpio.Tree) -> None:
    entries = {e.name: e.data for e in cpio.read(tree.archive())}
    assert entries["etc/kdumpkit/devices"].split() == [b"/dev/vdb"]
    assert entries["etc/kdumpkit/final_action"] == b"poweroff\n"
    assert entries["etc/kdumpkit/failure_action"] == b"halt\n"
    assert entries["etc/kdumpkit/mounts"] == b"/dev/vdc ext4 . /var/crash\n"
    init = entries["init"].decode()
    assert "KDUMPKIT_NO_ACTION=1 /bin/kdumpkit capture --config /etc/kdumpkit/kdumpkit.toml" in init


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("cpio") is None, reason="chroot needs root and cpio")
def test_runtime_runs_in_a_chroot(tree: cpio.Tree, tmp_path: Path) -> None:
    subprocess.run(["cpio", "-idm", "--quiet"], input=tree.archive(), cwd=tmp_path, check=True)
    r = subprocess.run(["chroot", str(tmp_path), "/bin/kdumpkit", "capture", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--config" in r.stdout
    r = subprocess.run(["chroot", str(tmp_path), "/bin/kdumpkit", "status", "--json"], capture_output=True,
                       text=True, timeout=60)
    assert '"checks"' in r.stdout, r.stderr


def test_bad_config_is_refused_at_build_time() -> None:
    with pytest.raises(ConfigError):
        initramfs.capture_tree('codec = "gzip9"\n', modules_dir=None)


def test_mount_spec() -> None:
    m = initramfs.parse_mount("/dev/sdb1:/var/crash:xfs")
    assert (m.spec, m.path, m.fstype, m.modules) == ("/dev/sdb1", "/var/crash", "xfs", ("crc32c_generic", "xfs"))
    assert initramfs.parse_mount("UUID=1234-abcd:/var/crash").mounts_line() == "UUID=1234-abcd ext4 . /var/crash\n"
    with pytest.raises(ConfigError):
        initramfs.parse_mount("sdb1")


def test_xz_uses_crc32_for_the_kernel() -> None:
    blob = initramfs.compress(b"x" * 1000, "xz")
    assert blob[:6] == b"\xfd7zXZ\x00" and blob[7] == 1  # stream flags: check type 1 = CRC32
    assert lzma.decompress(blob) == b"x" * 1000


def test_roots_name_only_shipped_commands() -> None:
    roots, optional = runtime.roots_for(("zstd",))
    assert "zstandard" in optional and "kdumpkit.cli.cmd_capture" in roots
    assert not any(r.startswith("kdumpkit.lab") for r in roots)


def test_pyc_is_sourceless_and_loads(tmp_path: Path) -> None:
    import importlib.util

    (tmp_path / "m.pyc").write_bytes(runtime.pyc(b"X = 41 + 1\n", "/opt/m.py"))
    spec = importlib.util.spec_from_file_location("m", tmp_path / "m.pyc")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.X == 42


def test_runtime_carries_every_capture_module() -> None:
    """Modules imported inside functions are found on disk, not listed by hand (one was missing once)."""
    from kdumpkit.setup.runtime import kdumpkit_roots

    roots = set(kdumpkit_roots())
    for name in ("kdumpkit.setup.blockdev", "kdumpkit.capture.targets", "kdumpkit.kexec.status",
                 "kdumpkit.dump.missing", "kdumpkit.kernel.printk", "kdumpkit.setup.config"):
        assert name in roots, name
    assert not any(r.startswith(("kdumpkit.lab", "kdumpkit.analyze")) or r.endswith(".testing") for r in roots)
