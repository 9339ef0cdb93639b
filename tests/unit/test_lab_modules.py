"""Module dependency resolution: modules.dep, .modinfo parsing, load order."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kdumpkit.errors import LabError
from kdumpkit.lab.modules import dependencies, load_order, modinfo, module_index, parse_modules_dep


def fake_ko(modinfo_items: list[str]) -> bytes:
    """A minimal ELF64 relocatable with a .modinfo and a .shstrtab section."""
    body = b"\0".join(s.encode() for s in modinfo_items) + b"\0"
    shstr = b"\0.modinfo\0.shstrtab\0"
    ehdr_size, sh_size = 64, 64
    body_off = ehdr_size
    shstr_off = body_off + len(body)
    shoff = (shstr_off + len(shstr) + 7) & ~7
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, ehdr_size, 0, 0, sh_size, 3, 2)
    null = bytes(sh_size)
    sec_modinfo = struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, body_off, len(body), 0, 0, 1, 0)
    sec_shstr = struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    data = ehdr + body + shstr
    data += bytes(shoff - len(data))
    return data + null + sec_modinfo + sec_shstr


def test_modinfo_reads_depends() -> None:
    info = modinfo(fake_ko(["license=GPL", "depends=virtio,virtio_ring", "name=virtio_blk"]))
    assert info["depends"] == ["virtio,virtio_ring"]
    assert info["name"] == ["virtio_blk"]


def _tree(tmp_path: Path, mods: dict[str, str]) -> Path:
    for name, deps in mods.items():
        p = tmp_path / "kernel" / f"{name}.ko"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(fake_ko([f"depends={deps}", f"name={name}"]))
    return tmp_path


def test_load_order_from_modinfo(tmp_path: Path) -> None:
    d = _tree(tmp_path, {
        "virtio_ring": "", "virtio": "", "virtio_pci_legacy_dev": "virtio", "virtio_pci_modern_dev": "",
        "virtio_pci": "virtio_pci_legacy_dev,virtio_pci_modern_dev,virtio,virtio_ring",
        "virtio_blk": "virtio,virtio_ring",
    })
    idx = module_index(d)
    order = load_order(["virtio_pci", "virtio_blk"], dependencies(d, idx))
    assert sorted(order) == sorted(idx)
    for mod, before in [("virtio_pci", "virtio_pci_legacy_dev"), ("virtio_pci_legacy_dev", "virtio"),
                        ("virtio_blk", "virtio_ring")]:
        assert order.index(before) < order.index(mod)


def test_modules_dep_wins_and_dashes_are_underscores(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n"
        "kernel/drivers/virtio/virtio.ko.xz:\nkernel/drivers/virtio/virtio_ring.ko.xz:\n")
    deps = dependencies(tmp_path)
    assert deps["virtio_blk"] == ["virtio", "virtio_ring"]
    assert load_order(["virtio-blk"], deps) == ["virtio", "virtio_ring", "virtio_blk"]


def test_builtin_modules_are_skipped() -> None:
    deps = parse_modules_dep("a.ko: b.ko\nb.ko:\n")
    assert load_order(["a"], deps, builtin={"b"}) == ["a"]


def test_unknown_module_and_cycle_raise() -> None:
    with pytest.raises(LabError, match="not found"):
        load_order(["nope"], {})
    with pytest.raises(LabError, match="cycle"):
        load_order(["a"], {"a": ["b"], "b": ["a"]})
