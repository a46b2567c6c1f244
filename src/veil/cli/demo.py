"""``veil demo``: pictures of a few masks (text and PNG) and the quick attention benchmark.

Until the text-to-video demo exists, this is what ``make demo`` shows.
"""

from __future__ import annotations

import argparse
import pathlib

from veil.bench import attention, report
from veil.masks import parse
from veil.masks.render import to_ascii, to_png

# (file name, title, expression, Q, K, grid)
PICTURES = [
    ("causal_kv_cache", "causal, a 4-token step after an 8-token KV cache (queries bottom-right aligned)",
     "causal", 4, 12, None),
    ("sliding_window", "causal & sliding_window(6): each query sees itself and the 5 keys before it",
     "causal & sliding_window(6)", 24, 24, None),
    ("tile_window", "tile_window on a 2x4x8 video grid: tiles of 1x2x2 tokens, a window of 1x1x3 tiles; tokens in "
     "tile order (each tile's 4 tokens contiguous, tiles in raster order)",
     "tile_window(tile=(1, 2, 2), window=(1, 1, 3), order='tile')", 64, 64, (2, 4, 8)),
]


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="pictures of a few masks and the quick attention benchmark",
                       description="Print a few masks as text ('#' attended, '.' masked), write them as PNGs to "
                                   "--out, then run 'veil bench attention --quick' without rewriting "
                                   "docs/benchmarks.md.")
    p.add_argument("--out", default="out", help="folder for the mask PNGs (default ./out)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: one small benchmark case
    p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    for name, title, expr, q_len, kv_len, grid in PICTURES:
        mask = parse(expr, grid=grid)
        path = out / f"{name}.png"
        to_png(mask, path, q_len, kv_len)
        print(f"{title}\n  {mask!r}, Q={q_len} K={kv_len}, density {mask.density(1, 1, q_len, kv_len):.3f}, "
              f"PNG: {path}")
        print(to_ascii(mask, q_len, kv_len) + "\n")
    if args.tiny:
        cfg = attention.quick(lengths=(64,), grids=((1, 2, 2),), masks=("causal",), repeats=1, heads=1)
    else:
        # the kernels a user would run, and the masked_fill code they replace
        cfg = attention.quick(backends=("sdpa", "tiles", "varlen", "naive"))
    print("veil bench attention --quick (not written to docs/benchmarks.md):")
    print(report.LEGEND + "\n")
    print(report.header(), flush=True)
    attention.run(cfg, on_row=lambda r: print(report.format_row(r), flush=True))
    return 0
