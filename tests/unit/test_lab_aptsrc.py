"""Mirror derivation from apt sources text (the host's mirror is never hard-coded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpkit.errors import LabError
from kdumpkit.lab.aptsrc import derive_mirrors, host_entries, parse_deb822, parse_one_line

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.invalid/debian
Suites: bookworm
Components: main
"""

ONE_LINE = """\
# comment
deb-src http://src.invalid/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian/ bookworm main contrib
deb http://mirror.invalid/debian-security bookworm-security main
deb https://vendor.invalid/apt cloud-sdk main
"""


def test_deb822() -> None:
    m = derive_mirrors(parse_deb822(DEB822))
    assert m.archive == "http://mirror.invalid/debian"
    assert m.security == "http://mirror.invalid/debian-security"
    assert m.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_one_line_and_suite_substitution() -> None:
    m = derive_mirrors(parse_one_line(ONE_LINE))
    assert (m.archive, m.security, m.signed_by) == ("http://mirror.invalid/debian",
                                                    "http://mirror.invalid/debian-security", "/k.gpg")
    text = m.sources_list("trixie")
    assert "deb [signed-by=/k.gpg] http://mirror.invalid/debian trixie main" in text
    assert "trixie-updates main" in text
    assert "http://mirror.invalid/debian-security trixie-security main" in text
    assert "bookworm" not in text


def test_vendor_repos_and_disabled_stanzas_are_ignored() -> None:
    with pytest.raises(LabError, match="KDUMPKIT_DEBIAN_MIRROR"):
        derive_mirrors(parse_one_line("deb https://vendor.invalid/apt cloud-sdk main\n"))
    assert parse_deb822("Types: deb\nEnabled: no\nURIs: http://x.invalid/debian\nSuites: bookworm\nComponents: main\n") == []


def test_host_entries_reads_list_and_sources_only(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "old.list.disabled").write_text("deb http://no.invalid/debian bookworm main\n")
    m = derive_mirrors(host_entries(tmp_path))
    assert m.archive == "http://mirror.invalid/debian"


def test_environment_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kdumpkit.lab.aptsrc import host_mirrors

    monkeypatch.setenv("KDUMPKIT_DEBIAN_MIRROR", "http://override.invalid/debian/")
    assert host_mirrors(tmp_path).archive == "http://override.invalid/debian"
