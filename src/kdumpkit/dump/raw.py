"""Raw linear memory images with a memory map (what mkdump's mini kernel wrote).

The image holds physical memory from address 0 (holes are zeros, ideally
sparse).  Which parts are RAM comes from a memory map beside it,
``IMAGE.memmap``: one ``start-end : type`` line per range in ``/proc/iomem``
style (hex, inclusive ends); "System RAM" lines are RAM and "Excluded" lines
are RAM whose pages were not kept, "Missing" lines RAM the dump should have
held but never got (their bytes in the image are zeros, not memory), and a
line ``incomplete`` flags the whole image incomplete (the source was, even
where it could not say which pages it lacks).  Without a memory map the whole
image is RAM.  Notes, which a raw image cannot hold, travel in
``IMAGE.notes`` (ELF note records) so VMCOREINFO survives a round trip.

The side files are written like the image: created new (never through a
symlink), mode 0600, refused when they exist unless ``force``, renamed into
place only after every page is down, and removed when writing fails.
"""

from __future__ import annotations

import os
import re

from kdumpkit.dump.base import Dump, DumpInfo, Note, PageState, runs_count, subtract_runs
from kdumpkit.dump.elfnotes import build_notes, parse_notes
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.dump.segments import Segment, SegmentDump
from kdumpkit.dump.sink import Sink, open_dump_output
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import CorruptDumpError, DumpError, OutputError

_LINE = re.compile(r"^\s*([0-9a-fA-F]+)-([0-9a-fA-F]+)\s*:\s*(.+?)\s*$")
RAM, EXCLUDED, MISSING = "System RAM", "Excluded", "Missing"
INCOMPLETE_LINE = "incomplete"
SIDE_FILES = (".memmap", ".notes")


def parse_memmap(text: str) -> list[tuple[int, int, str]]:
    """``(start, end_exclusive, type)`` for each line of an iomem-style map."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#") or line.strip() == INCOMPLETE_LINE:
            continue
        m = _LINE.match(line)
        if not m:
            raise CorruptDumpError(f"memory map line {n}: {line.strip()!r}")
        start, end = int(m.group(1), 16), int(m.group(2), 16) + 1
        if end <= start:
            raise CorruptDumpError(f"memory map line {n}: empty range")
        out.append((start, end, m.group(3)))
    return out


class RawDump(SegmentDump):
    format_name = "raw"

    @classmethod
    def probe(cls, src: ByteSource) -> bool:
        return os.path.exists(src.name + ".memmap")

    def __init__(self, src: ByteSource, *, memmap: str | None = None, page_size: int = 4096,
                 arch: str = "x86_64") -> None:
        self.src = src
        self.path = src.name
        self.page_size = page_size
        self.arch = arch
        self.byteorder = "little"
        mm_path = memmap if memmap is not None else src.name + ".memmap"
        marked_incomplete = False
        if os.path.exists(mm_path):
            try:
                with open(mm_path) as mm:
                    text = mm.read()
            except OSError as e:
                raise DumpError(f"cannot read memory map {mm_path}: {e.strerror}") from None
            ranges = parse_memmap(text)
            marked_incomplete = any(line.strip() == INCOMPLETE_LINE for line in text.splitlines())
            self.memmap_path: str | None = mm_path
        else:
            ranges = [(0, src.size, RAM)]
            self.memmap_path = None
        segs = []
        missing: list[tuple[int, int]] = []  # byte ranges
        for start, end, kind in ranges:
            if kind == RAM:
                segs.append(Segment(start, start, end - start, end - start))
            elif kind == EXCLUDED:
                segs.append(Segment(start, start, 0, end - start))
            elif kind == MISSING:
                missing.append((start, end))

        def remap() -> None:
            ps = self.page_size
            self._map_segments(segs, [(s // ps, -(-e // ps)) for s, e in missing])

        remap()
        self._notes: list[Note] = []
        notes_path = src.name + ".notes"
        if os.path.exists(notes_path):
            with open(notes_path, "rb") as f:
                self._notes = parse_notes(f.read())
            for n in self._notes:
                if n.name == "VMCOREINFO":
                    for line in n.desc.splitlines():
                        if line.startswith(b"PAGESIZE=") and line[9:].isdigit() and int(line[9:]) != page_size:
                            self.page_size = int(line[9:])
                            remap()
        self.incomplete = self.truncated or marked_incomplete or bool(self._missing)

    def notes(self) -> list[Note]:
        return list(self._notes)

    def info(self) -> DumpInfo:
        return DumpInfo("raw", {"memmap": self.memmap_path, "truncated": self.truncated})


def memmap_text(source: Dump) -> str:
    """The ``.memmap`` of ``source``: its RAM as dumped, excluded and missing ranges, and the incomplete mark."""
    ps = source.page_size
    ram, dumped, missing = source.ram_runs(), source.dumped_runs(), source.missing_runs()
    excluded = subtract_runs(subtract_runs(ram, dumped), missing)
    ranges = sorted([(s, e, RAM) for s, e in dumped] + [(s, e, MISSING) for s, e in missing]
                    + [(s, e, EXCLUDED) for s, e in excluded])
    lines = [INCOMPLETE_LINE] if source.incomplete or missing else []
    lines += [f"{s * ps:016x}-{e * ps - 1:016x} : {kind}" for s, e, kind in ranges]
    return "\n".join(lines) + "\n"


def _write_side_files(files: dict[str, bytes]) -> None:
    """Create each file as ``NAME.part`` (new, 0600, no symlink followed), then rename them all into place.

    On any failure every ``.part`` and every file already renamed is removed:
    a half-written pair of side files would describe an image that is not there.
    """
    done: list[str] = []
    try:
        for path, data in files.items():
            fd = open_dump_output(path + ".part", overwrite=True)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for path in files:
            os.replace(path + ".part", path)
            done.append(path)
    except BaseException:
        for path in files:
            for p in (path + ".part", *([path] if path in done else [])):
                try:
                    os.unlink(p)
                except OSError:
                    pass
        raise


def side_file_paths(path: str) -> list[str]:
    return [path + suffix for suffix in SIDE_FILES]


def write_raw(source: Dump, sink: Sink, path: str, *, force: bool = False, progress: Progress | None = None,
              batch: int = 1024) -> WriteStats:
    """Write the linear image to ``sink`` and ``path``.memmap / ``path``.notes beside it.

    Only dumped pages are written (holes, excluded and missing pages stay
    sparse zeros); the memory map keeps RAM, excluded and missing ranges
    apart, so an incomplete source gives an image whose ``info`` says so.
    Existing side files are refused unless ``force`` (then replaced, never
    written through).
    """
    if not force:
        for side in side_file_paths(path):
            if os.path.lexists(side):
                raise OutputError(f"{side} exists (will not overwrite; use --force)")
    ps = source.page_size
    memmap = memmap_text(source).encode()
    dumped = source.dumped_runs()
    total = runs_count(dumped)
    done = 0
    for start, end in dumped:
        for pfn in range(start, end, batch):
            n = min(batch, end - pfn)
            sink.pwrite(pfn * ps, source._read_dumped(pfn, n))
            done += n
            if progress:
                progress(done, total)
    size = source.max_pfn * ps
    if size:
        last = source.page_state(source.max_pfn - 1)
        if last is not PageState.DUMPED:
            sink.pwrite(size - 1, b"\0")
    _write_side_files(dict(zip(side_file_paths(path), (memmap, build_notes(source.notes())), strict=True)))
    missing = runs_count(source.missing_runs())
    return WriteStats("raw", pages_written=total, excluded_pages=runs_count(source.ram_runs()) - total - missing,
                      bytes_written=size, extra={"missing_pages": missing})
