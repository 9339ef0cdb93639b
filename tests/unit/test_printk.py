"""printk extraction from synthetic logs in all three layouts, and output formats."""

from __future__ import annotations

import json
import struct

import pytest

from kdumpkit.errors import KernelError
from kdumpkit.kernel.memory import kernel_memory
from kdumpkit.kernel.printk import (
    PrintkLog,
    PrintkRecord,
    format_json,
    format_makedumpfile,
    format_plain,
    get_printk_log,
)
from kdumpkit.kernel.testing import SyntheticKernel, SynthRecord


def _recs(n: int, prefix: bytes = b"message") -> list[SynthRecord]:
    return [SynthRecord(prefix + b" %d" % i + b"." * (i % 7), ts_nsec=1_000_000 * i + 123_456_789, level=i % 8,
                        caller_id=(0x80000000 | i) if i % 3 == 0 else 100 + i) for i in range(n)]


def _log(k: SyntheticKernel, **kw: object) -> PrintkLog:
    dump = k.dump(**kw)  # type: ignore[arg-type]
    return get_printk_log(kernel_memory(dump))


# -- lockless (5.10+) --------------------------------------------------------------------
def test_lockless_basic_fields() -> None:
    k = SyntheticKernel()
    recs = [SynthRecord(b"Linux version 6.1", ts_nsec=0, level=5, caller_id=0),
            SynthRecord(b"sysrq: Trigger a crash", ts_nsec=12_345_678_901, level=6, facility=0, caller_id=0x80000002)]
    alive = k.lockless_log(recs)
    log = _log(k)
    assert log.format == "lockless" and not log.partial
    assert [r.text for r in log.records] == [r.text for r in alive] == [r.text for r in recs]
    r = log.records[1]
    assert (r.ts_nsec, r.level, r.facility, r.caller, r.seq) == (12_345_678_901, 6, 0, "C2", 1)
    assert log.records[0].caller == "T0"


@pytest.mark.parametrize("n", [5, 31, 40, 100])
def test_lockless_wrapping_data_and_descriptors(n: int) -> None:
    k = SyntheticKernel()
    alive = k.lockless_log(_recs(n), count_bits=5, size_bits=9, first_lpos=0)
    log = _log(k)
    assert [r.text for r in log.records] == [r.text for r in alive]
    assert 0 < len(alive) <= n
    assert not log.partial


def test_lockless_id_and_lpos_near_wraparound() -> None:
    """Ids wrap at 2**62 and lpos values are large: only the low bits index the rings."""
    k = SyntheticKernel()
    alive = k.lockless_log(_recs(50), count_bits=4, size_bits=9, first_id=(1 << 62) - 20,
                           first_lpos=(1 << 40) + 200)
    assert [r.text for r in _log(k).records] == [r.text for r in alive]


def test_lockless_skips_reserved_and_mismatched_ids() -> None:
    k = SyntheticKernel()
    k.lockless_log(_recs(6), count_bits=4, size_bits=10)
    d1 = k.prb_descs + 1 * 24
    k.write_ulong(d1, (0 << 62) | 1)      # record 1 still reserved by a writer
    d2 = k.prb_descs + 2 * 24
    k.write_ulong(d2, (2 << 62) | 999)     # finalized but for another id: a miss
    d3 = k.prb_descs + 3 * 24
    k.write_ulong(d3, (1 << 62) | 3)       # committed, not finalized: printed
    texts = [r.text for r in _log(k).records]
    assert texts == [b"message 0", b"message 3...", b"message 4....", b"message 5....."]


def test_lockless_dataless_and_truncated_records() -> None:
    k = SyntheticKernel()
    k.lockless_log(_recs(4), count_bits=4, size_bits=10)
    d = k.prb_descs + 1 * 24
    k.write_ulong(d + 8, 1)  # FAILED_LPOS
    k.write_ulong(d + 16, 1)
    i = k.prb_infos + 2 * 88
    k.write_virt(i + 16, struct.pack("<H", 3))  # text_len shorter than the block
    i3 = k.prb_infos + 3 * 88
    k.write_virt(i3 + 16, struct.pack("<H", 5000))  # longer than the block: cut to the block
    texts = [r.text for r in _log(k).records]
    assert texts[0] == b"message 0" and texts[1] == b"mes"
    assert texts[2].startswith(b"message 3...") and len(texts[2]) == 16 - 0  # block is 24 bytes: 8 id + 16


def test_lockless_block_ending_exactly_at_ring_end() -> None:
    """Newer kernels leave such a block unwrapped; the "begin > next" shortcut would misplace it."""
    k = SyntheticKernel()
    k.lockless_log([SynthRecord(b"x" * 8)], count_bits=2, size_bits=5)
    size = 32
    d = k.prb_descs
    # a block [16, 32) holding id 0 + "ABCDEFGH", next lpos = 32 (index 0 of the next wrap)
    k.write_ulong(d + 8, 16)
    k.write_ulong(d + 16, size)
    k.write_ulong(k.prb_data + 16, 0)
    k.write_virt(k.prb_data + 24, b"ABCDEFGH")
    assert [r.text for r in _log(k).records] == [b"ABCDEFGH"]


def test_lockless_corrupt_ids_are_bounded_and_flagged() -> None:
    k = SyntheticKernel()
    k.lockless_log(_recs(5), count_bits=3, size_bits=10)
    k.write_ulong(k.prb + 32, 5)                 # tail_id
    k.write_ulong(k.prb + 24, (1 << 62) - 7)     # head_id "before" tail: a huge span
    log = _log(k)
    assert log.partial and "span" in log.problems[0]
    assert len(log.records) <= 8


def test_lockless_corrupt_ring_header_is_error() -> None:
    k = SyntheticKernel()
    k.lockless_log(_recs(3))
    k.write_virt(k.prb, struct.pack("<I", 60))  # count_bits
    with pytest.raises(KernelError, match="corrupt"):
        _log(k)


def test_lockless_unreadable_text_page_is_partial() -> None:
    k = SyntheticKernel()
    k.lockless_log(_recs(40, b"m" * 60), count_bits=6, size_bits=13)
    data_pa = k.prb_data - k.direct_map
    log = _log(k, excluded=[(data_pa >> 12) + 1])
    assert log.partial and any("text data" in p for p in log.problems)
    assert any(r.damaged for r in log.records) and any(not r.damaged for r in log.records)


def test_lockless_prb_pointer_unreadable_is_error() -> None:
    k = SyntheticKernel()
    k.lockless_log(_recs(3))
    pa = k.prb - k.direct_map if k.prb < k.TEXT_VA else k.text_to_phys(k.prb)
    with pytest.raises(KernelError, match="cannot read"):
        _log(k, excluded=[pa >> 12])


# -- structured (3.5 - 5.9) ---------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 12, 60])
def test_structured_wrap(n: int) -> None:
    k = SyntheticKernel(osrelease="5.4.0")
    recs = _recs(n)
    recs[0] = SynthRecord(b"with dict", ts_nsec=5, level=3, facility=1, dict_=b"SUBSYSTEM=pci\0DEVICE=+pci:0000:00:01.0")
    alive = k.structured_log(recs, buf_len=512)
    log = _log(k)
    assert log.format == "structured" and not log.partial
    assert [r.text for r in log.records] == [r.text for r in alive]
    assert [r.level for r in log.records] == [r.level for r in alive]
    assert [r.ts_nsec for r in log.records] == [r.ts_nsec for r in alive]
    if n == 1:
        assert log.records[0].facility == 1 and log.records[0].caller_id is None


def test_structured_cycle_is_detected() -> None:
    k = SyntheticKernel(osrelease="5.4.0")
    k.structured_log(_recs(5), buf_len=1024)
    base = k.log_buf - k.direct_map
    len0 = struct.unpack("<H", k.mem.read(base + 8, 2))[0]
    len1 = struct.unpack("<H", k.mem.read(base + len0 + 8, 2))[0]
    # record 2 becomes a "wrap" marker (len 0): the walk returns to record 0, then 1: a loop
    k.write_virt(k.log_buf + len0 + len1 + 8, struct.pack("<H", 0))
    log = _log(k)
    assert log.partial and any("cycle" in p for p in log.problems)
    assert len(log.records) <= 5


def test_structured_index_out_of_range() -> None:
    k = SyntheticKernel(osrelease="5.4.0")
    k.structured_log(_recs(3), buf_len=256)
    k.write_virt(k.log_buf + 8, struct.pack("<H", 250))  # first record's len jumps past the end
    log = _log(k)
    assert log.partial and "outside" in log.problems[-1]
    assert len(log.records) == 1


def test_structured_old_struct_log_names() -> None:
    """Before v3.11 the keys say SIZE(log)/OFFSET(log.*)."""
    k = SyntheticKernel(osrelease="3.10.0")
    alive = k.structured_log(_recs(4), buf_len=512)
    for key in list(k.keys):
        if "printk_log" in key:
            k.keys[key.replace("printk_log", "log")] = k.keys.pop(key)
    assert [r.text for r in _log(k).records] == [r.text for r in alive]


def test_structured_missing_offsets() -> None:
    k = SyntheticKernel(osrelease="5.4.0")
    k.structured_log(_recs(2))
    del k.keys["OFFSET(printk_log.len)"]
    with pytest.raises(KernelError, match="OFFSET"):
        _log(k)


# -- plain (before 3.5) ----------------------------------------------------------------
@pytest.mark.parametrize("length", [30, 255, 256, 700])
def test_plain_ring(length: int) -> None:
    k = SyntheticKernel(osrelease="3.2.0")
    text = b"".join(b"<6>[%5d.%06d] line %d\n" % (i, i, i) for i in range(60))[:length]
    expected = k.plain_log(text, buf_len=256)
    log = _log(k)
    assert log.format == "plain" and log.raw == expected
    assert format_makedumpfile(log) == expected
    if length == 30:
        assert log.records[0].level == 6 and log.records[0].ts_nsec == 0


def test_no_log_symbols() -> None:
    k = SyntheticKernel()
    with pytest.raises(KernelError, match="no kernel log"):
        _log(k)


# -- formats ---------------------------------------------------------------------
def test_makedumpfile_format_prefix_indent_escapes() -> None:
    recs = [
        PrintkRecord(b"hello", ts_nsec=0),
        PrintkRecord(b"two\nlines", ts_nsec=123_456_789_999),
        PrintkRecord(b"tab\there\x1b[0m\x7f\r\v\f", ts_nsec=100_000 * 1_000_000_000 + 1_500),
        PrintkRecord(b"utf8 \xc3\xa9", ts_nsec=1),
        PrintkRecord(b"", ts_nsec=2_000_000_000),
    ]
    out = format_makedumpfile(recs, "x86_64")
    assert out == (
        b"[    0.000000] hello\n"
        b"[  123.456789] two\n               lines\n"
        b"[100000.000001] tab\there\\x1b[0m\\x7f\r\v\f\n"
        b"[    0.000000] utf8 \\xffffffc3\\xffffffa9\n"
        b"[    2.000000] \n"
    )
    assert format_makedumpfile(recs[3:4], "aarch64") == b"[    0.000000] utf8 \\xc3\\xa9\n"


def test_plain_and_json_formats() -> None:
    k = SyntheticKernel()
    k.lockless_log([SynthRecord(b"caf\xc3\xa9", ts_nsec=1_234_567_000, level=4, caller_id=77)])
    log = _log(k)
    assert format_plain(log) == "[    1.234567] caf\u00e9\n"
    j = format_json(log)
    json.dumps(j)
    assert j["records"] == [{"seq": 0, "ts_nsec": 1_234_567_000, "level": 4, "facility": 0, "caller": "T77",
                             "text": "caf\u00e9"}]


def test_plain_format_prefixes_every_line_like_dmesg() -> None:
    recs = [PrintkRecord(b"If you want:\n  \"trace_clock=local\"", ts_nsec=3_544_568_000)]
    assert format_plain(recs) == '[    3.544568] If you want:\n[    3.544568]   "trace_clock=local"\n'


@pytest.mark.parametrize("seed", range(60))
def test_random_corruption_never_crashes_or_hangs(seed: int) -> None:
    """Overwrite random bytes of the ring structures: a log (maybe partial) or a KernelError."""
    import random

    rnd = random.Random(seed)
    k = SyntheticKernel(osrelease="5.4.0" if seed % 2 else "6.1.0")
    if seed % 2:
        k.structured_log(_recs(30), buf_len=512)
        targets = [(k.log_buf, 512)] + [(k.symbols[s], 4) for s in ("log_first_idx", "log_next_idx", "log_buf_len")]
    else:
        k.lockless_log(_recs(30), count_bits=4, size_bits=9)
        targets = [(k.prb, 88), (k.prb_descs, 24 * 16), (k.prb_infos, 88 * 16), (k.prb_data, 512)]
    for _ in range(rnd.randrange(1, 12)):
        va, n = rnd.choice(targets)
        off = rnd.randrange(n)
        k.write_virt(va + off, bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 9))))
    try:
        log = get_printk_log(kernel_memory(k.dump()))
    except KernelError:
        return
    format_makedumpfile(log)
    format_plain(log)
    json.dumps(format_json(log))
