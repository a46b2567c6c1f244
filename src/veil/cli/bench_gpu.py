"""``veil bench gpu``: the CUDA-only tests and the quick GPU benchmarks in one run; updates docs/benchmarks.md."""

from __future__ import annotations

import argparse
import shlex
import sys

from veil.bench import gpu, report


def add_parser(programs) -> None:
    """Add ``gpu`` to the ``veil bench`` programs."""
    a = programs.add_parser(
        "gpu", help="GPU readiness: every CUDA-only test and the quick GPU benchmarks (under 10 minutes)",
        description="On a CUDA device: runs every CUDA-only test (pytest -m cuda, from the repository root), the "
                    "quick attention benchmark in bf16 forward and forward + backward, and the flash-attn check, "
                    "then writes a dated section of docs/benchmarks.md naming the device.")
    a.add_argument("--tests", default="tests", help="the test directory (default: tests)")
    a.add_argument("--budget", type=float, default=gpu.BUDGET_S, help="seconds for the whole run (default 600)")
    a.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose section this run replaces")
    a.add_argument("--no-write", action="store_true", help="print the results only")
    a.set_defaults(run=run, parser=a)


def run(args: argparse.Namespace) -> int:
    try:
        result = gpu.run(args.tests, args.budget)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = "veil " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
    text = gpu.section(result, command)
    print(text)
    if not args.no_write:
        report.update_doc(args.output, "gpu", text)
        print(f"replaced the section 'gpu' of {args.output}")
    return 0 if result.tests_ok else 1
