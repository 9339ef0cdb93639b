"""The same real-dump checks on the other Debian kernels: bullseye (5.10) and trixie (6.12).

bookworm (6.1) is covered by the per-topic modules; this one repeats their
checks on the other lab kernels (their reference crashes are built on first
use, about a minute each with TCG):

* the kernel log equals ``makedumpfile --dump-dmesg`` byte for byte and holds
  every line the guest printed before the crash;
* dump levels keep exactly makedumpfile's pfns where makedumpfile supports the
  kernel (5.10); on 6.12, newer than Debian's makedumpfile 1.7.2, the self-check
  against the kernel's own free-page counter must pass instead;
* kallsyms decodes (from VMCOREINFO keys or by scanning) and agrees with every
  ``SYMBOL()``; the ORC backtrace agrees with the kernel's own Call Trace.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from test_filter_real import _makedumpfile  # one helper for both modules
from test_report_real import _check_backtrace, _check_kallsyms

from kdumpkit.capture.filter import filtered
from kdumpkit.dump import open_dump
from kdumpkit.kernel.memory import kernel_memory
from kdumpkit.kernel.printk import format_makedumpfile, format_plain, get_printk_log

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(shutil.which("makedumpfile") is None, reason="makedumpfile not installed")]

SUPPORTED_BY_MAKEDUMPFILE = {"bullseye"}  # 1.7.2 predates 6.12's page-type encoding


@pytest.fixture(scope="module", params=["bullseye", "trixie"])
def ref(request: pytest.FixtureRequest) -> Any:
    """The kernel's reference crash (tests/conftest.py; built on first use)."""
    return request.getfixturevalue(f"ref_{request.param}")


def test_dmesg_byte_identical_and_complete(ref: Any) -> None:
    with open_dump(str(ref.vmcore)) as d:
        log = get_printk_log(kernel_memory(d))
        ours = format_makedumpfile(log, d.arch)
        plain = format_plain(log)
    assert not log.partial
    assert ours == Path(ref.dmesg_makedumpfile).read_bytes()
    text = plain.decode(errors="replace") if isinstance(plain, bytes) else plain
    for line in Path(ref.dmesg).read_text(errors="replace").splitlines():
        assert line.rstrip() in text, line


@pytest.mark.parametrize("level", [1, 2, 4, 8, 16, 31])
def test_dump_levels(ref: Any, level: int, tmp_path: Path) -> None:
    with open_dump(str(ref.vmcore)) as d:
        ours = filtered(d, level)
        sc = ours.selfcheck_result
        assert sc is not None and sc.ok, sc
        if ref.kernel in SUPPORTED_BY_MAKEDUMPFILE:
            out = tmp_path / "theirs"
            counts = _makedumpfile(ref.vmcore, level, out)
            with open_dump(str(out)) as theirs:
                assert ours.dumped_runs() == theirs.dumped_runs()
            for k, v in counts.items():
                assert ours.counts[k] == v, (k, ours.counts[k], v)


@pytest.mark.parametrize("scan", [False, True])
def test_kallsyms(ref: Any, scan: bool) -> None:
    _check_kallsyms(str(ref.vmcore), scan)


def test_backtrace_matches_the_kernels_call_trace(ref: Any) -> None:
    _check_backtrace(str(ref.vmcore))
