"""Find a Debian mirror in the host's own apt sources.

The lab fetches kernels of other Debian releases without touching the host's
apt state, but it must not guess a mirror: a machine may only reach its
configured (possibly internal) mirror.  So the archive URL is read from
``/etc/apt/sources.list`` and ``/etc/apt/sources.list.d/*.{list,sources}``
and only the suite is substituted.  ``$KDUMPKIT_DEBIAN_MIRROR`` overrides it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import LabError

#: Debian suites the lab knows, with the kernel series they ship.
SUITES: dict[str, str] = {"bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12"}
_KNOWN_CODENAMES = {"buster", "bullseye", "bookworm", "trixie", "forky", "sid", "stable", "oldstable", "testing", "unstable"}


@dataclass(frozen=True)
class SourceEntry:
    """One ``deb`` source: a URI, its suites and components, and options."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Mirrors:
    """The archive and security URLs the host uses, plus the keyring to trust."""

    archive: str
    security: str | None = None
    signed_by: str | None = None

    def sources_list(self, suite: str) -> str:
        """A one-line-format sources.list for ``suite`` (main, updates, security)."""
        opt = f"[signed-by={self.signed_by}] " if self.signed_by else ""
        lines = [f"deb {opt}{self.archive} {suite} main", f"deb {opt}{self.archive} {suite}-updates main"]
        if self.security:
            lines.append(f"deb {opt}{self.security} {suite}-security main")
        return "\n".join(lines) + "\n"


def parse_one_line(text: str) -> list[SourceEntry]:
    """Entries of a classic ``sources.list`` (only ``deb`` lines)."""
    out: list[SourceEntry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        m = re.match(r"^(deb|deb-src)\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m or m.group(1) != "deb":
            continue
        if m.group(2):
            for opt in m.group(2).strip()[1:-1].split():
                if "=" in opt:
                    k, v = opt.split("=", 1)
                    options[k.lower()] = v
        out.append(SourceEntry(m.group(3), (m.group(4),), tuple(m.group(5).split()), options))
    return out


def parse_deb822(text: str) -> list[SourceEntry]:
    """Entries of a deb822 ``*.sources`` file (stanzas with ``Types: deb``)."""
    out: list[SourceEntry] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.lstrip().startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
                continue
            if ":" in raw:
                key, val = raw.split(":", 1)
                key = key.strip().lower()
                fields[key] = val.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        opts = {"signed-by": fields["signed-by"]} if "signed-by" in fields else {}
        for uri in fields.get("uris", "").split():
            out.append(SourceEntry(uri, tuple(fields.get("suites", "").split()),
                                   tuple(fields.get("components", "").split()), opts))
    return out


def host_entries(etc: Path = Path("/etc/apt")) -> list[SourceEntry]:
    """Every ``deb`` entry apt itself would read on this host."""
    entries: list[SourceEntry] = []
    main = etc / "sources.list"
    if main.is_file():
        entries += parse_one_line(main.read_text(errors="replace"))
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for p in sorted(parts.iterdir()):
            if p.suffix == ".list":
                entries += parse_one_line(p.read_text(errors="replace"))
            elif p.suffix == ".sources":
                entries += parse_deb822(p.read_text(errors="replace"))
    return entries


def _base_suite(suite: str) -> str:
    return suite.split("-", 1)[0].split("/", 1)[0]


def derive_mirrors(entries: Iterable[SourceEntry]) -> Mirrors:
    """Pick the Debian archive (and security) URL out of the host's entries.

    The archive is the first entry whose suite is a plain Debian codename
    (``bookworm``, not ``bookworm-security``) with a ``main`` component; the
    security URL is the first entry with a ``<codename>-security`` suite.
    """
    archive = security = signed_by = None
    for e in entries:
        if e.uri.startswith(("cdrom:", "file:")):
            continue
        for suite in e.suites:
            base = _base_suite(suite)
            if base not in _KNOWN_CODENAMES:
                continue
            if suite == base and "main" in e.components and archive is None:
                archive = e.uri.rstrip("/")
                signed_by = e.options.get("signed-by")
            elif suite.endswith("-security") and security is None:
                security = e.uri.rstrip("/")
    if archive is None:
        raise LabError("no Debian archive in the host's apt sources; set KDUMPKIT_DEBIAN_MIRROR=<archive URL>")
    if signed_by is not None and not signed_by.startswith("/"):
        signed_by = None  # an inline key block: let apt use its default keyrings
    return Mirrors(archive, security, signed_by)


def host_mirrors(etc: Path = Path("/etc/apt")) -> Mirrors:
    """The mirrors to fetch kernels from: ``$KDUMPKIT_DEBIAN_MIRROR`` or the host's."""
    env = os.environ.get("KDUMPKIT_DEBIAN_MIRROR")
    if env:
        return Mirrors(env.rstrip("/"), os.environ.get("KDUMPKIT_DEBIAN_SECURITY_MIRROR") or None)
    return derive_mirrors(host_entries(etc))
