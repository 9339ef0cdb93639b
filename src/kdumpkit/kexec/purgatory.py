"""kdumpkit's x86_64 purgatory: 512 bytes between the crashed kernel and the capture kernel.

With ``kexec_load`` the entry point is whatever userspace says; the
crashed kernel's ``relocate_kernel`` jumps to it in 64-bit mode, on the
kexec identity-mapped page tables (all RAM, ``virt == phys``), interrupts
off, with its own GDT and IDT *invalidated* (``machine_kexec`` loads the
segment registers' hidden parts and then sets both tables' limit to 0, so
any segment load would fault into a triple fault).  The capture kernel's
64-bit entry (``Documentation/arch/x86/boot.rst``) wants a GDT with
``__BOOT_CS`` = 0x10 (flat 64-bit code) and ``__BOOT_DS`` = 0x18 (flat
data) loaded, CS/DS/ES/SS set from it, interrupts off, an identity
mapping of the kernel, boot_params, command line and initrd, and
``%rsi`` = the physical address of boot_params.

So this purgatory (source: ``purgatory.S`` beside this module, shown
disassembled in :data:`SOURCE`):

1. computes its GDT's address RIP-relatively and stores it into the GDT
   descriptor (nothing needs relocating when it is loaded elsewhere), then
   ``lgdt`` -- null, null, 0x10 code64, 0x18 data;
2. takes a 256-byte stack inside its own image;
3. far-returns (``lretq``) into CS = 0x10, loads DS/ES/SS = 0x18 and FS/GS = 0;
4. loads ``%rsi`` = boot_params and ``%rbx`` = 0 (boot CPU, as the kernel's
   own kexec_file purgatory does), zeroes the other argument registers and
   jumps to the kernel's 64-bit entry, both read from the parameter block
   at :data:`PARAM_MAGIC_OFFSET` (magic ``kdkpurg1``, then entry, then
   boot_params; see :func:`purgatory_image`).

What it does NOT do, compared with kexec-tools' purgatory (and the
kernel's own kexec_file purgatory):

* **no SHA-256 verification** of the loaded segments: kexec-tools hashes
  every segment at load time and the purgatory re-hashes them before it
  jumps, so a crash kernel corrupted by a stray DMA or a wild write of the
  dying kernel hangs in purgatory instead of running.  Here a corrupted
  capture kernel simply runs (or crashes); the kernel's ``kexec_mark_crashkres``
  protection of the reservation (pages unmapped while loaded) is the only guard;
* **no backup region copy**: kexec-tools' classic loader copies the first
  640 KiB to a backup segment before the capture kernel reuses it, because
  the old kernels could have had data there.  Not needed on 5.13+ where the
  first kernel never allocates the low 1 MiB (``x86/setup: always reserve
  the first 1M of RAM``), and kdumpkit's elfcorehdr leaves the low 1 MiB out
  the way the kernel's own ``elf_header_exclude_ranges`` does;
* no console output ("I'm in purgatory"), no VGA reset, no legacy PIC setup,
  no 32-bit or 16-bit entry (``--entry-32bit``/``--real-mode``), no
  ``kexec --load-preserve-context`` jump back.
"""

from __future__ import annotations

import struct

from kdumpkit.errors import ConfigError

#: The machine code at offset 0 (``purgatory_start`` .. ``jmpq *%rax``), as ``as --64`` assembles purgatory.S.
CODE = bytes.fromhex(
    "fafc488d0577000000488905940000000f01158b000000488d25e2010000488d05050000006a105048cbb8180000008ed8"
    "8ec08ed031c08ee08ee8488b357e000000488b056f00000031db31c931d231ff31edffe0")

#: The GDT at 0x80: null, null, 0x10 = flat 64-bit code (L=1, P, DPL 0, execute/read), 0x18 = flat data (read/write).
GDT = struct.pack("<4Q", 0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)
GDT_OFFSET = 0x80
#: lgdt operand: 2-byte limit at 0xa2, 8-byte base at 0xa4 (written by the code itself at run time).
GDT_DESC_OFFSET = 0xA2
PARAM_MAGIC_OFFSET = 0xB0
PARAM_ENTRY_OFFSET = 0xB8
PARAM_BOOT_PARAMS_OFFSET = 0xC0
MAGIC = b"kdkpurg1"
STACK_OFFSET = 0x100
SIZE = 0x200                  # the stack ends here
BOOT_CS = 0x10
BOOT_DS = 0x18

SOURCE = """\
00: fa                     cli
01: fc                     cld
02: 48 8d 05 77 00 00 00   lea    gdt(%rip),%rax            # 0x80
09: 48 89 05 94 00 00 00   mov    %rax,gdt_base(%rip)       # 0xa4
10: 0f 01 15 8b 00 00 00   lgdt   gdt_desc(%rip)            # 0xa2
17: 48 8d 25 e2 01 00 00   lea    stack_end(%rip),%rsp      # 0x200
1e: 48 8d 05 05 00 00 00   lea    reload_cs(%rip),%rax      # 0x2a
25: 6a 10                  push   $0x10                     # __BOOT_CS
27: 50                     push   %rax
28: 48 cb                  lretq
2a: b8 18 00 00 00         mov    $0x18,%eax                # __BOOT_DS
2f: 8e d8 / 8e c0 / 8e d0  mov    %eax,%ds / %es / %ss
35: 31 c0                  xor    %eax,%eax
37: 8e e0 / 8e e8          mov    %eax,%fs / %gs
3b: 48 8b 35 7e 00 00 00   mov    param_boot_params(%rip),%rsi   # 0xc0
42: 48 8b 05 6f 00 00 00   mov    param_entry(%rip),%rax         # 0xb8
49: 31 db 31 c9 31 d2 31 ff 31 ed   xor %ebx,%ecx,%edx,%edi,%ebp
53: ff e0                  jmp    *%rax
80: gdt (4 quads)   a2: gdt_desc (limit 0x1f, base)   b0: "kdkpurg1", entry, boot_params
100-200: stack
"""


def template() -> bytes:
    """The unpatched image (what ``as``/``objcopy -O binary`` make of purgatory.S)."""
    img = bytearray(SIZE)
    img[:len(CODE)] = CODE
    img[GDT_OFFSET:GDT_OFFSET + len(GDT)] = GDT
    struct.pack_into("<H", img, GDT_DESC_OFFSET, len(GDT) - 1)
    img[PARAM_MAGIC_OFFSET:PARAM_MAGIC_OFFSET + len(MAGIC)] = MAGIC
    return bytes(img)


def purgatory_image(entry: int, boot_params: int) -> bytes:
    """The purgatory with its parameter block patched: jump to ``entry`` with ``%rsi = boot_params``."""
    for name, v in (("entry", entry), ("boot_params", boot_params)):
        if not 0 < v < 1 << 52:
            raise ConfigError(f"purgatory {name} address {v:#x} is not a physical address")
    img = bytearray(template())
    struct.pack_into("<QQ", img, PARAM_ENTRY_OFFSET, entry, boot_params)
    return bytes(img)


def read_params(image: bytes) -> tuple[int, int]:
    """``(entry, boot_params)`` from a patched image (tests, ``--dry-run``)."""
    if image[PARAM_MAGIC_OFFSET:PARAM_MAGIC_OFFSET + len(MAGIC)] != MAGIC:
        raise ConfigError("not a kdumpkit purgatory (no parameter block magic)")
    entry, bp = struct.unpack_from("<QQ", image, PARAM_ENTRY_OFFSET)
    return entry, bp
