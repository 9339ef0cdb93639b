"""Format detection: an explicit, ordered probe list.

The file layer is chosen first (a makedumpfile flattened stream is read in
place through ``FlattenedFile``), then each format's cheap ``probe`` is asked
in order; signatures come before heuristics, and ``raw`` (no signature, only a
memory map beside the image) comes last.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from kdumpkit.dump.base import Dump
from kdumpkit.dump.fileio import ByteSource, MappedFile
from kdumpkit.errors import DumpError, NotADumpError, UsageError

# (format name, module, class) in probe order.
PROBES: list[tuple[str, str, str]] = [
    ("kdump", "kdumpkit.dump.kdump", "KdumpFile"),
    ("lkcd", "kdumpkit.dump.lkcd", "LkcdDump"),
    ("avml", "kdumpkit.dump.avml", "AvmlDump"),
    ("vmware", "kdumpkit.dump.vmware", "VmssDump"),
    ("qemu", "kdumpkit.dump.qemu", "QemuElfDump"),
    ("elf", "kdumpkit.dump.elf", "ElfDump"),
    ("lime", "kdumpkit.dump.lime", "LimeDump"),
    ("raw", "kdumpkit.dump.raw", "RawDump"),
]
FORMATS = [name for name, _, _ in PROBES]


def _reader(name: str) -> Any:
    for fmt, mod, cls in PROBES:
        if fmt == name:
            return getattr(importlib.import_module(mod), cls)
    raise UsageError(f"unknown dump format {name!r} (known: {', '.join(FORMATS)})")


def open_source(path: str, *, use_mmap: bool = True) -> ByteSource:
    """The file layer for ``path``: the file itself, or its flattened stream read in place.

    ``use_mmap=False`` reads with ``pread``: for readers that copy every page
    anyway (compression workers), it keeps their memory flat.
    """
    src: ByteSource = MappedFile(path, use_mmap=use_mmap)
    try:
        from kdumpkit.dump import flattened
    except ImportError:
        return src
    try:
        if flattened.is_flattened(src):
            return flattened.FlattenedFile(src)
    except DumpError:
        src.close()
        raise
    return src


def detect_format(src: ByteSource) -> str:
    for name, _, _ in PROBES:
        try:
            if _reader(name).probe(src):
                return name
        except ImportError:
            continue
    raise NotADumpError(f"{src.name}: no known dump format ({', '.join(FORMATS)}) recognises it")


def open_dump(path: str | Sequence[str], *, format: str | None = None, use_mmap: bool = True,
              **options: Any) -> Dump:
    """Open any dump kdumpkit reads; several paths are one split set."""
    if not isinstance(path, str):
        paths = list(path)
        if len(paths) == 1:
            return open_dump(paths[0], format=format, **options)
        from kdumpkit.dump.split import SplitDump

        return SplitDump.open(paths)
    src = open_source(path, use_mmap=use_mmap)
    try:
        name = format or detect_format(src)
        reader = _reader(name)
        if format and not reader.probe(src) and name != "raw":
            raise NotADumpError(f"{path}: not a {name} dump")
        dump: Dump = reader(src, **options)
    except BaseException:
        src.close()
        raise
    if not isinstance(src, MappedFile):
        dump.path = path
    return dump
