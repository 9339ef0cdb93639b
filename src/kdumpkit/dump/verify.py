"""Structural checks of a dump (``kdumpkit verify``).

Opening a dump already validates its headers.  Here every dumped page is read
(and so decompressed), the page sets are checked against each other, and a
format may add its own checks through an optional ``verify_structure()``
method returning a list of problems (e.g. bitmaps vs descriptors).  An
incomplete dump is never OK: its missing pages are counted and named as a
problem (they are not "excluded", whatever the format's bitmaps suggest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdumpkit.dump.base import Dump, runs_count
from kdumpkit.dump.writer import Progress
from kdumpkit.errors import DumpError

MAX_LISTED = 20


@dataclass
class VerifyReport:
    path: str
    format: str
    pages_checked: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    warnings: list[str] = field(default_factory=list)
    incomplete: bool = False
    missing_pages: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, msg: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(msg)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "ok": self.ok, "pages_checked": self.pages_checked,
                "problem_count": self.problem_count, "problems": self.problems, "warnings": self.warnings,
                "incomplete": self.incomplete, "missing_pages": self.missing_pages}


def verify_dump(dump: Dump, progress: Progress | None = None, batch: int = 256) -> VerifyReport:
    rep = VerifyReport(dump.path, dump.format_name)
    extra = getattr(dump, "verify_structure", None)
    if extra is not None:
        for problem in extra():
            rep.add(problem)
    ram, dumped = dump.ram_runs(), dump.dumped_runs()
    ri = 0
    for s, e in dumped:
        while ri < len(ram) and ram[ri][1] <= s:
            ri += 1
        if ri >= len(ram) or not (ram[ri][0] <= s and e <= ram[ri][1]):
            rep.add(f"dumped pages {s:#x}-{e - 1:#x} are not inside RAM")
    _check_missing(dump, rep)
    if dump.vmcoreinfo_raw() is None:
        rep.warnings.append("no VMCOREINFO note (analysis needs --vmcoreinfo or a vmlinux)")
    total = runs_count(dumped)
    ps = dump.page_size
    for s, e in dumped:
        for pfn in range(s, e, batch):
            n = min(batch, e - pfn)
            try:
                data = dump._read_dumped(pfn, n)
                if len(data) != n * ps:
                    rep.add(f"pfn {pfn:#x}: read {len(data)} bytes for {n} pages")
            except DumpError:
                for q in range(pfn, pfn + n):  # find the bad page(s)
                    try:
                        dump._read_dumped(q, 1)
                    except DumpError as err:
                        rep.add(f"pfn {q:#x}: {err}")
            rep.pages_checked += n
            if progress:
                progress(rep.pages_checked, total)
    return rep


def _check_missing(dump: Dump, rep: VerifyReport) -> None:
    """Missing pages (or an incomplete flag) are a problem, named with their count and where they start."""
    missing = dump.missing_runs()
    rep.missing_pages = runs_count(missing)
    rep.incomplete = dump.incomplete or bool(missing)
    ps = dump.page_size
    if missing:
        where = ", ".join(f"{s * ps:#x}-{e * ps - 1:#x}" for s, e in missing[:3]) + (" …" if len(missing) > 3 else "")
        rep.add(f"{rep.missing_pages} pages are missing (the dump is incomplete): {where}")
    elif dump.incomplete:
        rep.add("the dump is flagged incomplete (which pages are missing is unknown)")
