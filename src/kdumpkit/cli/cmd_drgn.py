"""``kdumpkit drgn DUMP [DUMP…] [-e CODE | SCRIPT [ARGS…]]``: any dump kdumpkit reads, in drgn.

drgn opens ELF and (with libkdumpfile) kdump-compressed files itself; split
sets, LiME, raw, VMware, LKCD … are converted to a temporary ELF first (see
:mod:`kdumpkit.analyze.drgn_bridge`).  With ``-e`` or a script the session is
non-interactive, like ``drgn -c DUMP script.py``; otherwise it is drgn's
console with ``prog`` defined.  ``--json`` (with ``-e`` or a script) captures
what the code prints and reports it with how the dump was opened.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from kdumpkit.errors import UsageError

USAGE_ITEMS = "DUMP [DUMP…] [SCRIPT [ARG…]]"


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-e", "--exec", dest="code", metavar="CODE", help="run CODE (prog is the dump) and exit; "
                   "arguments after the dump(s) become sys.argv[1:]")
    p.add_argument("--vmlinux", "-s", action="append", metavar="FILE",
                   help="debuginfo file: vmlinux, or a module's .ko debug file (repeatable)")
    p.add_argument("--no-default-symbols", action="store_true",
                   help="load only the --vmlinux files (no search of standard paths or debuginfod)")
    p.add_argument("--convert", action="store_true", help="always hand drgn a temporary ELF, even for formats "
                   "it reads itself")
    p.add_argument("--tmpdir", metavar="DIR", help="where a temporary core goes (default: $TMPDIR, /tmp)")
    p.add_argument("--vmcoreinfo", metavar="FILE", help="VMCOREINFO text for a dump without one (or 'scan' / "
                   "'none'); default: the dump's own, else a bounded search of its memory")
    p.add_argument("-q", "--quiet", action="store_true", help="no notes or progress on stderr, only errors")
    p.add_argument("--json", action="store_true",
                   help="with -e or SCRIPT: print a JSON result (how the dump was opened, the code's output)")


def register(sub: Any) -> None:
    p = sub.add_parser("drgn", help="open a dump in drgn (converting formats drgn cannot read)",
                       description="Open DUMP in drgn: interactively, or run -e CODE or SCRIPT with prog defined. "
                       "Several DUMPs are one split set; the first argument that is not a dump is the SCRIPT, and "
                       "everything after it (or after --) is passed to it verbatim.")
    _add_options(p)
    p.add_argument("items", nargs=argparse.REMAINDER, metavar=USAGE_ITEMS,
                   help="the dump file(s), then optionally a drgn script and its arguments")
    p.set_defaults(func=run)


def _option_parser() -> argparse.ArgumentParser:
    """The same options, for those written after DUMP (argparse hands them over unparsed)."""
    p = argparse.ArgumentParser(prog="kdumpkit drgn", usage=f"kdumpkit drgn [options] {USAGE_ITEMS}")
    _add_options(p)
    return p


def _takes_value(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions if a.nargs is None and a.option_strings and not isinstance(
        a, argparse._StoreConstAction | argparse._StoreTrueAction | argparse._HelpAction) for o in a.option_strings}


def partition_argv(items: Sequence[str], takes_value: set[str],
                   is_dump: Callable[[str], bool]) -> tuple[list[str], list[str], list[str]]:
    """``kdumpkit drgn``'s arguments → (option tokens, dump paths, script and its arguments).

    The first positional is the dump; later ones are more pieces of a split set
    while they are dumps.  The first that is not (``*.py``, or anything that is
    not a dump) starts the script part, which is passed on verbatim, options
    and all — as is everything after ``--`` once the dumps are taken.
    """
    opts: list[str] = []
    dumps: list[str] = []
    i = 0
    while i < len(items):
        t = items[i]
        if t == "--":
            rest = list(items[i + 1:])
            if not dumps and rest:
                dumps.append(rest.pop(0))
            while rest and is_dump(rest[0]):
                dumps.append(rest.pop(0))
            return opts, dumps, rest
        if t.startswith("-") and t != "-":
            opts.append(t)
            if t in takes_value and i + 1 < len(items):
                opts.append(items[i + 1])
                i += 1
        elif not dumps or is_dump(t):
            dumps.append(t)
        else:
            return opts, dumps, list(items[i:])
        i += 1
    return opts, dumps, []


class _DropOwnNotes(logging.Filter):
    """drgn's "missing debugging symbols" warning: kdumpkit says it with the way out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("missing debugging symbols")


def _drgn_logging(quiet: bool) -> None:
    logger = logging.getLogger("drgn")
    if getattr(logger, "_kdumpkit_handler", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("drgn: %(message)s"))
    handler.addFilter(_DropOwnNotes())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger._kdumpkit_handler = True  # type: ignore[attr-defined]


def _exit_code(err: BaseException | None) -> int:
    """The exit status user code asked for (sys.exit), 1 for an exception, 0 when it just ended."""
    if err is None:
        return 0
    if isinstance(err, SystemExit):
        if err.code is None:
            return 0
        if isinstance(err.code, int):
            return err.code
        print(err.code, file=sys.stderr)
        return 1
    traceback.print_exception(type(err), err, _user_frames(err.__traceback__))
    return 1


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the user's code on: kdumpkit's and runpy's frames above it say nothing."""
    import os
    import runpy

    import kdumpkit

    ours = (os.path.dirname(os.path.abspath(kdumpkit.__file__)), os.path.abspath(runpy.__file__))

    def skip(filename: str) -> bool:
        return filename.startswith("<frozen runpy") or os.path.abspath(filename).startswith(ours)

    t = tb
    while t is not None and skip(t.tb_frame.f_code.co_filename):
        t = t.tb_next
    return t if t is not None else tb


def run(args: argparse.Namespace) -> int:
    from kdumpkit.analyze.drgn_bridge import (
        capture_stdout,
        import_drgn,
        interact,
        looks_like_dump,
        open_in_drgn,
        run_code,
        run_script,
    )
    from kdumpkit.cli.progress import print_json, progress_reporter

    parser = _option_parser()
    opts, dumps, script = partition_argv(args.items, _takes_value(parser), looks_like_dump)
    args.vmlinux = list(args.vmlinux or [])
    parser.parse_args(opts, namespace=args)  # options written after DUMP; --vmlinux appends
    if not dumps:
        raise UsageError("no dump given (kdumpkit drgn DUMP [-e CODE | SCRIPT [ARG…]])")
    code: str | None = args.code
    interactive = code is None and not script
    if interactive and not sys.stdin.isatty():
        raise UsageError("standard input is not a terminal: give -e CODE or a SCRIPT to run "
                         "(e.g. kdumpkit drgn DUMP -e 'print(prog.platform)')")
    if interactive and args.json:
        raise UsageError("--json needs -e CODE or a SCRIPT")
    import_drgn()  # before any conversion: a clear error when drgn is missing
    _drgn_logging(args.quiet)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"kdumpkit: {msg}", file=sys.stderr, flush=True)

    def progress() -> Any:
        return progress_reporter("converting for drgn", quiet=args.quiet)

    with open_in_drgn(dumps, vmlinux=args.vmlinux, tmpdir=args.tmpdir, force_convert=args.convert,
                      vmcoreinfo=args.vmcoreinfo, default_symbols=not args.no_default_symbols,
                      progress=progress, log=log) as session:
        if interactive:
            interact(session)
            return 0
        body: Callable[[], None]
        if code is not None:
            def body() -> None:
                run_code(session, code, script)
        else:
            def body() -> None:
                run_script(session, script[0], script[1:])
        if args.json:
            out, err = capture_stdout(body)
            rc = _exit_code(err)
            print_json({**session.to_json(), "exit_code": rc, "stdout": out,
                        "error": None if err is None or isinstance(err, SystemExit) else repr(err)})
            return rc
        err = None
        try:
            body()
        except (Exception, SystemExit) as e:
            if isinstance(e, UsageError):
                raise
            err = e
        finally:
            sys.stdout.flush()
        return _exit_code(err)
