"""Hostile inputs: memory and time follow what a dump is, never what its headers claim (issue #19).

Each input is built with the synthetic builders, then the CLI runs in a
subprocess under ``RLIMIT_AS`` (so a blow-up fails as MemoryError instead of
taking the machine) and a timeout.  Every case must end with a correct
(possibly partial) result or a non-zero exit and one line on stderr — never a
traceback — with peak RSS well under the limit and, for ``convert``, nothing
left behind.  Timings decide nothing; the timeout only catches a hang.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import kdumpkit
from kdumpkit.dump.base import Dump, Note
from kdumpkit.dump.codecs import FLAG_SNAPPY, FLAG_ZLIB, FLAG_ZSTD
from kdumpkit.dump.elf import EHDR64, PHDR64, write_elf
from kdumpkit.dump.fileio import MappedFile
from kdumpkit.dump.sink import FileSink
from kdumpkit.dump.testing import default_vmcoreinfo, synthetic_dump
from kdumpkit.kernel.testing import SyntheticKernel, SynthRecord

MEMORY_LIMIT = 1 << 30  # RLIMIT_AS of each run
PEAK_RSS_LIMIT = 300 << 20  # what a run may really use: the interpreter, NumPy, a few pages
TIMEOUT = 240.0  # only catches a hang (the unfixed cases ran minutes): generous for a loaded CI host
SRC = str(Path(kdumpkit.__file__).resolve().parents[1])
RECORDS = [SynthRecord(b"hello %d" % i, ts_nsec=i * 1000) for i in range(5)]


@dataclass
class Run:
    rc: int
    out: str
    err: str
    peak_rss: int  # bytes

    def refused(self, *words: str) -> None:
        """Non-zero exit, one line on stderr naming ``words``, no traceback."""
        assert self.rc not in (0, None), self.err
        lines = [line for line in self.err.splitlines() if not line.startswith(("convert:", "verify:"))]
        assert len(lines) == 1 and lines[0].startswith("kdumpkit: "), self.err
        for w in words:
            assert w in lines[0], lines[0]


#: Runs kdumpkit under the memory limit and writes its own peak RSS (VmHWM) at exit.  Measured from
#: inside: wait4's ru_maxrss of a child of this (large) pytest process counts the pages it inherited
#: at fork, and VmHWM belongs to the exec'd image alone.
LAUNCHER = """
import atexit, resource, sys
n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_AS, (n, n))
hwm = sys.argv[2]
def _peak():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(hwm, "w") as f:
        f.write(kb)
atexit.register(_peak)
sys.argv = ["kdumpkit", *sys.argv[3:]]
from kdumpkit.cli.main import main
sys.exit(main())
"""


def kdumpkit_cli(*args: str | Path, cwd: Path) -> Run:
    """Run ``kdumpkit ARGS`` under the memory limit; its peak RSS is its own VmHWM (see LAUNCHER)."""
    env = dict(os.environ, PYTHONPATH=SRC, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out_path, err_path, hwm_path = cwd / ".stdout", cwd / ".stderr", cwd / ".peak"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # A small launcher sets the limit and execs: a preexec_fn would fork this (large) pytest process,
        # and the child's peak RSS would count the parent's pages it inherited.
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(MEMORY_LIMIT), str(hwm_path),
                                 *map(str, args)], stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    deadline = time.monotonic() + TIMEOUT
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"kdumpkit {' '.join(map(str, args))} still running after {TIMEOUT} s")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = int(hwm_path.read_text()) * 1024 if hwm_path.is_file() else usage.ru_maxrss * 1024
    run = Run(proc.returncode, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), peak)
    for p in (out_path, err_path, hwm_path):
        p.unlink(missing_ok=True)
    assert "Traceback" not in run.err and "MemoryError" not in run.err, run.err
    assert run.peak_rss < PEAK_RSS_LIMIT, f"peak RSS {run.peak_rss >> 20} MiB"
    return run


def kdumpkit_main(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """The same, in this process: for variants whose memory a subprocess case already bounds."""
    from kdumpkit.cli.main import main

    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return Run(rc, cap.out, cap.err, 0)


def save_elf(dump: Dump, path: Path) -> Path:
    with FileSink(str(path), overwrite=True) as sink:
        write_elf(dump, sink)
    return path


def save_kdump(dump: Dump, path: Path, codec: str | None = None) -> Path:
    from kdumpkit.dump.kdump import write_kdump

    with FileSink(str(path), overwrite=True) as sink:
        write_kdump(dump, sink, codec=codec)
    return path


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(out.name)]


# -- 1. printk rings: sizes bounded by the dump's memory, read lazily ------------------------
def _lockless(tmp_path: Path, count_bits: int, size_bits: int, *, ram: int = 1 << 30,
              high_page: int | None = None, span_lie: bool = False) -> Path:
    k = SyntheticKernel(ram=ram)
    k.lockless_log(RECORDS)
    k.write_virt(k.prb, struct.pack("<I", count_bits))
    k.write_virt(k.prb + 48, struct.pack("<I", size_bits))
    if span_lie:
        k.write_ulong(k.prb + 32, 5)  # tail_id
        k.write_ulong(k.prb + 24, (1 << 62) - 7)  # head_id: 2^62 ids "in flight"
    if high_page is not None:
        k.mem.write(high_page, b"\1")  # RAM far up: the claim fits the memory map, not the file
    return save_elf(k.dump(), tmp_path / "vmcore")


def test_lockless_ring_bigger_than_the_dump_is_refused(tmp_path: Path) -> None:
    """count_bits=25, size_bits=30 in a 36 KiB dump: once 6.6 GB and 25-50 s."""
    path = _lockless(tmp_path, 25, 30)
    assert path.stat().st_size < 64 << 10
    kdumpkit_cli("dmesg", path, cwd=tmp_path).refused("printk ring buffer", "claims", "corrupt")
    report = kdumpkit_cli("report", path, cwd=tmp_path)  # a report lists what it could not read
    assert "printk ring buffer" in report.out + report.err


def test_lockless_ring_claim_within_memory_reads_only_what_exists(tmp_path: Path) -> None:
    """The same claim in a dump whose RAM map spans 64 GiB: the log comes out, lazily read."""
    path = _lockless(tmp_path, 25, 30, ram=1 << 36, high_page=1 << 35)
    run = kdumpkit_cli("dmesg", path, "--format", "plain", cwd=tmp_path)
    assert run.rc == 0
    assert [line.split("] ", 1)[1] for line in run.out.splitlines()] == [r.text.decode() for r in RECORDS]


def test_lockless_ring_with_lying_ids_is_partial_and_bounded(tmp_path: Path) -> None:
    path = _lockless(tmp_path, 25, 30, ram=1 << 36, high_page=1 << 35, span_lie=True)
    run = kdumpkit_cli("dmesg", path, cwd=tmp_path)
    assert run.rc == 0 and run.err.startswith("kdumpkit: warning: kernel log is incomplete")
    assert "span more than" in run.err and "unreadable" in run.err


def _structured(tmp_path: Path, buf_len: int, **kw: int) -> Path:
    k = SyntheticKernel(osrelease="5.4.0", **kw)
    k.structured_log(RECORDS, buf_len=512)
    k.write_u32(k.symbols["log_buf_len"], buf_len)
    if kw.get("ram", 0) > 1 << 35:
        k.mem.write(1 << 35, b"\1")
    return save_elf(k.dump(), tmp_path / "vmcore")


def test_structured_log_buf_len_bigger_than_the_dump_is_refused(tmp_path: Path) -> None:
    """log_buf_len = 1 GiB: once 2.1 GB."""
    kdumpkit_cli("dmesg", _structured(tmp_path, 1 << 30), cwd=tmp_path).refused("log_buf_len", "claims")


def test_structured_log_buf_len_within_memory_is_read_lazily(tmp_path: Path) -> None:
    run = kdumpkit_cli("dmesg", _structured(tmp_path, 1 << 30, ram=1 << 36), "--format", "plain", cwd=tmp_path)
    assert run.rc == 0
    assert [line.split("] ", 1)[1] for line in run.out.splitlines()] == [r.text.decode() for r in RECORDS]


def test_plain_log_buf_len_bigger_than_the_dump_is_refused() -> None:
    from kdumpkit.errors import KernelError
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.printk import get_printk_log

    k = SyntheticKernel(osrelease="3.2.0")
    k.plain_log(b"<6>[    0.000000] hello\n", buf_len=256)
    k.write_u32(k.symbols["log_buf_len"], 1 << 30)
    k.write_u32(k.symbols["log_end"], 1 << 30)
    with pytest.raises(KernelError, match="log_buf_len 1073741824 claims"):
        get_printk_log(kernel_memory(k.dump()))


# -- 2. decompression bombs: a page decompresses into at most one page ----------------------
def _kdump_with_page(path: Path, page_size: int, flag: int, blob: bytes) -> Path:
    """A kdump file whose pfn 0 is stored as ``blob`` with compression ``flag``."""
    from kdumpkit.dump.kdump import PAGE_DESC, KdumpFile

    save_kdump(synthetic_dump(ram=[(0, 4)], page_size=page_size, zero_fraction=0, random_fraction=1.0), path)
    src = MappedFile(str(path))
    dump = KdumpFile(src)
    desc_off, pd_s = dump._desc_off, PAGE_DESC.with_byteorder(dump.header_struct.byteorder)
    src.close()
    with open(path, "r+b") as f:
        f.seek(desc_off)
        pd = pd_s.unpack(f.read(pd_s.size))
        assert pd.size == page_size and len(blob) <= page_size
        f.seek(desc_off)
        f.write(pd_s.pack(pd, size=len(blob), flags=flag))
        f.seek(pd.offset)
        f.write(blob)
    return path


def zlib_bomb(inflated: int, chunk: int = 1 << 22) -> bytes:
    """A zlib stream of ``inflated`` zero bytes, built in milliseconds.

    After a full flush deflate keeps no history, so every later chunk of zeros
    compresses to the same bytes: one chunk is compressed and repeated; the
    Adler-32 of n zeros is ``(n % 65521) << 16 | 1``.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    assert inflated % chunk == 0
    body = piece * (inflated // chunk) + c.flush()
    return b"\x78\xda" + body + struct.pack(">I", (inflated % 65521) << 16 | 1)


def zstd_frame_announcing(size: int, page_size: int = 4096) -> bytes:
    """A zstd frame whose header states ``size`` bytes of content, holding one RLE block of a page."""
    header = struct.pack("<IBQ", 0xFD2FB528, 0xE0, size)  # single segment, 8-byte content size
    return header + (1 | 1 << 1 | page_size << 3).to_bytes(3, "little") + b"\0"  # last block, RLE


def test_zlib_bomb_helper_is_a_valid_stream() -> None:
    assert zlib.decompress(zlib_bomb(4 << 22)) == bytes(4 << 22)


#: (page size, flag, stored page, what the refusal says): the size is refused before anything is allocated
BOMBS: dict[str, Callable[[], tuple[int, int, bytes, str]]] = {
    "zstd-2GiB-content-size": lambda: (4096, FLAG_ZSTD, zstd_frame_announcing(1 << 31),
                                       "zstd page announces 2147483648 bytes, not 4096"),
    "zlib-1MiB-to-1GiB": lambda: (1 << 20, FLAG_ZLIB, zlib_bomb(1 << 30), "zlib page inflates past 1048576 bytes"),
    "snappy-length-ffffffff": lambda: (4096, FLAG_SNAPPY, b"\xff\xff\xff\xff\x0f" + bytes(64),
                                       "snappy page announces 4294967295 bytes, not 4096"),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_decompression_bomb_is_one_corrupt_page(tmp_path: Path, bomb: str) -> None:
    if bomb.startswith("zstd"):
        pytest.importorskip("zstandard")
    if bomb.startswith("snappy"):
        pytest.importorskip("cramjam")
    page_size, flag, blob, why = BOMBS[bomb]()
    path = _kdump_with_page(tmp_path / "vmcore", page_size, flag, blob)
    run = kdumpkit_cli("verify", path, cwd=tmp_path)
    assert run.rc != 0 and f"pfn 0x0: corrupt dump: {why}" in run.out + run.err
    out = tmp_path / "out.elf"
    kdumpkit_cli("convert", path, out, "-f", "elf", cwd=tmp_path).refused("corrupt dump")
    assert leftovers(out) == []


# -- 3. ELF segments claiming impossible memory ---------------------------------------------
def _elf_with_load(tmp_path: Path, **fields: int) -> Path:
    path = save_elf(synthetic_dump(ram=[(0, 16)]), tmp_path / "vmcore")
    data = bytearray(path.read_bytes())
    eh = EHDR64.unpack(data[:EHDR64.size])
    off = eh.e_phoff + PHDR64.size  # the first PT_LOAD follows the PT_NOTE
    data[off:off + PHDR64.size] = PHDR64.pack(PHDR64.unpack(data, off), **fields)
    path.write_bytes(data)
    return path


SEGMENT_LIES = {"memsz-2^60": {"p_memsz": 1 << 60}, "paddr-2^64": {"p_paddr": (1 << 64) - 8192}}


@pytest.mark.parametrize("lie", sorted(SEGMENT_LIES))
def test_elf_segment_beyond_physical_memory_is_refused_before_output(tmp_path: Path, lie: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Once: lime wrote 8+ GB, raw hung, kdump/lkcd raised struct.error, raw OverflowError."""
    path = _elf_with_load(tmp_path, **SEGMENT_LIES[lie])
    out = tmp_path / "out"
    for fmt in ("lime", "raw"):  # the disk-filling and the hanging one, bounded in a subprocess
        kdumpkit_cli("convert", path, out, "-f", fmt, cwd=tmp_path).refused("physical address space")
        assert leftovers(out) == []
    for fmt in ("elf", "kdump", "flat", "lkcd"):
        kdumpkit_main("convert", path, out, "-f", fmt, capsys=capsys).refused("physical address space")
        assert leftovers(out) == []


def test_elf_segment_beyond_physical_memory_is_refused_by_every_reader_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _elf_with_load(tmp_path, p_memsz=1 << 60)
    for cmd in ("info", "verify", "dmesg"):
        kdumpkit_main(cmd, path, capsys=capsys).refused("PT_LOAD 1", "52-bit")


def test_lime_output_larger_than_the_disk_is_refused_up_front(tmp_path: Path) -> None:
    """2^51 bytes of (excluded) RAM is a valid map, but a LiME file holds every byte: no space, said at once."""
    path = _elf_with_load(tmp_path, p_memsz=1 << 51)
    out = tmp_path / "out.lime"
    kdumpkit_cli("convert", path, out, "-f", "lime", cwd=tmp_path).refused("no space left", "lime output needs")
    assert leftovers(out) == []


def test_convert_refuses_a_memory_map_beyond_the_address_space_from_any_reader(tmp_path: Path) -> None:
    """The check lives in convert too, for readers without their own (a synthetic source here)."""
    from kdumpkit.dump.convert import convert
    from kdumpkit.errors import CorruptDumpError

    src = synthetic_dump(ram=[(0, 16), (1 << 41, (1 << 41) + 16)])
    out = tmp_path / "out.elf"
    with pytest.raises(CorruptDumpError, match="52-bit physical address space"):
        convert(src, str(out), "elf")
    assert leftovers(out) == []


# -- 4. VMCOREINFO PAGESIZE -------------------------------------------------------------------
@pytest.mark.parametrize("page_size", [1, 512, 12288, 1 << 30, 1 << 40])
def test_impossible_pagesize_is_one_error_naming_the_field(tmp_path: Path, page_size: int,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """PAGESIZE=1 once made ``report`` take 46 s and ``convert`` raise ValueError; 2^30 MemoryError."""
    vmci = default_vmcoreinfo().replace("PAGESIZE=4096", f"PAGESIZE={page_size}")
    elf = save_elf(synthetic_dump(ram=[(0, 16)], vmcoreinfo=vmci), tmp_path / "vmcore.elf")
    kd = save_kdump(synthetic_dump(ram=[(0, 16)], vmcoreinfo=vmci), tmp_path / "vmcore.kdump", codec="zlib")
    if page_size in (1, 1 << 30):
        kdumpkit_cli("report", elf, cwd=tmp_path).refused(f"PAGESIZE={page_size}")
    out = tmp_path / "out"
    for cmd in (["info", elf], ["dmesg", elf], ["convert", elf, out, "-f", "elf"], ["convert", kd, out, "-f", "elf"]):
        kdumpkit_main(*cmd, capsys=capsys).refused(f"PAGESIZE={page_size}")
        assert leftovers(out) == []


@pytest.mark.parametrize("page_size", [4096, 16384, 65536])
def test_real_page_sizes_are_accepted(page_size: int) -> None:
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

    assert VmcoreInfo.from_text(f"PAGESIZE={page_size}\n".encode()).page_size == page_size


# -- 5. note names and paths that are not dumps -------------------------------------------------
def test_non_ascii_note_name_round_trips_byte_for_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Once a UnicodeEncodeError traceback in ``convert``."""
    from kdumpkit.dump import open_dump

    name = "C\xd6RE\xff"  # as parse_notes reads the bytes 43 d6 52 45 ff
    src = save_elf(synthetic_dump(ram=[(0, 16)], extra_notes=[Note(name, 7, b"abcd")]), tmp_path / "vmcore")
    assert b"C\xd6RE\xff\0" in src.read_bytes()
    for fmt in ("elf", "kdump", "raw"):
        out = tmp_path / f"out.{fmt}"
        assert kdumpkit_main("convert", src, out, "-f", fmt, capsys=capsys).rc == 0
        with open_dump(str(out)) as d:
            assert Note(name, 7, b"abcd") in d.notes()


def test_directory_as_dump_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Once an IsADirectoryError traceback from every command that opens a dump."""
    (tmp_path / "adir").mkdir()
    kdumpkit_cli("info", tmp_path / "adir", cwd=tmp_path).refused("is a directory")
    for cmd in ("verify", "dmesg", "report", "estimate", "symbols"):
        kdumpkit_main(cmd, tmp_path / "adir", capsys=capsys).refused("is a directory")


def test_fifo_as_dump_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(tmp_path / "fifo")
    kdumpkit_main("info", tmp_path / "fifo", capsys=capsys).refused("not a regular file")
