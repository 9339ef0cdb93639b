"""What every writer shares: its result and its progress callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# progress(pages_done, pages_total)
Progress = Callable[[int, int], None]


@dataclass
class WriteStats:
    """Counts a writer reports; the manifest and ``convert`` show them."""

    format: str
    pages_written: int = 0
    zero_pages: int = 0
    excluded_pages: int = 0
    bytes_written: int = 0
    compression: str = "none"
    extra: dict[str, object] = field(default_factory=dict)
