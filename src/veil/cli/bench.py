"""``veil bench attention``: time every attention backend against dense SDPA and update docs/benchmarks.md."""

from __future__ import annotations

import argparse
import shlex
import sys

from veil.bench import attention, report
from veil.cli import bench_lm
from veil.cli.masks import grid_arg


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark programs", description="Benchmark programs (they print ratios "
                       "measured side by side in one run).")
    programs = p.add_subparsers(dest="program", metavar="PROGRAM", required=True)
    bench_lm.add_parser(programs)
    a = programs.add_parser(
        "attention", help="every attention backend against dense SDPA, per mask and size",
        description="Median time, speed-up over dense SDPA without a mask, ideal speed-up (1 / density), "
                    "peak memory and max abs difference from the oracle, for every backend (and 'naive', the "
                    "masked_fill + softmax most model code writes) on each mask at each size.")
    d = attention.Config()
    a.add_argument("--quick", action="store_true", help="lengths 1024 2048, grid 4x16x16, 4 heads, 3 repeats (25 to "
                   "40 s on 2 CPU cores); other options override these")
    a.add_argument("--lengths", type=int, nargs="+", help=f"sequence lengths (default {' '.join(map(str, d.lengths))})")
    a.add_argument("--grids", type=grid_arg, nargs="+", help="video grids TxHxW (default "
                   + " ".join("x".join(map(str, g)) for g in d.grids) + ")")
    a.add_argument("--masks", nargs="+", help="mask expressions; video masks may leave out the grid; bare "
                   "'key_padding' = second half of the keys padded, bare 'tile_window' = quarter-axis tiles, 3-tile "
                   f"window (default: {' '.join(repr(m) for m in d.masks)})")
    a.add_argument("--backends", nargs="+",
                   help="registered backends and/or 'naive' (default: all of them, except flex on CPU)")
    a.add_argument("--dtype", choices=list(attention.DTYPES), help=f"default {d.dtype}")
    a.add_argument("--device", help=f"torch device (default {d.device})")
    a.add_argument("--batch", type=int, help=f"default {d.batch}")
    a.add_argument("--heads", type=int, help=f"default {d.heads}")
    a.add_argument("--head-dim", type=int, help=f"default {d.head_dim}")
    a.add_argument("--backward", action="store_true", default=None, help="time forward + backward")
    a.add_argument("--repeats", type=int, help=f"timed runs per row, median reported (default {d.repeats})")
    a.add_argument("--max-scores-gib", type=float, help="skip 'reference' and 'naive' where their B x H x Q x K "
                   f"scores, at 4 bytes each, would exceed this (default {d.max_scores_gib:g})")
    a.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose section this run replaces "
                   "(default docs/benchmarks.md)")
    a.add_argument("--no-write", action="store_true", help="print the table only")
    a.set_defaults(run=run, parser=a)


def run(args: argparse.Namespace, write: bool = True) -> int:
    keys = ("lengths", "grids", "masks", "backends", "dtype", "device", "batch", "heads", "head_dim", "backward",
            "repeats", "max_scores_gib")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k in keys if (v := getattr(args, k)) is not None}
    cfg = attention.quick(**overrides) if args.quick else attention.Config(**overrides)
    print(report.header(), flush=True)
    rows = attention.run(cfg, on_row=lambda r: print(report.format_row(r), flush=True))
    if write and not args.no_write:
        command = "veil " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
        key, title = ("attention-quick", "attention --quick") if args.quick else ("attention", "attention")
        report.update_doc(args.output, key, report.section(key, title, rows, cfg, command))
        print(f"replaced the section '{title}' of {args.output}")
    return 0

