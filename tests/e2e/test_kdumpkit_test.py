"""E2E: ``kdumpkit test`` — one real boot of bookworm with a user configuration (dump level 31, lzo).

The CLI boots the kernel in QEMU, ``kdumpkit load`` arms the capture kernel,
SysRq-c crashes it, kdumpkit's capture initramfs built from *this*
configuration writes the raw disk, the host restores, verifies and reports,
and the success record lands in ``--state-dir``.  About 1–2 minutes with TCG.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump

CONFIG = """\
dump_level = 31
codec = "lzo"

[[target]]
type = "ssh"
destination = "kdump@backup.example.org"
key = "/root/.ssh/kdump_id_ed25519"
"""


def test_kdumpkit_test_bookworm(tmp_path: Path, lab_required: None, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("strip") is None:
        pytest.skip("strip not installed (make apt installs the lab's tools)")
    cfg = tmp_path / "kdumpkit.toml"
    cfg.write_text(CONFIG)
    out, state = tmp_path / "out", tmp_path / "state"
    rc = main(["test", "--kernel", "bookworm", "--config", str(cfg), "--out", str(out), "--state-dir", str(state),
               "--accel", "tcg", "--timeout", "900"])
    text = capsys.readouterr().out
    assert rc == 0, text + (out / "test.json").read_text() if (out / "test.json").exists() else text
    assert "PASS: bookworm " in text and "dump level 31, lzo" in text
    assert "ssh:kdump@backup.example.org:/var/crash) is replaced by the lab's raw disk /dev/vdb" in text

    rec = json.loads((state / "last-test.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert rec["result"] == "pass" and rec["kernel"]["name"] == "bookworm"
    assert rec["kernel"]["release"] == run["release"] and run["release"].endswith("-amd64")
    assert rec["config"] == {"path": str(cfg), "sha256": hashlib.sha256(CONFIG.encode()).hexdigest()}
    assert rec["dump_levels"] == [31] and rec["dump_level"] == 31 and rec["codec"] == rec["dump_codec"] == "lzo"
    assert rec["crashkernel"] == "256M" and rec["verify"]["ok"] and rec["verify"]["pages_checked"] > 0
    assert rec["report"]["release"] == run["release"] and "sysrq" in (rec["report"]["panic_message"] or "").lower()
    assert rec["duration_s"] > 0 and rec["dump_size"] > 0
    assert "kdump_id_ed25519" not in json.dumps(rec)  # no key paths

    vmcore = Path(run["crash_dir"]) / "vmcore"
    assert vmcore.stat().st_size == rec["dump_size"]
    with open_dump(str(vmcore)) as d:
        details = d.info().details
        assert d.format_name == "kdump"
        assert details["dump_level"] == 31 and details["compression"] == "lzo"
        assert not d.incomplete
    manifest = json.loads((Path(run["crash_dir"]) / "manifest.json").read_text())
    assert manifest["dump"]["dump_level"] == 31 and manifest["dump"]["codec"] == "lzo"
