"""The one exception hierarchy of kdumpkit.

Library code raises only these; ``kdumpkit.cli`` turns them into one-line
messages and exit codes.  Each class carries the exit code the CLI uses, so
the mapping lives with the error and not in a table somewhere else.
"""

from __future__ import annotations


class KdumpkitError(Exception):
    """Base of every error kdumpkit raises on purpose."""

    exit_code = 1


class UsageError(KdumpkitError):
    """The caller asked for something that does not make sense."""

    exit_code = 2


class DumpError(KdumpkitError):
    """Something is wrong with a dump file."""


class NotADumpError(DumpError):
    """No reader recognises the file."""

    def __str__(self) -> str:
        return f"not a dump: {super().__str__()}"


class TruncatedDumpError(DumpError):
    """The file ends before a structure or page it declares."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(what, offset)
        self.what = what
        self.offset = offset

    def __str__(self) -> str:
        return f"truncated at offset {self.offset}: {self.what}"


class CorruptDumpError(DumpError):
    """A structure has impossible values."""

    def __str__(self) -> str:
        return f"corrupt dump: {super().__str__()}"


class UnsupportedError(DumpError):
    """A valid feature kdumpkit does not handle (yet), e.g. an unknown codec."""

    def __str__(self) -> str:
        return f"unsupported: {super().__str__()}"


class UnsupportedCompressionError(UnsupportedError):
    def __str__(self) -> str:
        return f"unsupported compression: {Exception.__str__(self)}"


class BadDumpError(DumpError):
    """A fact the dump gives about the crashed kernel has a value no kernel has.

    Page filtering indexes ``struct page`` arrays with VMCOREINFO's sizes,
    offsets and bit numbers; a negative offset or a 0-byte ``struct page``
    would otherwise surface as an IndexError deep in NumPy.  ``field`` is
    the VMCOREINFO key (``SIZE(page)``, ``NUMBER(PG_lru)`` …) so the one-line
    message tells the user which line is wrong.
    """

    def __init__(self, field: str, value: object, expected: str) -> None:
        super().__init__(field, value, expected)
        self.field = field
        self.value = value
        self.expected = expected

    def __str__(self) -> str:
        return f"implausible VMCOREINFO {self.field}={self.value} (expected {self.expected})"


class PageError(DumpError):
    """A page cannot be read; subclasses tell why."""

    def __init__(self, pfn: int, msg: str = "") -> None:
        super().__init__(pfn, msg)
        self.pfn = pfn
        self.msg = msg


class PageNotInRAMError(PageError):
    def __str__(self) -> str:
        return f"pfn {self.pfn:#x} is not in RAM (memory hole){': ' + self.msg if self.msg else ''}"


class PageExcludedError(PageError):
    def __str__(self) -> str:
        return f"pfn {self.pfn:#x} was excluded from the dump{': ' + self.msg if self.msg else ''}"


class PageMissingError(PageError):
    """The dump is incomplete and this page was never written."""

    def __str__(self) -> str:
        return f"pfn {self.pfn:#x} is missing (incomplete dump){': ' + self.msg if self.msg else ''}"


class KernelError(KdumpkitError):
    """What the dump says about the kernel is missing or inconsistent."""


class VmcoreinfoMissingError(KernelError):
    def __str__(self) -> str:
        return f"no VMCOREINFO: {super().__str__()}"


class TranslationError(KernelError):
    """A virtual address does not translate."""


class OutputError(KdumpkitError):
    """Writing an output failed (disk full, target unreachable …)."""


class NoSpaceError(OutputError):
    def __str__(self) -> str:
        return f"no space left: {super().__str__()}"


class LabError(KdumpkitError):
    """A lab run (QEMU, kernel fetch, guest image) failed."""

    def __init__(self, msg: str, console_log: str | None = None) -> None:
        super().__init__(msg)
        self.console_log = console_log

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (console log: {self.console_log})" if self.console_log else base


class ConfigError(KdumpkitError):
    exit_code = 2
