"""Open any dump kdumpkit reads in drgn (``kdumpkit drgn``).

drgn reads ELF cores itself, and kdump-compressed files (makedumpfile's
flattened streams too, with a recent libkdumpfile) when it was built with
libkdumpfile.  Everything else kdumpkit reads — split sets, LiME, AVML, raw
images, VMware checkpoints, LKCD, ELF32 copies of a 64-bit kernel — is written
to a temporary ELF first: zero pages left out, mode 0600, in a private
directory under ``$TMPDIR`` (or ``tmpdir``), unlinked as soon as drgn holds it
open and removed with its directory on exit whatever happens.

The choice is :func:`plan_open`, a pure function of what the dump is and what
the installed drgn can do; when drgn refuses a file we expected it to read
(an older libkdumpfile, say), :func:`open_in_drgn` converts after all.  A
VMCOREINFO drgn cannot find in the file itself (``--vmcoreinfo FILE``, or one
kdumpkit found by scanning memory) is handed to ``drgn.Program(vmcoreinfo=)``.

Without a debuginfo vmlinux drgn still knows the platform, VMCOREINFO
(``prog["VMCOREINFO"]``, ``prog["UTS_RELEASE"]``) and every page
(``prog.read``, virtual addresses translated through the page tables); a
session opens anyway and :class:`DebugInfoStatus` says what is missing.
"""

from __future__ import annotations

import io
import os
import runpy
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass, field
from typing import Any

from kdumpkit.dump.base import Dump
from kdumpkit.dump.writer import Progress
from kdumpkit.errors import KdumpkitError, NoSpaceError, OutputError, UsageError, VmcoreinfoMissingError

INSTALL_HINT = "drgn is not installed: pip install drgn (or pip install 'kdumpkit[drgn]')"
TEMP_PREFIX = "kdumpkit-drgn-"
TEMP_NAME = "vmcore.elf"
ELF_HEADER_SLACK = 1 << 20  # ELF header, notes, one page of alignment: generous
NATIVE_ELF = ("elf", "qemu")  # ELF cores drgn reads with libelf
KDUMP_FORMATS = ("kdump",)  # kdump-compressed (and old diskdump): drgn needs libkdumpfile
ARCH_64 = frozenset({"x86_64", "aarch64", "arm64", "ppc64", "ppc64le", "s390x", "riscv64", "loongarch64",
                     "mips64", "sparc64", "alpha", "ia64"})

Log = Callable[[str], None]
ProgressFactory = Callable[[], AbstractContextManager[Progress]]


def _stderr(msg: str) -> None:
    print(f"kdumpkit: {msg}", file=sys.stderr, flush=True)


# -- what the installed drgn can do ----------------------------------------------
@dataclass(frozen=True)
class DrgnCaps:
    """The installed drgn: its version and whether it reads kdump-compressed files."""

    version: str
    libkdumpfile: bool


def import_drgn() -> Any:
    """The drgn module, or a clear error naming the package to install."""
    try:
        import drgn
    except ImportError:
        raise KdumpkitError(INSTALL_HINT) from None
    return drgn


def drgn_caps(drgn: Any | None = None) -> DrgnCaps:
    drgn = drgn if drgn is not None else import_drgn()
    return DrgnCaps(str(getattr(drgn, "__version__", "?")), bool(getattr(drgn, "_with_libkdumpfile", False)))


# -- convert or not ---------------------------------------------------------------
@dataclass(frozen=True)
class DumpFacts:
    """What :func:`plan_open` needs to know about a dump (see :func:`dump_facts`)."""

    format: str                 # kdumpkit's format name (Dump.format_name)
    files: int = 1              # how many files the dump is (a split set is several)
    flattened: bool = False     # a makedumpfile flattened stream (-F), read in place
    elf_class: int = 64         # for ELF cores
    arch: str = "x86_64"
    has_vmcoreinfo: bool = True  # the file itself carries a VMCOREINFO note
    incomplete: bool = False


@dataclass(frozen=True)
class Plan:
    """How drgn gets the dump: the file itself (``native``) or a temporary ELF, and why."""

    native: bool
    reason: str
    fallback: bool = True       # native: convert if drgn refuses the file after all

    @property
    def how(self) -> str:
        return "native" if self.native else "converted"


def plan_open(facts: DumpFacts, caps: DrgnCaps, *, force_convert: bool = False) -> Plan:
    """Whether drgn can open the dump's file as it is; otherwise why it is converted to ELF."""
    fmt = facts.format
    if force_convert:
        return Plan(False, "--convert was given")
    if facts.files > 1 or fmt == "kdump-split":
        return Plan(False, f"a split set is {facts.files} files and drgn opens one")
    if fmt in NATIVE_ELF and not facts.flattened:
        if facts.elf_class == 32 and facts.arch in ARCH_64:
            return Plan(False, f"an ELF32 core of a 64-bit ({facts.arch}) kernel: drgn would take it for a 32-bit one")
        return Plan(True, "an ELF core: drgn reads it natively")
    if fmt in KDUMP_FORMATS or facts.flattened:
        what = "a flattened (makedumpfile -F) dump" if facts.flattened else "a kdump-compressed dump"
        if not caps.libkdumpfile:
            return Plan(False, f"{what} and this drgn ({caps.version}) was built without libkdumpfile")
        how = "read in place by libkdumpfile" if facts.flattened else "read by drgn's libkdumpfile"
        return Plan(True, f"{what}: {how}")
    return Plan(False, f"drgn does not read {fmt} dumps (only ELF and kdump-compressed cores)")


def dump_facts(dump: Dump, files: int = 1) -> DumpFacts:
    """The facts of an open dump (a VMCOREINFO override layer is seen through)."""
    from kdumpkit.dump.override import VmcoreinfoOverride

    inner = dump.inner if isinstance(dump, VmcoreinfoOverride) else dump
    src = getattr(inner, "src", None)
    flattened = False
    if src is not None:
        from kdumpkit.dump.flattened import FlattenedFile

        flattened = isinstance(src, FlattenedFile)
    return DumpFacts(format=inner.format_name, files=files, flattened=flattened,
                     elf_class=int(getattr(inner, "elf_class", 64)), arch=inner.arch,
                     has_vmcoreinfo=inner.vmcoreinfo_raw() is not None, incomplete=bool(inner.incomplete))


# -- the temporary ELF --------------------------------------------------------------
@dataclass
class ConvertedCore:
    path: str
    pages: int
    zero_pages: int
    bytes: int
    seconds: float


def elf_size_bound(dump: Dump) -> int:
    """An upper bound of the ELF :func:`temporary_core` writes (every dumped page, headers)."""
    pages = sum(e - s for s, e in dump.dumped_runs())
    runs = len(dump.ram_runs()) + len(dump.dumped_runs())
    notes = sum(len(n.desc) + len(n.name) + 16 for n in dump.notes())
    return pages * dump.page_size + runs * 64 + notes + ELF_HEADER_SLACK


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def temp_base(tmpdir: str | None = None) -> str:
    """Where temporary cores go: ``tmpdir``, else ``$TMPDIR``, else the system default."""
    return tmpdir if tmpdir else tempfile.gettempdir()


def _human(n: int) -> str:
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{n} B"


@contextmanager
def temporary_core(dump: Dump, *, tmpdir: str | None = None, progress: ProgressFactory | None = None,
                   free: Callable[[str], int] = free_bytes) -> Iterator[ConvertedCore]:
    """Write ``dump`` as an ELF core (zero pages excluded) in a private directory, removed on exit.

    ``progress`` makes a context manager yielding a progress callback, entered
    only while pages are written (a terminal's progress bar is gone before the
    drgn session starts).
    """
    from kdumpkit.dump.convert import convert

    base = temp_base(tmpdir)
    if not os.path.isdir(base):
        raise OutputError(f"temporary directory {base} does not exist (use --tmpdir DIR)")
    need = elf_size_bound(dump)
    try:
        have = free(base)
    except OSError as e:
        raise OutputError(f"cannot check free space in {base}: {e.strerror}") from None
    if have < need:
        raise NoSpaceError(f"converting {dump.path} for drgn needs up to {_human(need)} in {base}, only "
                           f"{_human(have)} free (use --tmpdir DIR on a larger file system)")
    try:
        d = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=base)  # mode 0700
    except OSError as e:
        raise OutputError(f"cannot create a temporary directory in {base}: {e.strerror}") from None
    try:
        out = os.path.join(d, TEMP_NAME)
        t0 = time.monotonic()
        with progress() if progress is not None else nullcontext(None) as cb:
            stats = convert(dump, out, "elf", exclude_zero=True, progress=cb)  # FileSink: 0600
        yield ConvertedCore(out, stats.pages_written, stats.zero_pages, stats.bytes_written,
                            time.monotonic() - t0)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C (so the temporary core is removed), in the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- debuginfo ----------------------------------------------------------------------
@dataclass
class DebugInfoStatus:
    """What drgn found: kernel symbols/types, and which modules still lack them."""

    kernel: bool
    release: str | None = None
    build_id: str | None = None
    missing_modules: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "release": self.release, "build_id": self.build_id,
                "missing_modules": self.missing_modules, "error": self.error}


def load_debuginfo(prog: Any, files: Sequence[str] = (), *, default: bool = True) -> DebugInfoStatus:
    """``prog.load_debug_info(files, default=True)``, never fatal: missing debuginfo is reported, not raised."""
    drgn = import_drgn()
    for f in files:
        if not os.path.isfile(f):
            raise UsageError(f"--vmlinux {f}: no such file")
    error: str | None = None
    try:
        try:
            prog.load_debug_info(list(files), default=default, main=default)
        except TypeError:  # drgn < 0.0.31: no main=
            prog.load_debug_info(list(files), default=default)
    except drgn.MissingDebugInfoError as e:
        error = str(e)
    except (OSError, ValueError) as e:  # an unreadable or non-ELF --vmlinux
        error = str(e)
    status = DebugInfoStatus(kernel=error is None)
    try:
        status.release = prog["UTS_RELEASE"].string_().decode()
    except (KeyError, LookupError, ValueError, getattr(drgn, "FaultError", ValueError)):
        pass
    main_module = getattr(prog, "main_module", None)
    if main_module is not None:  # drgn >= 0.0.31: per-module status
        try:
            mm = main_module()
            status.kernel = not mm.wants_debug_file()
            bid = getattr(mm, "build_id", None)
            status.build_id = bid.hex() if isinstance(bid, bytes) else None
            status.missing_modules = sorted(m.name for m in prog.modules()
                                            if m.name != mm.name and m.wants_debug_file())
        except LookupError:
            pass
    return status


def debuginfo_advice(status: DebugInfoStatus, vmlinux: Sequence[str]) -> list[str]:
    """One-line notes for stderr about missing symbols/types (empty when all is there)."""
    notes: list[str] = []
    if not status.kernel:
        kernel = f"kernel {status.release}" if status.release else "the kernel"
        bid = f" (build ID {status.build_id})" if status.build_id else ""
        if vmlinux:
            notes.append(f"no --vmlinux file matches {kernel}{bid}: no symbols or types; "
                         "memory (prog.read), VMCOREINFO and prog.platform still work")
        else:
            notes.append(f"no debuginfo for {kernel}{bid}: no symbols or types, only memory (prog.read), "
                         "VMCOREINFO (prog['VMCOREINFO'], prog['UTS_RELEASE']) and prog.platform; pass --vmlinux "
                         "FILE (Debian: the linux-image-RELEASE-dbg package) or set DEBUGINFOD_URLS")
    if status.missing_modules:
        shown = ", ".join(status.missing_modules[:5]) + (" …" if len(status.missing_modules) > 5 else "")
        notes.append(f"no debuginfo for {len(status.missing_modules)} module(s) ({shown}); "
                     "add their .ko debug files with --vmlinux")
    return notes


# -- the session --------------------------------------------------------------------
@dataclass
class DrgnSession:
    """A drgn ``Program`` on a dump, and how it got there."""

    prog: Any
    paths: list[str]
    facts: DumpFacts
    plan: Plan
    caps: DrgnCaps
    vmcoreinfo_source: str | None = None     # when drgn was handed VMCOREINFO the file lacks
    converted: ConvertedCore | None = None
    debuginfo: DebugInfoStatus | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        c = self.converted
        return {
            "dump": self.paths, "format": self.facts.format, "flattened": self.facts.flattened,
            "opened": "converted" if c else "native", "reason": self.plan.reason,
            "drgn": {"version": self.caps.version, "libkdumpfile": self.caps.libkdumpfile},
            "vmcoreinfo_source": self.vmcoreinfo_source,
            "converted": None if c is None else {"format": "elf", "pages": c.pages, "zero_pages": c.zero_pages,
                                                 "bytes": c.bytes, "seconds": round(c.seconds, 3)},
            "debuginfo": None if self.debuginfo is None else self.debuginfo.to_json(),
        }


def _new_program(drgn: Any, vmcoreinfo: bytes | None) -> Any:
    if vmcoreinfo is None:
        return drgn.Program()
    try:
        return drgn.Program(vmcoreinfo=vmcoreinfo)
    except TypeError:  # drgn < 0.0.27
        raise UsageError("this drgn cannot be given VMCOREINFO (upgrade drgn, or use --convert)") from None


@contextmanager
def open_in_drgn(paths: str | Sequence[str], *, vmlinux: Sequence[str] = (), tmpdir: str | None = None,
                 force_convert: bool = False, vmcoreinfo: str | None = None, load_symbols: bool = True,
                 default_symbols: bool = True, progress: ProgressFactory | None = None,
                 log: Log = _stderr) -> Iterator[DrgnSession]:
    """A :class:`DrgnSession` on the dump at ``paths``; any temporary core is gone when the block exits.

    ``vmcoreinfo`` is a file, ``"scan"`` or ``"none"`` as for ``kdumpkit convert --vmcoreinfo``.
    ``log`` receives one-line notes: what was converted and why, missing debuginfo.
    """
    from kdumpkit.dump import open_dump
    from kdumpkit.dump.override import VmcoreinfoOverride, with_vmcoreinfo

    drgn = import_drgn()
    caps = drgn_caps(drgn)
    plist = [paths] if isinstance(paths, str) else list(paths)
    if not plist:
        raise UsageError("no dump given")
    for f in vmlinux:  # before any conversion
        if not os.path.isfile(f):
            raise UsageError(f"--vmlinux {f}: no such file")
    with _terminate_cleanly(), ExitStack() as stack:
        dump = with_vmcoreinfo(open_dump(plist), vmcoreinfo)
        with dump:  # closed before the session starts: drgn has its own handle
            facts = dump_facts(dump, len(plist))
            extra_vmcoreinfo: bytes | None = None
            vi_source: str | None = None
            if isinstance(dump, VmcoreinfoOverride):
                extra_vmcoreinfo, vi_source = dump.vmcoreinfo_text, dump.vmcoreinfo_source
            elif not facts.has_vmcoreinfo:
                raise VmcoreinfoMissingError(f"{plist[0]} has none and none was found in its memory; drgn cannot "
                                             "tell which kernel it is: pass --vmcoreinfo FILE")
            plan = plan_open(facts, caps, force_convert=force_convert)
            session = DrgnSession(None, plist, facts, plan, caps, vi_source)
            if plan.native:
                prog = _new_program(drgn, extra_vmcoreinfo)
                try:
                    prog.set_core_dump(plist[0])
                    session.prog = prog
                    if facts.flattened:
                        log(f"{plist[0]}: {plan.reason} (if that is slow, --convert writes a temporary ELF "
                            "instead)")
                except Exception as e:  # libkdumpfile errors arrive as bare Exception
                    if not plan.fallback:
                        raise KdumpkitError(f"drgn cannot open {plist[0]}: {e}") from None
                    session.plan = Plan(False, f"drgn {caps.version} refused it ({e})")
            if session.prog is None:
                if facts.incomplete:
                    log(f"{plist[0]} is incomplete: pages it lacks stay missing in the converted core (drgn FaultError)")
                core = stack.enter_context(temporary_core(dump, tmpdir=tmpdir, progress=progress))
                prog = drgn.Program()  # the ELF carries the VMCOREINFO note now
                try:
                    prog.set_core_dump(core.path)
                except Exception as e:
                    raise KdumpkitError(f"drgn cannot open the ELF converted from {plist[0]}: {e}") from None
                os.unlink(core.path)  # drgn holds it open: nothing is left behind even on SIGKILL
                session.prog, session.converted = prog, core
                log(f"{_describe(facts)} {', '.join(plist)}: {session.plan.reason}; converted to a temporary "
                    f"ELF ({core.pages} pages, {_human(core.bytes)}, zero pages left out) in {core.seconds:.1f} s "
                    f"under {temp_base(tmpdir)}, removed on exit")
            if vi_source is not None:
                why = "replacing the dump's own" if facts.has_vmcoreinfo else "the dump carries none"
                log(f"VMCOREINFO from {vi_source} ({why})")
        if load_symbols:
            session.debuginfo = load_debuginfo(session.prog, vmlinux, default=default_symbols)
            for note in debuginfo_advice(session.debuginfo, vmlinux):
                log(note)
        yield session


def _describe(facts: DumpFacts) -> str:
    if facts.files > 1:
        return "split set"
    if facts.flattened:
        return f"flattened {facts.format} dump"
    return f"{facts.format} dump"


# -- running code -------------------------------------------------------------------
def session_globals(session: DrgnSession) -> dict[str, Any]:
    """What drgn's CLI puts in a session's namespace (``prog``, ``drgn``, helpers), plus ``dump_paths``."""
    drgn = import_drgn()
    try:
        from drgn.cli import default_globals

        g: dict[str, Any] = dict(default_globals(session.prog))
    except (ImportError, AttributeError):
        g = {"prog": session.prog, "drgn": drgn, "__name__": "__main__", "__doc__": None}
    g["dump_paths"] = list(session.paths)
    return g


def _with_default_prog(session: DrgnSession) -> None:
    drgn = import_drgn()
    setter = getattr(drgn, "set_default_prog", None)
    if setter is not None:
        setter(session.prog)


def run_code(session: DrgnSession, code: str, argv: Sequence[str] = ()) -> None:
    """``drgn -e CODE``: run ``code`` with ``prog`` and the helpers in scope."""
    _with_default_prog(session)
    g = session_globals(session)
    old = sys.argv
    sys.argv = ["-e", *argv]
    try:
        exec(compile(code, "<-e>", "exec"), g)
    finally:
        sys.argv = old


def run_script(session: DrgnSession, script: str, argv: Sequence[str] = ()) -> None:
    """``drgn -c DUMP script.py ARGS``: run a script as ``__main__`` with ``prog`` defined."""
    if not os.path.isfile(script):
        raise UsageError(f"no such script: {script}")
    _with_default_prog(session)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, init_globals={"prog": session.prog, "dump_paths": list(session.paths)},
                       run_name="__main__")
    finally:
        sys.argv = old_argv
        sys.path[:] = old_path


def capture_stdout(fn: Callable[[], None]) -> tuple[str, BaseException | None]:
    """Run ``fn`` with ``sys.stdout`` captured: (what it printed, the exception it raised)."""
    buf = io.StringIO()
    err: BaseException | None = None
    with redirect_stdout(buf):
        try:
            fn()
        except (Exception, SystemExit) as e:
            err = e
    return buf.getvalue(), err


def banner(session: DrgnSession) -> str:
    how = "converted to a temporary ELF" if session.converted else "opened natively"
    line = f"kdumpkit: {', '.join(session.paths)} ({_describe(session.facts)}, {how}) is `prog`."
    if session.debuginfo is not None and not session.debuginfo.kernel:
        line += " No debuginfo: memory and VMCOREINFO only."
    return line


def interact(session: DrgnSession) -> None:
    """drgn's interactive console on the session (plain ``code.interact`` with an old drgn)."""
    _with_default_prog(session)
    try:
        from drgn.cli import run_interactive, version_header
    except ImportError:
        import code

        code.interact(banner=banner(session), local=session_globals(session), exitmsg="")
        return

    def add_banner(default: str) -> str:
        return f"{version_header()}\n{banner(session)}\n{default}"

    def add_globals(g: dict[str, Any]) -> dict[str, Any]:
        g["dump_paths"] = list(session.paths)
        return g

    run_interactive(session.prog, banner_func=add_banner, globals_func=add_globals)


# -- command-line positionals -------------------------------------------------------
def looks_like_dump(path: str) -> bool:
    """Whether ``path`` is a file kdumpkit recognises as a dump (cheap probes only)."""
    if path.endswith(".py") or not os.path.isfile(path):
        return False
    from kdumpkit.dump.detect import detect_format, open_source

    try:
        src = open_source(path)
    except KdumpkitError:
        return False
    try:
        detect_format(src)
        return True
    except KdumpkitError:
        return False
    finally:
        src.close()
