"""``veil bench attention`` / ``veil bench models``: run a benchmark program and update docs/benchmarks.md."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from veil.bench import attention, boxes, compiled, models, report
from veil.bench import distributed as dist_bench
from veil.cli import bench_gpu, bench_lm
from veil.cli.masks import grid_arg


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark programs", description="Benchmark programs (they print ratios "
                       "measured side by side in one run).")
    programs = p.add_subparsers(dest="program", metavar="PROGRAM", required=True)
    add_models_parser(programs)
    add_boxes_parser(programs)
    add_distributed_parser(programs)
    bench_lm.add_parser(programs)
    bench_gpu.add_parser(programs)
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
                   "window, bare 'per_head' = half the heads spatial, half temporal "
                   f"(default: {' '.join(repr(m) for m in d.masks)})")
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
    a.add_argument("--clock", choices=list(attention.CLOCKS), help="wall: elapsed time (default); cpu: the "
                   "process's CPU time, which other jobs on a shared machine do not inflate")
    a.add_argument("--threads", type=int, help="torch threads for the run (default: torch's setting)")
    a.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose section this run replaces "
                   "(default docs/benchmarks.md)")
    a.add_argument("--no-write", action="store_true", help="print the table only")
    a.set_defaults(run=run, parser=a)


def run(args: argparse.Namespace, write: bool = True) -> int:
    keys = ("lengths", "grids", "masks", "backends", "dtype", "device", "batch", "heads", "head_dim", "backward",
            "repeats", "max_scores_gib", "clock", "threads")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k in keys if (v := getattr(args, k)) is not None}
    cfg = attention.quick(**overrides) if args.quick else attention.Config(**overrides)
    print(report.header(), flush=True)
    rows = attention.run(cfg, on_row=lambda r: print(report.format_row(r), flush=True))
    if write and not args.no_write:
        command = "veil " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
        key, title = ("attention-quick", "attention --quick") if args.quick else ("attention", "attention")
        if cfg.backward:  # forward and forward + backward runs keep their own sections
            key, title = key + "-backward", title + " --backward"
        report.update_doc(args.output, key, report.section(key, title, rows, cfg, command))
        print(f"replaced the section '{title}' of {args.output}")
    return 0



def add_models_parser(programs) -> None:
    m = programs.add_parser(
        "models", help="veil's Wan and Latte against diffusers', and Wan's sparse patterns against full attention",
        description="On the same weights: outputs checked equal, then forward and forward+backward time (runs "
                    "interleaved) and peak memory, veil against diffusers, for Wan and Latte at two sizes; and "
                    "veil Wan's tile_window / window_3d patterns against full attention at >= 16k video tokens.")
    m.add_argument("--quick", action="store_true", help="tiny sizes, a 4x32x32 latent (1024 tokens) for the sparse "
                   "part, 3 repeats (a CI-sized run: 15 s on 2 quiet cores); other options override these")
    m.add_argument("--families", nargs="+", choices=models.FAMILIES, help="default: wan latte")
    m.add_argument("--modes", nargs="+", choices=models.MODES, help="default: both")
    m.add_argument("--patterns", nargs="*", choices=models.SPARSE_PATTERNS,
                   help="sparse patterns (default: both; none skips the sparse part)")
    m.add_argument("--repeats", type=int, help=f"timed runs per row (default {models.Config().repeats})")
    m.add_argument("--threads", type=int, help="torch intra-op threads for the run (default: torch's)")
    m.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    m.add_argument("--compile", action="store_true", help="instead: compiled veil (fullgraph) against eager and "
                   "compiled diffusers, and a Wan step with 512-token text at 20%% valid (one size per family)")
    m.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose section this run replaces")
    m.add_argument("--no-write", action="store_true", help="print the tables only")
    m.set_defaults(run=run_models, parser=m)


def run_models(args: argparse.Namespace) -> int:
    overrides = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in (("families", args.families), ("modes", args.modes), ("sparse_patterns", args.patterns),
                              ("repeats", args.repeats), ("threads", args.threads)) if v is not None}
    if args.no_memory:
        overrides["memory"] = False
    cfg = models.quick(**overrides) if args.quick else models.Config(**overrides)
    if args.compile:
        return _run_compiled(args, cfg)
    print(report.parity_header(), flush=True)
    first = [True]

    def sparse_row(r: models.SparseRow) -> None:
        if first[0]:
            print("\n" + report.sparse_header(), flush=True)
            first[0] = False
        print(report.format_sparse(r), flush=True)

    parity, sparse = models.run(cfg, lambda r: print(report.format_parity(r), flush=True), sparse_row)
    if not args.no_write:
        command = "veil " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
        key, title = ("models-quick", "models --quick") if args.quick else ("models", "models")
        report.update_doc(args.output, key, report.models_section(key, title, parity, sparse, cfg, command))
        print(f"replaced the section '{title}' of {args.output}")
    return 0


def _run_compiled(args: argparse.Namespace, cfg: models.Config) -> int:
    sizes = compiled.QUICK_SIZES if args.quick else compiled.COMPILE_SIZES
    print(compiled.HEADER, flush=True)
    rows = []
    for row in compiled.compile_rows(cfg, sizes, cfg.families):
        rows.append(row)
        print(compiled.format_row(row), flush=True)
    if not args.no_write:
        command = "veil " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
        key, title = ("models-compile-quick", "models --compile --quick") if args.quick else \
            ("models-compile", "models --compile")
        text = "\n".join([
            f"<!-- veil bench {key} -->", f"## `veil bench {title}`", "", f"Command: `{command}`  ",
            f"Machine: {report.machine(cfg.device, cfg.threads)}, load average {os.getloadavg()[0]:.1f}  ",
            f"fp32; median of {cfg.repeats} interleaved runs after each variant's compile run.", "",
            compiled.__doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0].replace("\n", " ").replace("``", "`")
            .replace(":func:", ""), "",
            compiled.HEADER, *(compiled.format_row(r) for r in rows), f"<!-- /veil bench {key} -->"])
        report.update_doc(args.output, key, text)
        print(f"replaced the section '{title}' of {args.output}")
    return 0


def add_boxes_parser(programs) -> None:
    d = boxes.Config()
    b = programs.add_parser(
        "boxes", help="the best share of window_3d's ideal speed-up that query-box tiling can reach",
        description="Dense SDPA over the whole grid against SDPA batched over query boxes of one frame, each on "
                    "the keys of its queries' window union (already laid out: no gather, no mask), CPU time, side "
                    "by side in one process: the dense work a box-tiled exact window_3d kernel cannot avoid.")
    b.add_argument("--grid", type=grid_arg, help="TxHxW (default " + "x".join(map(str, d.grid)) + ")")
    b.add_argument("--window", type=grid_arg, help="odd window TxHxW (default " + "x".join(map(str, d.window)) + ")")
    b.add_argument("--repeats", type=int, help=f"timed runs per box, best reported (default {d.repeats})")
    b.add_argument("--threads", type=int, help=f"torch threads (default {d.threads})")
    b.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose section this run replaces")
    b.add_argument("--no-write", action="store_true", help="print the table only")
    b.set_defaults(run=run_boxes, parser=b)


def run_boxes(args: argparse.Namespace) -> int:
    overrides = {k: v for k in ("grid", "window", "repeats", "threads") if (v := getattr(args, k)) is not None}
    cfg = boxes.Config(**overrides)
    rows = boxes.run(cfg)
    table = "\n".join([boxes.header(), *(boxes.format_row(r) for r in rows)])
    print(table, flush=True)
    if not args.no_write:
        command = "veil " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
        text = "\n".join([
            "<!-- veil bench boxes -->", "## `veil bench boxes`", "", f"Command: `{command}`  ",
            f"Machine: {report.machine('cpu', cfg.threads)}, load average {os.getloadavg()[0]:.1f}  ",
            f"Grid {'x'.join(map(str, cfg.grid))}, window {'x'.join(map(str, cfg.window))}, one head, head dim "
            f"{cfg.head_dim}, fp32, forward; best of {cfg.repeats} runs, process CPU time.", "",
            boxes.__doc__.split("\n\n")[1].replace("\n", " "), "", table, "<!-- /veil bench boxes -->"])
        report.update_doc(args.output, "boxes", text)
        print(f"replaced the section 'boxes' of {args.output}")
    return 0


def add_distributed_parser(programs) -> None:
    d = dist_bench.Config()
    b = programs.add_parser(
        "distributed", help="sequence-parallel attention and a WanDiT step on 1, 2 and 4 gloo processes",
        description="For 1, 2 and 4 processes (gloo, CPU, one thread each): the time of each rank's sequence-parallel "
                    "attention (Ulysses, ring) per mask, forward and forward + backward, against one process; the "
                    "bytes each rank sent against the formula; the ring's skipped blocks; a WanDiT training step.")
    b.add_argument("--quick", action="store_true", help="1024 tokens, 4 heads, a 4x8x8 model grid, 3 repeats")
    b.add_argument("--processes", type=int, nargs="+", help="process counts (default 1 2 4)")
    b.add_argument("--tokens", type=int, help=f"attention sequence length (default {d.tokens})")
    b.add_argument("--masks", nargs="+", choices=dist_bench.MASKS, help="default: all")
    b.add_argument("--repeats", type=int, help=f"timed runs per row, median reported (default {d.repeats})")
    b.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose section this run replaces")
    b.add_argument("--no-write", action="store_true", help="print the tables only")
    b.set_defaults(run=run_distributed, parser=b)


def run_distributed(args: argparse.Namespace) -> int:
    overrides = {k: tuple(v) if isinstance(v, list) else v
                 for k in ("processes", "tokens", "masks", "repeats") if (v := getattr(args, k)) is not None}
    cfg = dist_bench.quick(**overrides) if args.quick else dist_bench.Config(**overrides)
    print(dist_bench.header(), flush=True)
    base: dict = {}
    rows, model_rows = dist_bench.run(cfg, lambda r, m: (
        base.update({x.mask: x for x in r if x.processes == 1}),
        print("\n".join(dist_bench.format_rows(r, base)), flush=True)))
    model_base = next((m for m in model_rows if m.processes == 1), None)
    print("\n" + dist_bench.model_header() + "\n" + "\n".join(dist_bench.format_model_rows(model_rows, model_base)))
    if not args.no_write:
        command = "veil " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
        key, title = ("distributed-quick", "distributed --quick") if args.quick else ("distributed", "distributed")
        text = "\n".join([
            f"<!-- veil bench {key} -->", f"## `veil bench {title}`", "", f"Command: `{command}`  ",
            f"Machine: {report.machine('cpu', 1)} per process, load average {os.getloadavg()[0]:.1f}  ",
            f"Attention: batch 1, {cfg.heads} heads of {cfg.head_dim}, {cfg.tokens} tokens (window_3d: 16 frames), "
            f"fp32; median of {cfg.repeats} runs, rank 0's wall time.", "",
            dist_bench.__doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "",
            dist_bench.header(), *dist_bench.format_rows(rows, base), "",
            dist_bench.model_header(), *dist_bench.format_model_rows(model_rows, model_base),
            f"<!-- /veil bench {key} -->"])
        report.update_doc(args.output, key, text)
        print(f"replaced the section '{title}' of {args.output}")
    return 0
