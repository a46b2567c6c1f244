"""``veil demo``: text to video with the shipped checkpoint (``--masks``: mask pictures and the attention bench)."""

from __future__ import annotations

import argparse
import pathlib
import time

import torch

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

PROMPTS = [
    "a red circle moving right", "a green square moving down", "a yellow triangle moving left",
    "a white circle staying still", "a blue square moving up", "a red triangle moving down",
    "a blue triangle moving right", "a green circle moving up",  # held out in the shipped models' training
]


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="text to video with the shipped checkpoint (--masks: mask pictures, bench)",
                       description="Generate a GIF grid for a few prompts with the shipped model (tiny-t2v-16f "
                                   "and its low-noise expert), "
                                   "write each GIF to --out and print prompt-following accuracy. --masks instead "
                                   "prints a few masks, writes them as PNGs and runs the quick attention "
                                   "benchmark (without rewriting docs/benchmarks.md).")
    p.add_argument("--out", default="out", help="output folder (default ./out)")
    p.add_argument("--masks", action="store_true", help="the mask pictures and quick attention benchmark")
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)  # tests: another checkpoint
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: small cases
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small tensors run fastest on one thread of a busy CPU)")
    p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
    return run_masks(args) if args.masks else run_t2v(args)


def run_t2v(args: argparse.Namespace) -> int:
    from veil.pipelines import TextToVideo, save_grid, save_video
    from veil.pipelines.evaluate import score_videos, trained_world, truth_of

    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    pipe = TextToVideo.from_checkpoint(args.checkpoint)
    prompts = PROMPTS[:2] if args.tiny else PROMPTS
    t0 = time.perf_counter()
    videos = pipe(prompts, steps=2 if args.tiny else None, seed=0)
    seconds = time.perf_counter() - t0
    wrap = trained_world(pipe).get("edges") == "wrap"  # objects cross the frame edges
    scores = score_videos(videos, [truth_of(p) for p in prompts], wrap=wrap)
    for p, v, row in zip(prompts, videos, scores["rows"]):
        path = save_video(v, out / (p.replace(" ", "_") + ".gif"))
        mark = "ok" if row["all"] else "recovered " + " ".join(str(g) for g in row["got"])
        print(f"{path}: {p!r} -> {mark}")
    grid = save_grid(videos, out / "grid.gif", prompts)
    print(f"grid: {grid} ({len(prompts)} videos in {seconds:.1f} s)")
    print("prompt-following (analyzer): " + ", ".join(f"{k} {100 * scores[k]:.0f}%"
                                                       for k in ("colour", "shape", "motion", "all")))
    return 0


def run_masks(args: argparse.Namespace) -> int:
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
