"""Return addresses are named like the kernel's %pB; bare addresses in a logged Call Trace are skipped."""

from __future__ import annotations

from kdumpkit.analyze.report import _BARE_ADDRESS, _TRACE_FRAME
from kdumpkit.kernel.stack import symbolize_pc
from kdumpkit.kernel.symbols import SymbolTable

TABLE = SymbolTable([("nmi_panic.cold", 0xFFFFFFFF81000000, "t", None),
                     ("unknown_nmi_error.cold", 0xFFFFFFFF81000020, "t", None),
                     ("end", 0xFFFFFFFF81000100, "t", None)], "test")


def test_a_call_to_panic_that_ends_its_caller_names_the_caller() -> None:
    ret = 0xFFFFFFFF81000020  # the call to panic() is the last instruction of nmi_panic.cold
    sym = symbolize_pc(TABLE, ret, return_address=True)
    assert sym is not None and sym.format() == "nmi_panic.cold+0x20/0x20"
    exact = symbolize_pc(TABLE, ret, return_address=False)  # an interrupted pc is exact
    assert exact is not None and exact.name == "unknown_nmi_error.cold" and exact.offset == 0


def test_unnamed_module_address_in_a_call_trace() -> None:
    assert _BARE_ADDRESS.match(" ? 0xffffffffc0237000") and _BARE_ADDRESS.match("  0xffffffffc0237000")
    assert not _TRACE_FRAME.match(" ? 0xffffffffc0237000")
    assert not _BARE_ADDRESS.match(" do_one_initcall+0x59/0x220")
