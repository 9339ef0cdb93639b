"""VMware suspend (``.vmss``) and snapshot (``.vmsn``) checkpoints, with or without ``.vmem``.

Layout as crash reads it (``vmware_vmss.c``/``vmware_vmss.h``, VMware's own
contribution): a header ``{u32 id, u32 version, u32 numgroups}`` — id
0xbed2bed2 (64-bit), 0xbed3bed3 (partial), 0xbad1bad1/0xbad2bad2 (restored /
no-restore), 0xbed0bed0 (old 32-bit, unsupported) — then ``numgroups``
descriptors ``{char name[64]; u64 position; u64 size}``.  A group is a list
of tagged items ended by a zero tag.  A tag (u16) packs the name length
(bits 15–8), the number of u32 indices (bits 7–6) and the value size
(bits 5–0); value sizes 62/63 mean a (compressed) block: ``u64 nbytes, u64
nbytesinmem, u16 padsize`` then padding, then the bytes.

Group ``memory``: ``regionsCount``, ``regionPageNum[i]`` (first page in the
memory image), ``regionPPN[i]`` (first guest page), ``regionSize[i]``
(pages), and the block ``Memory`` (absent when memory lives in the
companion ``.vmem`` file).  Without regions the image maps guest memory
linearly from 0.  Group ``cpu``: ``cpu:numVCPUs``, per-vCPU ``rax`` …
``r15``, ``rip``, ``eflags``, ``CR64[cpu][n]`` values, or the ``gpregs``
(128 bytes) and ``CR64`` (72 bytes) blocks newer products write.

The registers become one NT_PRSTATUS note per vCPU (x86_64 layout), so a
conversion to ELF (``kdumpkit vmss2core``) carries them like VMware's own
``vmss2core`` does; the page size is 4 KiB (crash's ``VMW_PAGE_SIZE``).
"""

from __future__ import annotations

import os
import struct
from typing import Any

from kdumpkit.dump.base import DumpInfo, Note
from kdumpkit.dump.elfnotes import X86_64_USER_REGS, x86_64_prstatus
from kdumpkit.dump.fileio import ByteSource, MappedFile
from kdumpkit.dump.segments import Segment, SegmentDump
from kdumpkit.errors import CorruptDumpError, DumpError, NotADumpError, UnsupportedError
from kdumpkit.structs import Struct, cstr

MAGIC_OLD = 0xBED0BED0
MAGICS_64 = (0xBED2BED2, 0xBED3BED3, 0xBAD1BAD1, 0xBAD2BAD2)
HEADER = Struct("cptdumpheader", [("id", "I"), ("version", "I"), ("numgroups", "I")])
GROUP = Struct("cptgroupdesc", [("name", "64s"), ("position", "Q"), ("size", "Q")])
TAG_ISBLOCK, TAG_ISBLOCK_COMPRESSED = 0x3F, 0x3E
PAGE_SIZE = 4096
MAX_VCPUS = 4096
# crash's vmssregs64 order, which its reader fills straight from the "gpregs" block
GPREGS = ("rax", "rcx", "rdx", "rbx", "rbp", "rsp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SCALAR_REGS = set(GPREGS) | {"rip"}


def make_tag(name_len: int, nindx: int, valsize: int) -> int:
    """``MAKE_TAG`` of vmware_vmss.h (used by tests to build checkpoints)."""
    return (name_len & 0xFF) << 8 | (nindx & 0x3) << 6 | (valsize & 0x3F)


class _Item:
    __slots__ = ("name", "idx", "value", "block_off", "nbytes", "memsize", "compressed")

    def __init__(self, name: str, idx: tuple[int, ...]) -> None:
        self.name, self.idx = name, idx
        self.value: bytes | None = None
        self.block_off = self.nbytes = self.memsize = 0
        self.compressed = False


def _items(src: ByteSource, start: int, end: int) -> list[_Item]:
    """The tagged items of one group, from ``start`` up to the zero tag (or ``end``)."""
    out: list[_Item] = []
    pos = start
    while True:
        if pos + 2 > min(end, src.size):
            break  # crash too stops at a short group
        tag = int.from_bytes(src.read(pos, 2), "little")
        pos += 2
        if tag == 0:
            break
        nlen, nindx, vsize = tag >> 8 & 0xFF, tag >> 6 & 0x3, tag & 0x3F
        name = src.read(pos, nlen).decode("ascii", "replace")
        pos += nlen
        idx = struct.unpack(f"<{nindx}i", src.read(pos, 4 * nindx)) if nindx else ()
        pos += 4 * nindx
        it = _Item(name, idx)
        if vsize in (TAG_ISBLOCK, TAG_ISBLOCK_COMPRESSED):
            it.nbytes, it.memsize, pad = struct.unpack("<QQH", src.read(pos, 18))
            it.compressed = vsize == TAG_ISBLOCK_COMPRESSED
            it.block_off = pos + 18 + pad
            pos = it.block_off + it.nbytes
            if pos > src.size:
                raise CorruptDumpError(f"VMware block {name!r} at {it.block_off} runs past the file")
        else:
            it.value = src.read(pos, vsize)
            pos += vsize
        out.append(it)
    return out


def companion_vmem(path: str) -> str | None:
    """``X.vmem`` for ``X.vmss``/``X.vmsn`` (crash's rule), if it exists."""
    stem, ext = os.path.splitext(path)
    if ext not in (".vmss", ".vmsn"):
        return None
    vmem = stem + ".vmem"
    return vmem if os.path.exists(vmem) else None


class VmssDump(SegmentDump):
    """A 64-bit VMware checkpoint seen as physical memory, with vCPU registers as NT_PRSTATUS notes."""

    format_name = "vmware"

    @classmethod
    def probe(cls, src: ByteSource) -> bool:
        return src.size >= HEADER.size and int.from_bytes(src.read(0, 4), "little") in (*MAGICS_64, MAGIC_OLD)

    def __init__(self, src: ByteSource, *, vmem: str | None = None) -> None:
        if not self.probe(src):
            raise NotADumpError(f"{src.name}: no VMware checkpoint header")
        self.checkpoint = src
        self.path = src.name
        self.page_size = PAGE_SIZE
        self.arch = "x86_64"
        self.byteorder = "little"
        h = HEADER.unpack(src.read(0, HEADER.size))
        if h.id == MAGIC_OLD:
            raise UnsupportedError("32-bit VMware checkpoints (magic 0xbed0bed0)")
        self.magic = h.id
        if h.numgroups > 4096 or HEADER.size + h.numgroups * GROUP.size > src.size:
            raise CorruptDumpError(f"VMware checkpoint claims {h.numgroups} groups")
        groups = [GROUP.unpack(src.read(HEADER.size + i * GROUP.size, GROUP.size)) for i in range(h.numgroups)]
        self.groups = [cstr(g.name) for g in groups]
        memory: list[_Item] = []
        cpu: list[_Item] = []
        for g in groups:
            name = cstr(g.name)
            if name not in ("memory", "cpu"):
                continue
            if g.position >= src.size:
                raise CorruptDumpError(f"VMware group {name!r} at {g.position} is past the end of the file")
            items = _items(src, g.position, g.position + g.size if g.size else src.size)
            (memory if name == "memory" else cpu).extend(items)
        mem_block = next((it for it in memory if it.name == "Memory" and it.nbytes), None)
        self.separate_vmem: str | None = None
        if mem_block is not None:
            if mem_block.compressed:
                raise UnsupportedError("compressed VMware memory blocks")
            self.src = src
            mem_off, mem_size = mem_block.block_off, mem_block.memsize
        else:
            vmem_path = vmem or companion_vmem(src.name)
            if vmem_path is None:
                raise DumpError(f"{src.name}: memory is not in the checkpoint and no .vmem file is beside it")
            self.src = MappedFile(vmem_path)
            self.separate_vmem = vmem_path
            mem_off, mem_size = 0, self.src.size
        self.regions = self._regions(memory)
        segs: list[Segment]
        if self.regions:
            segs = [Segment(ppn * PAGE_SIZE, mem_off + pagenum * PAGE_SIZE, size * PAGE_SIZE, size * PAGE_SIZE)
                    for pagenum, ppn, size in self.regions]
        else:
            segs = [Segment(0, mem_off, mem_size, mem_size)]
        self.memory_size = mem_size
        self._map_segments(segs)
        self.incomplete = self.truncated or self.magic == 0xBED3BED3
        self.vcpus = self._registers(src, cpu)

    @staticmethod
    def _regions(items: list[_Item]) -> list[tuple[int, int, int]]:
        count = 0
        fields: dict[str, dict[int, int]] = {"regionPageNum": {}, "regionPPN": {}, "regionSize": {}}
        for it in items:
            if it.value is None:
                continue
            if it.name == "regionsCount":
                count = int.from_bytes(it.value[:4], "little")
            elif it.name in fields and it.idx:
                fields[it.name][it.idx[0]] = int.from_bytes(it.value[:4], "little")
        if count > 1024:
            raise CorruptDumpError(f"VMware checkpoint claims {count} memory regions")
        regions = []
        for i in range(count):
            try:
                regions.append((fields["regionPageNum"][i], fields["regionPPN"][i], fields["regionSize"][i]))
            except KeyError:
                raise CorruptDumpError(f"VMware memory region {i} is incomplete") from None
        return regions

    @staticmethod
    def _registers(src: ByteSource, items: list[_Item]) -> list[dict[str, int]]:
        ncpu = 0
        for it in items:
            if it.name == "cpu:numVCPUs" and it.value is not None:
                ncpu = int.from_bytes(it.value[:4], "little")
        if ncpu > MAX_VCPUS:
            raise CorruptDumpError(f"VMware checkpoint claims {ncpu} vCPUs")
        regs: list[dict[str, int]] = [{} for _ in range(ncpu)]
        for it in items:
            if not it.idx or not 0 <= it.idx[0] < ncpu:
                continue
            r = regs[it.idx[0]]
            if it.value is not None:
                v = int.from_bytes(it.value, "little")
                if it.name in SCALAR_REGS:
                    r[it.name] = v
                elif it.name in ("eflags", "EFLAGS"):
                    r["rflags"] = v & 0xFFFFFFFF
                elif it.name == "CR64" and len(it.idx) > 1 and 0 <= it.idx[1] <= 8:
                    r[f"cr{it.idx[1]}"] = v
            elif it.name == "gpregs" and it.nbytes == 8 * len(GPREGS) and not it.compressed:
                r.update(zip(GPREGS, struct.unpack("<16Q", src.read(it.block_off, it.nbytes)), strict=True))
            elif it.name == "CR64" and it.nbytes == 72 and not it.compressed:
                r.update((f"cr{n}", v) for n, v in enumerate(struct.unpack("<9Q", src.read(it.block_off, 72))))
        return regs

    def notes(self) -> list[Note]:
        notes = []
        for i, r in enumerate(self.vcpus):
            notes.append(x86_64_prstatus({n: r.get("rflags" if n == "eflags" else n, 0) for n in X86_64_USER_REGS},
                                         pid=i + 1))
        return notes

    def registers(self) -> list[dict[str, Any]]:
        return [dict(r, cpu=i) for i, r in enumerate(self.vcpus)]

    def info(self) -> DumpInfo:
        return DumpInfo("vmware", {
            "magic": hex(self.magic),
            "groups": len(self.groups),
            "memory": "in the checkpoint" if self.separate_vmem is None else f"companion {self.separate_vmem}",
            "regions": [f"ppn {ppn:#x}+{size:#x} @ page {pn:#x}" for pn, ppn, size in self.regions] or None,
            "vcpus": len(self.vcpus),
            "cpu_registers": [{k: hex(r[k]) for k in ("rip", "rsp", "cr3") if k in r} for r in self.vcpus],
            "vmcoreinfo": "none in VMware checkpoints: use --vmcoreinfo FILE or a memory scan",
        })

    def close(self) -> None:
        self.src.close()
        if self.src is not self.checkpoint:
            self.checkpoint.close()
