"""``kdumpkit`` entry point.

Each sub-command lives in its own ``cli/cmd_<name>.py`` module exposing
``register(subparsers)``; the module sets ``func`` on its parser.  Only this
module turns :class:`kdumpkit.errors.KdumpkitError` into a one-line message
and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kdumpkit import __version__
from kdumpkit.errors import KdumpkitError


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command``, only that sub-command's module is imported.

    Start-up matters (``kdumpkit save`` is what a capture kernel runs; ``dmesg``
    and ``info`` are run by hand and by scripts): importing all of ``cli/``
    pulls in NumPy and most of the package, so a run that names its
    sub-command loads just that one.  Names that are not a module of their
    own (``unload``), and ``--help`` without a command, load them all.
    """
    parser = argparse.ArgumentParser(prog="kdumpkit", description="Linux kernel crash dumps: capture, convert, analyse.")
    parser.add_argument("--version", action="version", version=f"kdumpkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command:
        name = f"kdumpkit.cli.cmd_{command.replace('-', '_')}"
        try:
            importlib.import_module(name).register(sub)
            return parser
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but lacks something: that is its error to report
                raise
    import pkgutil

    import kdumpkit.cli as pkg

    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("cmd_")):
        importlib.import_module(f"kdumpkit.cli.{mod}").register(sub)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names (its first word), if it names one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first and first.replace("-", "_").isidentifier() else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        return int(rc or 0)
    except KdumpkitError as e:
        print(f"kdumpkit: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kdumpkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
