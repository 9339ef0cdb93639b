"""The x86 boot protocol header of a bzImage: enough to size and sanity-check a capture kernel.

``kexec_file_load`` parses the image in the kernel; kdumpkit reads the same
``setup_header`` (Documentation/arch/x86/boot.rst) for two reasons: to refuse
early, with a clear message, a file that is not a 64-bit relocatable bzImage
(the kernel would only say ENOEXEC), and to learn ``init_size`` -- the memory
the kernel needs to decompress and run, which is what a crashkernel estimate
must count (kdumpctl's ``get_kernel_size`` reads the same field).  It is also
the first piece the classic ``kexec_load`` mode will need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdumpkit.errors import ConfigError
from kdumpkit.structs import Struct

SETUP_HEADER_OFFSET = 0x1F1
HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
XLF_KERNEL_64 = 0x1
XLF_CAN_BE_LOADED_ABOVE_4G = 0x2
LOADED_HIGH = 0x1

# struct setup_header, from 0x1f1 up to init_size / handover_offset (boot protocol >= 2.10).
SETUP_HEADER = Struct("setup_header", [
    ("setup_sects", "B"), ("root_flags", "H"), ("syssize", "I"), ("ram_size", "H"), ("vid_mode", "H"),
    ("root_dev", "H"), ("boot_flag", "H"), ("jump", "H"), ("header", "4s"), ("version", "H"),
    ("realmode_swtch", "I"), ("start_sys_seg", "H"), ("kernel_version", "H"), ("type_of_loader", "B"),
    ("loadflags", "B"), ("setup_move_size", "H"), ("code32_start", "I"), ("ramdisk_image", "I"),
    ("ramdisk_size", "I"), ("bootsect_kludge", "I"), ("heap_end_ptr", "H"), ("ext_loader_ver", "B"),
    ("ext_loader_type", "B"), ("cmd_line_ptr", "I"), ("initrd_addr_max", "I"), ("kernel_alignment", "I"),
    ("relocatable_kernel", "B"), ("min_alignment", "B"), ("xloadflags", "H"), ("cmdline_size", "I"),
    ("hardware_subarch", "I"), ("hardware_subarch_data", "Q"), ("payload_offset", "I"), ("payload_length", "I"),
    ("setup_data", "Q"), ("pref_address", "Q"), ("init_size", "I"), ("handover_offset", "I"),
])


@dataclass(frozen=True)
class BzImage:
    """What matters of a bzImage for loading it as a crash kernel."""

    version: tuple[int, int]     # boot protocol
    setup_size: int              # bytes of real-mode setup before the protected-mode kernel
    init_size: int               # memory the kernel needs from its load address on
    kernel_alignment: int
    relocatable: bool
    kernel_64: bool              # has the 64-bit entry point (XLF_KERNEL_64)
    above_4g: bool
    cmdline_size: int
    version_string: str

    def check_crash_kernel(self) -> None:
        """Raise ConfigError when this image cannot be a crash kernel on x86_64."""
        if not self.relocatable:
            raise ConfigError("the capture kernel is not relocatable (CONFIG_RELOCATABLE): it cannot run from the "
                              "crashkernel reservation")
        if not self.kernel_64:
            raise ConfigError("the capture kernel has no 64-bit entry point (XLF_KERNEL_64)")


def parse_bzimage(head: bytes, name: str = "kernel") -> BzImage:
    """Parse the first pages of a bzImage (at least 0x1f1 + the setup header; 64 KiB is plenty)."""
    if len(head) < SETUP_HEADER_OFFSET + SETUP_HEADER.size:
        raise ConfigError(f"{name}: too short for a bzImage")
    h = SETUP_HEADER.unpack(head, SETUP_HEADER_OFFSET)
    if h.header != HDRS_MAGIC or h.boot_flag != BOOT_FLAG:
        raise ConfigError(f"{name}: not a bzImage (no 'HdrS' boot header; an ELF vmlinux or a compressed file?)")
    version = (h.version >> 8, h.version & 0xFF)
    if version < (2, 10):
        raise ConfigError(f"{name}: boot protocol {version[0]}.{version[1]} is older than 2.10 (no init_size)")
    setup_sects = h.setup_sects or 4
    kver = ""
    if h.kernel_version:
        off = h.kernel_version + 0x200
        kver = head[off:off + 128].split(b"\0", 1)[0].decode("ascii", "replace")
    return BzImage(version, (setup_sects + 1) * 512, h.init_size, h.kernel_alignment, bool(h.relocatable_kernel),
                   bool(h.xloadflags & XLF_KERNEL_64), bool(h.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G),
                   h.cmdline_size, kver)


def read_bzimage(path: Path | str) -> BzImage:
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    return parse_bzimage(head, str(path))
