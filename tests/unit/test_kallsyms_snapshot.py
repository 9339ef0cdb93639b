"""The /proc/kallsyms snapshot: taken by ``load``, carried by ``capture``, used by the symbol table."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_capture import LOG, Actions, _raw_cfg, cfg, fake_kernel_log, src  # noqa: F401  (autouse fixture)
from test_kexec_syscalls import _v, fake_bzimage

from kdumpkit.capture import session
from kdumpkit.capture.rawrestore import restore_raw
from kdumpkit.errors import KernelError
from kdumpkit.kernel.symbols import SymbolTable, load_symbol_table, snapshot_beside
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo
from kdumpkit.kexec import loader
from kdumpkit.kexec.kallsyms_snapshot import SNAPSHOT_PATH, initrd_with_snapshot, snapshot_archive, take_snapshot
from kdumpkit.lab import cpio

KALLSYMS = (b"ffffffff81000000 T _text\nffffffff81000100 T panic\nffffffff81000200 T _etext\n"
            b"ffffffffc0001000 t crash_init\t[crashmod]\nffffffffc0001100 t crash_exit\t[crashmod]\n")


def _root(tmp_path: Path, kallsyms: bytes = KALLSYMS) -> Path:
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text("6.1.0-56-amd64\n")
    (tmp_path / "proc/cmdline").write_text("root=/dev/vda ro crashkernel=256M\n")
    (tmp_path / "proc/kallsyms").write_bytes(kallsyms)
    (tmp_path / "boot").mkdir()
    (tmp_path / "var/lib/kdumpkit").mkdir(parents=True)
    (tmp_path / "boot/vmlinuz-6.1.0-56-amd64").write_bytes(fake_bzimage())
    (tmp_path / "var/lib/kdumpkit/initrd.img-6.1.0-56-amd64").write_bytes(b"\x1f\x8bINITRD")  # 8 bytes: padding needed
    return tmp_path


def test_take_snapshot_counts_and_refuses_hidden_addresses(tmp_path: Path) -> None:
    snap = take_snapshot(_root(tmp_path))
    assert (snap.symbols, snap.module_symbols) == (5, 2)
    assert gzip.decompress(snap.data) == KALLSYMS
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "proc").mkdir()
    (hidden / "proc/kallsyms").write_bytes(b"".join(b"0000000000000000 T f%d\n" % i for i in range(60)))
    with pytest.raises(KernelError, match="zero addresses"):
        take_snapshot(hidden)
    with pytest.raises(KernelError):
        take_snapshot(tmp_path / "nowhere")


def test_initrd_gets_an_aligned_archive_appended(tmp_path: Path) -> None:
    root = _root(tmp_path)
    snap = take_snapshot(root)
    initrd = root / "var/lib/kdumpkit/initrd.img-6.1.0-56-amd64"
    initrd.write_bytes(b"\x1f\x8bINITRD!!")  # 10 bytes -> 2 bytes of zero padding
    fd = initrd_with_snapshot(initrd, snapshot_archive(snap))
    try:
        data = os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
    assert data.startswith(b"\x1f\x8bINITRD!!\0\0") and initrd.read_bytes() == b"\x1f\x8bINITRD!!"
    entries = {e.name: e for e in cpio.read(data[12:])}
    member = entries[SNAPSHOT_PATH.lstrip("/")]
    assert gzip.decompress(member.data) == KALLSYMS and member.mode & 0o777 == 0o600


def test_load_passes_the_initrd_with_the_snapshot(tmp_path: Path) -> None:
    root = _root(tmp_path)
    plan = loader.plan_load(root=root)
    assert plan.kallsyms is not None and any("kallsyms snapshot: 5 symbols" in n for n in plan.notes)
    got: dict[str, Any] = {}

    def fake(nr: Any, kfd: Any, ifd: Any, length: Any, buf: Any, flags: Any) -> int:
        got["initrd"] = os.pread(_v(ifd), 1 << 20, 0)
        return 0

    loader.load(plan, syscall=fake)
    assert got["initrd"].startswith(b"\x1f\x8bINITRD") and b"kdumpkit-load/kallsyms.gz" in got["initrd"]
    assert loader.plan_load(root=root, kallsyms=False).kallsyms is None
    (root / "proc/kallsyms").unlink()
    plan = loader.plan_load(root=root)
    assert plan.kallsyms is None and any(n.startswith("no kallsyms snapshot") for n in plan.notes)


def test_capture_copies_the_snapshot_local_and_raw(tmp_path: Path) -> None:
    snap = tmp_path / "kallsyms.gz"
    snap.write_bytes(gzip.compress(KALLSYMS))
    rep = session.capture(cfg(f'dump_level = "1"\n[[target]]\ntype = "local"\npath = "{tmp_path / "var"}"'),
                          src(), action=Actions(), kallsyms_path=str(snap))
    assert rep.saved is not None and rep.saved.status == "complete"
    folder = Path(rep.saved.location)
    assert (folder / "kallsyms.gz").read_bytes() == snap.read_bytes()
    assert (folder / "kallsyms.gz").stat().st_mode & 0o777 == 0o600
    assert "kallsyms.gz" in json.loads((folder / "manifest.json").read_text())["files"]
    dev = tmp_path / "disk.img"
    dev.write_bytes(bytes(16 << 20))
    rep = session.capture(_raw_cfg(dev), src(), action=Actions(), kallsyms_path=str(snap))
    assert rep.saved is not None and rep.saved.status == "complete"
    r = restore_raw(str(dev), str(tmp_path / "crash"))
    assert r.complete
    assert (Path(r.folder) / "kallsyms.gz").read_bytes() == snap.read_bytes()
    assert sorted(p.name for p in Path(r.folder).iterdir()) == ["dmesg.txt", "kallsyms.gz", "manifest.json",
                                                                "vmcore"]


def test_symbol_table_adds_module_symbols_of_the_same_boot(tmp_path: Path) -> None:
    (tmp_path / "vmcore").write_bytes(b"")
    snap = tmp_path / "kallsyms.gz"
    snap.write_bytes(gzip.compress(KALLSYMS))
    assert snapshot_beside(str(tmp_path / "vmcore")) == str(snap)
    assert snapshot_beside(str(tmp_path / "sub" / "vmcore")) is None
    core = SymbolTable([("_text", 0xFFFFFFFF81000000, "T", None), ("panic", 0xFFFFFFFF81000100, "T", None),
                        ("_etext", 0xFFFFFFFF81000200, "T", None)], "kallsyms in the dump")
    same = VmcoreInfo.from_text(b"OSRELEASE=6.1.0\nKERNELOFFSET=0\n")
    merged = core.with_modules_from(str(snap), same)
    sym = merged.symbolize(0xFFFFFFFFC0001010)
    assert sym is not None and sym.format() == "crash_init+0x10/0x100 [crashmod]"
    assert "2 symbols of 1 modules" in merged.source
    other_boot = VmcoreInfo.from_text(b"OSRELEASE=6.1.0\nKERNELOFFSET=4000000\n")
    assert core.with_modules_from(str(snap), other_boot).symbolize(0xFFFFFFFFC0001010) is None


def test_load_symbol_table_falls_back_to_the_snapshot(tmp_path: Path) -> None:
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.testing import SyntheticKernel

    d = SyntheticKernel().dump()  # no kallsyms tables in its memory
    info = VmcoreInfo.from_dump(d)
    snap = tmp_path / "kallsyms.gz"
    snap.write_bytes(gzip.compress(KALLSYMS))
    st = load_symbol_table(kernel_memory(d, info), info, snapshot=str(snap))
    assert st.source.startswith("/proc/kallsyms snapshot") and st.lookup("crash_init") is not None
