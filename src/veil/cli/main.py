"""``veil``: the command-line entry point. Each subcommand lives in its own module and calls the library."""

from __future__ import annotations

import argparse
import sys

from veil import __version__
from veil.cli import bench, demo, evaluate, generate, masks, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veil",
        description="veil: one exact, composable language of attention masks, lowered to the fastest correct "
                    "kernel.",
    )
    parser.add_argument("--version", action="version", version=f"veil {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (masks, bench, train, generate, evaluate, demo):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``veil`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Bad input (a ValueError or TypeError raised by the library for the arguments given, or an OSError such as a
    missing or unreadable file) ends with one line ``veil: error: ...`` on stderr and status 2, like any argparse
    usage error.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra:
        # key=value overrides may follow options too (argparse takes one run of positionals only)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
    try:
        return args.run(args) or 0
    except (ValueError, TypeError) as e:
        args.parser.error(str(e))  # exits with status 2
        return 2
    except OSError as e:  # a file named on the command line that cannot be read or written
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        args.parser.error(f"{e.strerror or e}{where}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
