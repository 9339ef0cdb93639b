"""Dump formats: one module per format, each a :class:`~kdumpkit.dump.base.Dump`."""

from kdumpkit.dump.base import Dump, Note, PageState
from kdumpkit.dump.detect import FORMATS, open_dump

__all__ = ["Dump", "Note", "PageState", "FORMATS", "open_dump"]
