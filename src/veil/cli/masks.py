"""``veil masks show EXPR``: draw a mask expression as text (and optionally a PNG) with its density."""

from __future__ import annotations

import argparse

from veil.masks import parse
from veil.masks.render import to_ascii, to_png


def add_parser(sub) -> None:
    p = sub.add_parser("masks", help="inspect mask expressions", description="Inspect mask expressions.")
    show = p.add_subparsers(dest="action", metavar="ACTION", required=True).add_parser(
        "show", help="draw a mask and print its density",
        description="Draw a mask expression as text: rows are queries, columns keys; '#' attended, '.' masked. "
                    "Past --size cells per axis a cell covers several pairs: '#' all attended, '+' some, '.' none.")
    show.add_argument("expr", metavar="EXPR", help="mask expression, e.g. 'causal & sliding_window(4)'")
    show.add_argument("--q-len", type=int, help="query length (default: T*H*W of --grid)")
    show.add_argument("--kv-len", type=int, help="key length (default: --q-len)")
    show.add_argument("--grid", type=grid_arg, help="video grid T,H,W; video masks may then leave out their grid")
    show.add_argument("--batch", type=int, default=1, help="batch size, for padding masks (default 1)")
    show.add_argument("--sample", type=int, default=0, help="which sample of the batch to draw (default 0)")
    show.add_argument("--size", type=int, default=64, help="most text cells per axis (default 64)")
    show.add_argument("-o", "--output", help="also write a PNG: 1 pixel per pair up to 2048 per axis, else grey cells")
    show.set_defaults(run=run, parser=show)


def run(args: argparse.Namespace) -> int:
    mask = parse(args.expr, grid=args.grid)
    if args.q_len is None and args.grid is None:
        raise ValueError("--q-len: required unless --grid is given")
    q_len = args.q_len if args.q_len is not None else args.grid[0] * args.grid[1] * args.grid[2]
    kv_len = q_len if args.kv_len is None else args.kv_len
    where = dict(batch=args.batch, sample=args.sample)
    print(f"{mask!r}  Q={q_len} K={kv_len}" + (f"  sample {args.sample} of {args.batch}" if args.batch > 1 else ""))
    print(to_ascii(mask, q_len, kv_len, max_size=args.size, **where))
    over = f" over all {args.batch} samples" if args.batch > 1 else ""
    print(f"density {mask.density(args.batch, 1, q_len, kv_len):.4f}{over}")
    if args.output:
        w, h = to_png(mask, args.output, q_len, kv_len, **where)
        print(f"wrote {args.output} ({w}x{h} px)")
    return 0


def grid_arg(text: str) -> tuple[int, int, int]:
    """``"4,16,16"`` or ``"4x16x16"`` -> ``(4, 16, 16)``."""
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected a grid T,H,W or TxHxW of three positive ints, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]
