"""kexec_load (``--mode classic``) segments: layout, boot_params, e820, command line, purgatory, errors."""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.cli.main import main
from kdumpkit.errors import UsageError
from kdumpkit.kexec import classic, loader, purgatory
from kdumpkit.kexec.bzimage import SETUP_HEADER, SETUP_HEADER_OFFSET
from kdumpkit.kexec.elfcorehdr import read_elfcorehdr
from kdumpkit.kexec.iomem import parse_iomem
from kdumpkit.kexec.syscalls import KEXEC_ARCH_X86_64, KEXEC_ON_CRASH, KexecSegment

# The lab's bookworm guest (QEMU, SeaBIOS, 1 GiB, crashkernel=256M), as /proc/iomem prints it.
IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000a0000-000bffff : PCI Bus 0000:00
000c0000-000c99ff : Video ROM
000ca000-000cadff : Adapter ROM
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-3ffd6fff : System RAM
  0a000000-0ac02ae6 : Kernel code
  0ac02ae7-0b42b6ff : Kernel rodata
  27000000-36ffffff : Crash kernel
3ffd7000-3fffffff : Reserved
40000000-afffffff : PCI Bus 0000:00
b0000000-bfffffff : PCI MMCONFIG 0000 [bus 00-ff]
  b0000000-bfffffff : reserved
fed1c000-fed1ffff : Reserved
  fed1c000-fed1ffff : pnp 00:04
feffc000-feffffff : Reserved
fffc0000-ffffffff : Reserved
100000000-13fffffff : System RAM
fd00000000-ffffffffff : Reserved
"""
CRASH = (0x27000000, 0x37000000)
KERNEL_BODY = 8 << 20


def bzimage(*, relocatable: int = 1, xloadflags: int = 3, init_size: int = 48 << 20, cmdline_size: int = 2047,
            alignment: int = 0x200000, pref: int = 0x1000000, body: int = KERNEL_BODY) -> bytes:
    head = bytearray(0x4000)  # 31 setup sectors + the boot sector
    head[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + SETUP_HEADER.size] = SETUP_HEADER.pack(
        setup_sects=31, boot_flag=0xAA55, jump=0x6AEB, header=b"HdrS", version=0x020F, kernel_version=0x3000,
        loadflags=1, code32_start=0x100000, relocatable_kernel=relocatable, xloadflags=xloadflags,
        init_size=init_size, cmdline_size=cmdline_size, kernel_alignment=alignment, pref_address=pref,
        hardware_subarch=7)
    head[0x3200:0x3200 + 14] = b"6.1.0-test #1\0"
    return bytes(head) + b"K" * body


def make_root(tmp: Path, *, iomem: str = IOMEM, boot_params: bytes | None = None) -> Path:
    (tmp / "proc/sys/kernel").mkdir(parents=True)
    (tmp / "proc/sys/kernel/osrelease").write_text("6.1.0-56-amd64\n")
    (tmp / "proc/cmdline").write_text("console=ttyS0 crashkernel=256M quiet\n")
    (tmp / "proc/iomem").write_text(iomem)
    (tmp / "proc/kallsyms").write_text("ffffffff81000000 T _text\nffffffff82a00000 T _stext\n"
                                       "ffffffff83c00000 B _end\n")
    for n, addr in ((0, 0x3FC1E000), (1, 0x3FC3E000)):
        cpu = tmp / f"sys/devices/system/cpu/cpu{n}"
        cpu.mkdir(parents=True)
        (cpu / "crash_notes").write_text(f"{addr:x}\n")
        (cpu / "crash_notes_size").write_text("368\n")
    (tmp / "sys/kernel").mkdir(parents=True)
    (tmp / "sys/kernel/vmcoreinfo").write_text("3c2e000 1024\n")
    if boot_params is not None:
        (tmp / "sys/kernel/boot_params").mkdir()
        (tmp / "sys/kernel/boot_params/data").write_bytes(boot_params)
    (tmp / "boot").mkdir()
    (tmp / "var/lib/kdumpkit").mkdir(parents=True)
    (tmp / "boot/vmlinuz-6.1.0-56-amd64").write_bytes(bzimage())
    (tmp / "var/lib/kdumpkit/initrd.img-6.1.0-56-amd64").write_bytes(b"I" * 5_000_001)
    return tmp


def first_boot_params() -> bytes:
    bp = bytearray(4096)
    bp[0:4] = b"SCRN"
    struct.pack_into("<Q", bp, classic.BP_ACPI_RSDP_ADDR, 0xF59C0)
    bp[classic.BP_EDDBUF_ENTRIES] = 1
    bp[classic.BP_EDDBUF:classic.BP_EDDBUF + 4] = b"EDD!"
    struct.pack_into("<I", bp, SETUP_HEADER_OFFSET + SETUP_HEADER.offsetof("hardware_subarch"), 0)
    return bytes(bp)


def hdr_field(bp: bytes, name: str) -> Any:
    return SETUP_HEADER.unpack(bp, SETUP_HEADER_OFFSET)[name]


@pytest.fixture
def image(tmp_path: Path) -> classic.ClassicImage:
    root = make_root(tmp_path, boot_params=first_boot_params())
    kernel = (root / "boot/vmlinuz-6.1.0-56-amd64").read_bytes()
    return classic.build(root, kernel, "irqpoll nr_cpus=1 console=ttyS0", 5_000_001)


def test_segment_layout(image: classic.ClassicImage) -> None:
    cs, ce = image.crash
    assert (cs, ce) == CRASH
    segs = sorted(image.segments, key=lambda s: s.mem)
    assert [s.name for s in segs] == ["elfcorehdr", "purgatory", "boot_params", "kernel", "initrd"]
    for s in segs:
        assert s.mem % 4096 == 0 and s.memsz % 4096 == 0 and s.size <= s.memsz
        assert cs <= s.mem and s.mem + s.memsz <= ce
    for a, b in zip(segs, segs[1:], strict=False):
        assert a.mem + a.memsz <= b.mem
    hdr, purg, bp, kern, initrd = segs
    assert hdr.mem == cs                              # where kexec_file puts it too
    assert image.entry == purg.mem and purg.size == purgatory.SIZE
    assert kern.mem % 0x200000 == 0 and kern.mem >= 0x1000000
    assert kern.memsz == 48 << 20 and kern.size == KERNEL_BODY   # init_size from the load address
    assert image.kernel_entry == kern.mem + 0x200
    assert initrd.size == 5_000_001 and initrd.mem + initrd.memsz == ce
    assert image.boot_params_addr == bp.mem
    assert len(image.table()) == 5 and "(entry)" in image.table()[1]


def test_elfcorehdr_matches_the_kernels_list(image: classic.ClassicImage) -> None:
    _, ph = read_elfcorehdr(image.data["elfcorehdr"])
    assert [(p.p_type, p.p_paddr, p.p_memsz) for p in ph] == [
        (4, 0x3FC1E000, 368), (4, 0x3FC3E000, 368), (4, 0x3C2E000, 0x1024),
        (1, 0xA000000, 0x2C00000),                                 # kernel text (_end - _text)
        (1, 0x100000, CRASH[0] - 0x100000),                       # low 1 MiB left out, as the kernel does
        (1, CRASH[1], 0x3FFD7000 - CRASH[1]), (1, 0x100000000, 0x40000000)]
    assert image.segment("elfcorehdr").size == len(image.data["elfcorehdr"]) == 4096


def test_e820_like_crash_setup_memmap_entries(image: classic.ClassicImage) -> None:
    R, RES = classic.E820_RAM, classic.E820_RESERVED
    assert image.e820 == [
        (0x1000, 0x9EC00, R),                                       # System RAM below 1 MiB
        (0, 0x1000, RES), (0x9FC00, 0x400, RES), (0xF0000, 0x10000, RES), (0x3FFD7000, 0x29000, RES),
        (0xFED1C000, 0x4000, RES), (0xFEFFC000, 0x4000, RES), (0xFFFC0000, 0x40000, RES),
        (0xFD00000000, 0x300000000, RES),                           # e820 "Reserved", not PCI's "reserved"
        (CRASH[0] + 0x1000, CRASH[1] - CRASH[0] - 0x1000, R)]       # the crash range minus the elfcorehdr
    # what the reference run's capture kernel printed (kexec -p -s, bookworm), plus the entries it lacks here
    lines = classic.e820_lines(image.e820)
    assert lines[:5] == ["BIOS-e820: [mem 0x0000000000000000-0x0000000000000fff] reserved",
                         "BIOS-e820: [mem 0x0000000000001000-0x000000000009fbff] usable",
                         "BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved",
                         "BIOS-e820: [mem 0x00000000000f0000-0x00000000000fffff] reserved",
                         "BIOS-e820: [mem 0x0000000027001000-0x0000000036ffffff] usable"]


def test_e820_acpi_ranges_and_low_crash_range() -> None:
    iomem = parse_iomem("00001000-0009ffff : System RAM\n00100000-7fffffff : System RAM\n"
                        "  10000000-17ffffff : Crash kernel\n7ff00000-7ff0ffff : ACPI Tables\n"
                        "7ff10000-7ff1ffff : ACPI Non-volatile Storage\n100000000-2ffffffff : System RAM\n"
                        "  200000000-23fffffff : Crash kernel\n")
    main, low = classic.crash_ranges(iomem)
    assert main == (0x200000000, 0x240000000) and low == (0x10000000, 0x18000000)
    e820 = classic.crash_e820(iomem, (0x200000000, 0x200002000))
    assert e820 == [(0x1000, 0x9F000, 1), (0x7FF00000, 0x10000, 3), (0x7FF10000, 0x10000, 4),
                    (0x10000000, 0x8000000, 1), (0x200002000, 0x40000000 - 0x2000, 1)]


def test_boot_params_fields(image: classic.ClassicImage) -> None:
    raw = image.data["boot_params"]
    bp = raw[:4096]
    initrd = image.segment("initrd")
    assert hdr_field(bp, "header") == b"HdrS" and hdr_field(bp, "version") == 0x020F
    assert hdr_field(bp, "init_size") == 48 << 20 and hdr_field(bp, "xloadflags") == 3   # setup header copied
    assert hdr_field(bp, "type_of_loader") == 0xFF and hdr_field(bp, "loadflags") == 0
    assert hdr_field(bp, "hardware_subarch") == 0                   # the running kernel's, not the image's 7
    assert hdr_field(bp, "cmd_line_ptr") == image.boot_params_addr + 4096
    assert struct.unpack_from("<I", bp, classic.BP_EXT_CMD_LINE_PTR)[0] == 0
    assert (hdr_field(bp, "ramdisk_image"), hdr_field(bp, "ramdisk_size")) == (initrd.mem, 5_000_001)
    assert struct.unpack_from("<II", bp, classic.BP_EXT_RAMDISK_IMAGE) == (0, 0)
    assert struct.unpack_from("<Q", bp, classic.BP_ACPI_RSDP_ADDR)[0] == 0xF59C0
    assert bp[0:2] == b"SC" and bp[2:4] == bytes(2)  # screen_info copied, ext_mem_k zeroed (no RAM spans 1M)
    assert bp[classic.BP_EDDBUF:classic.BP_EDDBUF + 4] == b"EDD!"
    assert bp[classic.BP_EDDBUF_ENTRIES] == 1 and bp[0x1EF] == 0     # sentinel clear
    n = bp[classic.BP_E820_ENTRIES]
    table = [classic.E820_ENTRY.unpack_from(bp, classic.BP_E820_TABLE + 20 * i) for i in range(n)]
    assert table == image.e820
    assert raw[4096:].rstrip(b"\0").decode() == image.cmdline


def test_cmdline_carries_elfcorehdr(image: classic.ClassicImage) -> None:
    assert image.cmdline == f"irqpoll nr_cpus=1 console=ttyS0 elfcorehdr={CRASH[0] >> 10}K"


def test_purgatory_parameter_block_patched(image: classic.ClassicImage) -> None:
    purg = image.data["purgatory"]
    assert purgatory.read_params(purg) == (image.kernel_entry, image.boot_params_addr)
    assert purg[:0x56] == purgatory.CODE + bytes(0x56 - len(purgatory.CODE))
    tmpl = purgatory.template()
    assert len(tmpl) == purgatory.SIZE and purgatory.read_params(tmpl) == (0, 0)
    assert struct.unpack_from("<H", tmpl, purgatory.GDT_DESC_OFFSET)[0] == 31
    with pytest.raises(Exception, match="physical address"):
        purgatory.purgatory_image(0, 0x1000)


@pytest.mark.skipif(not (shutil.which("as") and shutil.which("objcopy")), reason="binutils (as, objcopy) not installed")
def test_purgatory_bytes_are_the_assembled_source(tmp_path: Path) -> None:
    src = Path(purgatory.__file__).with_name("purgatory.S")
    subprocess.run(["as", "--64", "-o", str(tmp_path / "p.o"), str(src)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "p.o"), str(tmp_path / "p.bin")],
                   check=True)
    assert (tmp_path / "p.bin").read_bytes() == purgatory.template()


@pytest.mark.parametrize("kw,msg", [({"relocatable": 0}, "not relocatable"), ({"xloadflags": 2}, "XLF_KERNEL_64"),
                                    ({"init_size": 250 << 20}, r"too small: 256 MiB .* init_size 250 MiB"),
                                    ({"cmdline_size": 40}, "accepts 39")])
def test_plan_errors(tmp_path: Path, kw: dict[str, int], msg: str) -> None:
    root = make_root(tmp_path)
    with pytest.raises(UsageError, match=msg):
        classic.build(root, bzimage(**kw), "irqpoll nr_cpus=1 console=ttyS0", 5_000_001)


def test_no_crash_range(tmp_path: Path) -> None:
    root = make_root(tmp_path, iomem="00001000-0009fbff : System RAM\n00100000-3ffd6fff : System RAM\n")
    with pytest.raises(UsageError, match="crashkernel="):
        classic.build(root, bzimage(), "x", None)


def test_initrd_size_checked(image: classic.ClassicImage) -> None:
    with pytest.raises(Exception, match="5000001 were planned"):
        classic.segments(image, b"short")


# -- loader and CLI --------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, list[tuple[bytes, int, int, int]], int]] = []

    def __call__(self, nr: Any, entry: Any, count: Any, arr: Any, flags: Any) -> int:
        segs = [(ctypes.string_at(arr[i].buf, arr[i].bufsz), arr[i].bufsz, arr[i].mem, arr[i].memsz)
                for i in range(count.value)]
        assert isinstance(arr[0], KexecSegment)
        self.calls.append((nr.value, entry.value, segs, flags.value))
        return 0


def test_loader_classic_calls_kexec_load(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    plan = loader.plan_load(root=root, mode="classic", cmdline="irqpoll console=ttyS0")
    assert plan.classic is not None and plan.kallsyms is not None   # the fixture's kallsyms has addresses
    assert plan.flags == KEXEC_ON_CRASH | KEXEC_ARCH_X86_64
    assert plan.cmdline.endswith(f"elfcorehdr={CRASH[0] >> 10}K")
    rec = Recorder()
    loader.load(plan, syscall=rec)
    nr, entry, segs, flags = rec.calls[0]
    assert (nr, entry, flags) == (246, plan.classic.entry, KEXEC_ON_CRASH | KEXEC_ARCH_X86_64)
    by_mem = {m: (data, memsz) for data, _n, m, memsz in segs}
    initrd = plan.classic.segment("initrd")
    data, memsz = by_mem[initrd.mem]
    assert data.startswith(b"I" * 5_000_001) and b"kallsyms.gz" in data[5_000_001:]   # the snapshot archive
    assert len(data) == initrd.size and memsz == initrd.memsz
    kern = plan.classic.segment("kernel")
    assert by_mem[kern.mem][0] == b"K" * KERNEL_BODY
    plan2 = loader.plan_load(root=root, mode="classic", cmdline="x", kallsyms=False, no_initrd=True)
    assert plan2.classic is not None and [s.name for s in plan2.classic.segments][-1] == "kernel"
    assert hdr_field(plan2.classic.data["boot_params"], "ramdisk_size") == 0


def test_cli_dry_run_prints_the_segment_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path)
    assert main(["load", "--root", str(root), "--mode", "classic", "--dry-run", "--no-kallsyms"]) == 0
    out = capsys.readouterr().out
    assert "would load (classic)" in out and "kexec_load segments" in out
    for name in ("elfcorehdr", "purgatory", "boot_params", "kernel", "initrd"):
        assert name in out
    assert "0x000027000000-0x000027000fff" in out
