"""Names that travel from a crashed machine to a dump server: hostnames and crash ids.

A crash id (``<hostname>-<YYYY-MM-DD-HH:MM:SS>``) becomes a folder name on
the far side of an ssh key, so ``kdumpkit receive`` must refuse anything
that could be a path or a surprise (``..``, ``/``, a newline, a leading dot
or dash, letters outside ASCII).  The capture side must in turn only ever
produce names the receiver accepts, or a machine with an odd hostname could
never dump over ssh.  Both sides therefore use this one rule: hostnames are
ASCII ``[A-Za-z0-9._-]`` that start and end with a letter or digit and have
no ``..``; :func:`safe_hostname` maps *any* string onto that set and is the
identity on it.
"""

from __future__ import annotations

import re

HOST_MAX = 64  # HOST_NAME_MAX
CRASH_ID_MAX = 128
_NO_DOTDOT = r"(?!.*\.\.)"
#: ``\Z``, not ``$``: ``$`` also matches before a final newline ("abc\n").
HOSTNAME = re.compile(rf"{_NO_DOTDOT}[A-Za-z0-9](?:[A-Za-z0-9._-]{{0,{HOST_MAX - 2}}}[A-Za-z0-9])?\Z")
CRASH_ID = re.compile(rf"{_NO_DOTDOT}[A-Za-z0-9][A-Za-z0-9._:-]{{0,{CRASH_ID_MAX - 1}}}\Z")
#: What :func:`kdumpkit.capture.targets.crash_id_for` appends, plus the ``.N`` of a second folder.
STAMP = r"-\d{4}-\d{2}-\d{2}-\d{2}:\d{2}:\d{2}(?:\.\d+)?"
_DATED_ID = re.compile(rf"(.+?){STAMP}\Z")


def is_hostname(name: str) -> bool:
    return HOSTNAME.match(name) is not None


def is_crash_id(crash_id: str) -> bool:
    return CRASH_ID.match(crash_id) is not None


def safe_hostname(name: str) -> str:
    """``name`` mapped onto :data:`HOSTNAME` ("" when nothing is left).

    Labels with non-ASCII letters take their IDNA form (``café`` →
    ``xn--caf-dma``) rather than losing the letters, so two such hosts keep
    two names; empty labels (``a..b``, a leading dot) are dropped; any other
    character becomes ``_``.  A name that already matches comes back as is.
    """
    labels = []
    for label in name.split("."):
        if not label:
            continue
        if not label.isascii():
            label = "xn--" + label.lower().encode("punycode").decode("ascii")
        labels.append(re.sub(r"[^A-Za-z0-9_-]", "_", label))
    safe = ".".join(labels)[:HOST_MAX]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+\Z", "", safe)


def host_of(crash_id: str) -> str | None:
    """The hostname a dated crash id names (None for any other id): whose folders retention may touch."""
    m = _DATED_ID.match(crash_id)
    return m.group(1) if m and is_hostname(m.group(1)) else None


def host_folder(host: str) -> re.Pattern[str]:
    """Folder names of ``host``'s crashes (``web-…`` is not ``web-1-…``: a date must follow)."""
    return re.compile(rf"{re.escape(host)}{STAMP}\Z")
