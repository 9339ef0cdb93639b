"""Our kdump-compressed output is byte-identical to makedumpfile's on a real vmcore.

lzo is deterministic in both tools, so ``convert -l`` must equal
``makedumpfile -d 0 -l`` and ``convert -l --exclude-zero`` must equal
``makedumpfile -d 1 -l`` to the byte — headers (with the crashed kernel's
utsname), bitmaps, descriptors, the shared zero page and every page.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.cli.main import main

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(not shutil.which("makedumpfile"), reason="makedumpfile not installed")]


@pytest.mark.parametrize(("ours", "level"), [([], "0"), (["--exclude-zero"], "1")])
def test_lzo_output_identical(ref_bookworm: Any, tmp_path: Path, ours: list[str], level: str) -> None:
    mine, theirs = tmp_path / "ours.kdump", tmp_path / "theirs.kdump"
    assert main(["convert", str(ref_bookworm.vmcore), str(mine), "-f", "kdump", "-l", *ours]) == 0
    r = subprocess.run(["makedumpfile", "-d", level, "-l", str(ref_bookworm.vmcore), str(theirs)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert mine.stat().st_size == theirs.stat().st_size
    assert mine.read_bytes() == theirs.read_bytes()
