"""``veil eval``: prompt-following scores of a checkpoint (seen and held-out combinations, fidelity, 4x extension)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from veil.cli.generate import add_model_arguments, load_pipeline
from veil.pipelines.evaluate import evaluate, markdown


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score prompt-following of a checkpoint",
                       description="Generate for every seen and held-out combination (or --prompts), recover "
                                   "colour, shape and motion with the world's analyzer, measure how cleanly the "
                                   "clips are drawn next to the world's renders (background residual, square fill, "
                                   "edge rise), measure how much the denoiser depends on each caption attribute, "
                                   "extend some prompts 4x, and write report.json, report.md and GIF grids to --out.")
    add_model_arguments(p)
    p.add_argument("--prompts", help="a text file, one prompt per line (default: every seen combination)")
    p.add_argument("--out", default="out/eval", help="report directory (default out/eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the checkpoint's)")
    p.add_argument("--extension-prompts", type=int, default=10, help="prompts extended 4x (0: skip)")
    p.add_argument("--extend-factor", type=int, default=4, help="extension length in trained lengths (default 4)")
    p.add_argument("--edges", choices=("inside", "wrap"),
                   help="the world's edges (default: the checkpoint's training world)")
    p.add_argument("--no-fidelity", action="store_true", help="skip the fidelity measures (and the denoiser floor)")
    p.add_argument("--no-sensitivity", action="store_true",
                   help="skip the caption sensitivity (the denoiser's error with one caption attribute replaced)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small tensors run fastest on one thread of a busy CPU)")
    p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args)
    prompts = None
    if args.prompts:
        prompts = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    report = evaluate(pipe, prompts, seed=args.seed, steps=args.steps, guidance=args.guidance,
                      extension_prompts=args.extension_prompts, extend_factor=args.extend_factor, edges=args.edges,
                      measure_fidelity=not args.no_fidelity, measure_sensitivity=not args.no_sensitivity,
                      out_dir=args.out)
    print(markdown(report))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0
