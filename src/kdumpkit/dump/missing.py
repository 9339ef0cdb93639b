"""What each output format can say about missing pages, and the one rule every writer follows.

A dump that stopped early (a killed writer, a file cut short, an interrupted
stream) lacks pages.  They are MISSING, never "excluded": a filter dropping a
page and a dump that never got it mean different things to whoever analyses
the dump.  The rule: **an output says everything its source says about
missing pages — that the dump is incomplete, and which pages are missing —
or it is not written** (one line says why and which formats can carry them).

=============  ==========================  ==========================================
format         "the dump is incomplete"    "these pages are missing"
=============  ==========================  ==========================================
kdump, flat    INCOMPLETE status bit       2nd-bitmap bit set, page descriptor empty
elf            ``e_flags`` bit 0           a PT_LOAD whose data starts at end of file
raw            ``incomplete`` line         ``Missing`` lines in ``IMAGE.memmap``
lkcd           no END record               (cannot)
lime           (cannot)                    (cannot)
=============  ==========================  ==========================================
"""

from __future__ import annotations

from kdumpkit.dump.base import Dump, runs_count
from kdumpkit.errors import UnsupportedError

# format -> (can flag the dump incomplete, can list the missing pages)
RECORDS: dict[str, tuple[bool, bool]] = {
    "kdump": (True, True),
    "flat": (True, True),
    "elf": (True, True),
    "raw": (True, True),
    "lkcd": (True, False),
    "lime": (False, False),
}
CAN_RECORD = ", ".join(f for f, (flag, pages) in RECORDS.items() if flag and pages)


def check_recordable(source: Dump, fmt: str) -> None:
    """Raise when ``fmt`` cannot say what ``source`` says about its missing pages."""
    can_flag, can_list = RECORDS.get(fmt, (True, True))
    if can_flag and can_list:
        return
    missing = runs_count(source.missing_runs())
    if (missing and not can_list) or (source.incomplete and not can_flag):
        what = f"{missing} pages missing" if missing else "which pages are missing is unknown"
        raise UnsupportedError(f"{fmt} cannot mark missing pages and the input is incomplete ({what}); "
                               f"write {CAN_RECORD}, which record them")
