"""``veil train``: train a text-to-video preset on the captioned video world."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from veil.distributed import init
from veil.training.t2v import PRESETS, load_config, train_t2v


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a text-to-video model (preset tiny-t2v-16f)",
                       description="Train a preset on the procedural captioned video world (or --data DIR: a folder "
                                   "of captioned clips); writes checkpoints, "
                                   "metrics.jsonl and model.safetensors (EMA weights) to --out.")
    p.add_argument("--preset", default="tiny-t2v-16f", choices=sorted(PRESETS),
                   help="tiny-t2v-16f (the default: 16 frames in 2x8x8 patches, 8 token frames, compiled, ~27 min on "
                        "2 CPU cores), tiny-t2v (8 frames in 8x4x4 patches, one token frame, ~17 min) or micro-t2v "
                        "(seconds, for tests)")
    p.add_argument("--config", help="a TOML file of fields (top-level keys) applied over the preset")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="fields applied last, e.g. steps=200 lr=5e-4")
    p.add_argument("--exclude", nargs="+", help="held-out combinations, e.g. 'blue triangle' 'green moving up'")
    p.add_argument("--data", metavar="DIR", help="train on a folder of captioned clips (mp4 / gif / webm, captions in "
                   "captions.jsonl / captions.csv or a .txt beside each clip) instead of the world")
    p.add_argument("--out", default="runs/t2v", help="output directory (default runs/t2v)")
    p.add_argument("--resume", help="'auto' (the latest checkpoint in --out) or a checkpoint path")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run, parser=p)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(args: argparse.Namespace) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one process per device
        init()
    overrides = list(args.overrides)
    if args.exclude is not None:
        overrides.append("exclude=" + repr(list(args.exclude)).replace("'", '"'))
    if args.data is not None:
        overrides.append("data=" + json.dumps(args.data))
    config = load_config(args.preset, args.config, overrides)
    argv = args.argv if args.argv is not None else sys.argv[1:]
    run_info = {"command": "veil " + shlex.join(argv), "commit": _commit(), "preset": args.preset}
    path = train_t2v(config, args.out, resume=args.resume, run=run_info, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {path}\ntry: veil generate \"a red circle moving right\" -o out.gif --checkpoint {path}")
    return 0
