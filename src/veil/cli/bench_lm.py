"""``veil bench lm``: DecoderLM against Hugging Face's Gemma 3 (prefill, decode, memory); updates docs/benchmarks.md."""

from __future__ import annotations

import argparse
import shlex
import sys

from veil.bench import lm, report


def add_parser(programs) -> None:
    """Add ``lm`` to the ``veil bench`` programs."""
    d = lm.Config()
    a = programs.add_parser(
        "lm", help="DecoderLM vs Hugging Face Gemma 3: prefill/decode tokens/s, peak memory, cache size",
        description="Prefill and decode tokens/s and peak memory of veil's DecoderLM and Hugging Face's "
                    "Gemma3ForCausalLM on the same random weights, timed side by side in one run after a logits "
                    "check; and the caches' bytes per layer type as the context grows.")
    a.add_argument("--quick", action="store_true", help="a tiny model at context 512 (seconds; CI); other options "
                   "override it")
    a.add_argument("--context", type=int, help=f"prompt length (default {d.context})")
    a.add_argument("--window", type=int, help=f"sliding window of the local layers (default {d.window})")
    for name in ("layers", "dim", "heads", "kv_heads", "head_dim", "hidden", "vocab", "global_every", "batch",
                 "decode_tokens", "repeats", "chunk", "threads"):
        a.add_argument("--" + name.replace("_", "-"), type=int, help=f"default {getattr(d, name)}")
    a.add_argument("--clock", choices=list(lm.CLOCKS), help="cpu: process CPU time, not inflated by other jobs on "
                   "a shared machine; wall: elapsed time (default cpu)")
    a.add_argument("--memory-contexts", type=int, nargs="+", help="contexts of the cache-size table (default "
                   + " ".join(map(str, d.memory_contexts)) + ")")
    a.add_argument("--compile", action="store_true", help="veil's model compiled (fullgraph, fixed-shape KV cache) "
                   "against HF eager; compile runs are warm-ups")
    a.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose section this run replaces")
    a.add_argument("--no-write", action="store_true", help="print the tables only")
    a.set_defaults(run=run, parser=a)


def run(args: argparse.Namespace, write: bool = True) -> int:
    keys = ("context", "window", "layers", "dim", "heads", "kv_heads", "head_dim", "hidden", "vocab", "global_every",
            "batch", "decode_tokens", "repeats", "chunk", "threads", "clock", "memory_contexts")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k in keys if (v := getattr(args, k)) is not None}
    if args.compile:
        overrides["compile"] = True
    cfg = lm.quick(**overrides) if args.quick else lm.Config(**overrides)
    print(cfg.describe(), flush=True)
    res = lm.run(cfg, log=lambda line: print(line, flush=True))
    print(lm.tables(res))
    if write and not args.no_write:
        command = "veil " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
        key, title = ("lm-quick", "lm --quick") if args.quick else ("lm", "lm")
        if cfg.compile:
            key, title = key + "-compile", title + " --compile"
        report.update_doc(args.output, key, lm.section(key, title, res, command))
        print(f"replaced the section '{title}' of {args.output}")
    return 0
