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
lime, avml     (cannot)                    (cannot)
=============  ==========================  ==========================================
"""

from __future__ import annotations

import os

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
    "avml": (False, False),
}
CAN_RECORD = ", ".join(f for f, (flag, pages) in RECORDS.items() if flag and pages)  # kdump, flat, elf, raw


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


def flag_file_incomplete(path: str) -> bool:
    """Set the format's own incomplete flag in the dump file ``path``, in place; True when it now reads incomplete.

    For a file whose writer was cut off after its header went out (a
    reassembled stream that lost its end): kdump gets makedumpfile's
    INCOMPLETE status bit (its unwritten page descriptors then read as
    missing), ELF the ``e_flags`` bit makedumpfile -E uses.  False when the
    file does not open or its format has no such flag: such a file must not
    be left to pass for a complete dump.
    """
    from kdumpkit.dump.codecs import FLAG_INCOMPLETE
    from kdumpkit.dump.detect import open_dump
    from kdumpkit.dump.elf import DUMP_ELF_INCOMPLETE, EHDR32, EHDR64, ElfDump
    from kdumpkit.dump.kdump import KdumpFile
    from kdumpkit.errors import KdumpkitError

    try:
        with open_dump(path) as d:
            if d.incomplete:
                return True
            if isinstance(d, KdumpFile) and not d.is_diskdump:
                header = d.header_struct.pack(d.header, status=d.header.status | FLAG_INCOMPLETE)
            elif isinstance(d, ElfDump):
                ehdr_s = (EHDR64 if d.elf_class == 64 else EHDR32).with_byteorder("<" if d.byteorder == "little" else ">")
                header = ehdr_s.pack(ehdr_s.unpack(d.src.read(0, ehdr_s.size)), e_flags=d.e_flags | DUMP_ELF_INCOMPLETE)
            else:
                return False
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.pwrite(fd, header, 0)
        finally:
            os.close(fd)
        with open_dump(path) as d:
            return d.incomplete
    except (KdumpkitError, OSError):
        return False
