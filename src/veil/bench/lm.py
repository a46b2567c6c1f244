"""``veil bench lm``: DecoderLM against Hugging Face's Gemma 3 on the same weights: prefill and decode speed, peak
memory, and the KV cache's size as the context grows.

One run builds a Hugging Face ``Gemma3ForCausalLM`` from a config (random weights, ``attn_implementation="sdpa"``,
local and global layers, a sliding window) and converts it with :meth:`DecoderLM.from_transformers`. Then:

1. **Logits check first**: a full forward of both models on ``check_tokens`` tokens (more than twice the window,
   so the window binds), and later the last-position logits of every timed prefill and decode step; the largest
   absolute differences are printed (with the logits' scale).
2. **Prefill** of ``context`` tokens into a fresh cache, ``repeats`` times, veil's and HF's runs interleaved (the
   order alternating) so that a busy machine slows both alike; tokens/s from the medians. HF computes the last
   position's logits only (``logits_to_keep=1``), as :meth:`DecoderLM.prefill` does.
3. **Decode**: from the prefilled caches, ``decode_tokens`` greedy steps (veil's argmax fed to both), each step
   timed for both, interleaved; tokens/s = batch / median step time, at context ``context`` and beyond.
4. **Peak memory** of one prefill (cache creation included: HF's DynamicCache allocates during the call, veil's
   is preallocated by ``new_cache``) and of one decode step, measured with :func:`veil.bench.memory.peak_bytes`.
5. **Cache bytes per layer type** after prefilling each of ``memory_contexts`` tokens (in chunks of ``chunk``
   tokens: :meth:`DecoderLM.prefill` with ``chunk_size``, HF by calling the model on successive chunks with its
   cache): the local layers' bytes must not grow with the context.

Everything runs under ``torch.inference_mode()``, both models alike.

Legend: B batch, L tokens, E width, W sliding window, V vocabulary.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import torch

from veil.bench.memory import peak_bytes

IMPLS = ("veil", "hf")
COMPILED_NOTE = (" compiled (fullgraph, fixed-shape cache; compile runs not timed; the prefill runs as `prefill` runs "
                 "it, eagerly on CPU, compiled elsewhere; decoding steps run as `generate` runs them after its first "
                 "step, with only the guards that tell cached graphs apart)")
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


@dataclass(kw_only=True)
class Config:
    """What ``veil bench lm`` measures (a Gemma 3 style model: ``global_every - 1`` local layers, then a global one).

    Attributes:
        context: prompt length of the prefill and decode measurements.
        window: sliding window W of the local layers (keys ``q - W < k <= q``).
        layers, dim, heads, kv_heads, head_dim, hidden, vocab: the model's shape.
        global_every: every ``global_every``-th layer is global (Gemma 3: 6, Gemma 2: 2).
        batch: B.
        decode_tokens: timed decode steps.
        repeats: timed prefills per implementation (median reported).
        check_tokens: length of the full-forward logits check.
        memory_contexts: contexts at which the caches' bytes are measured.
        chunk: prefill chunk for the cache-size measurements.
        threads: torch threads during the run (None: leave torch's setting). Default 1: on a machine shared
            with other jobs, OpenMP threads that wait for a busy core make small ops 10-100x slower (measured
            here: a 2048-token prefill of the ``--quick`` model took 2.8 s on 2 threads, 0.03 s on 1).
        clock: ``"cpu"``: the process's CPU time (``time.process_time``), which other jobs on a shared machine do
            not inflate; with one thread it is the time the call takes on an idle core. ``"wall"``: elapsed time
            (``time.perf_counter``), what a user waits, noisy on a busy machine. Seen here (load average 5 on
            2 cores, context 8192): a wall-clock run gave decode 13.3 ms (veil) vs 10.7 ms (HF); a paired run in
            CPU time a minute later gave 5.54 vs 5.54 ms.
        seed: of the weights and tokens.
        compile: run veil's model compiled (``model.compile(fullgraph=True)``) with a fixed-shape KV cache (as
            ``generate`` does for a compiled model); its compile runs are warm-ups, not timed. The cache-size table
            is skipped (it would compile a graph per chunk and cache).
    """

    context: int = 8192
    window: int = 512
    layers: int = 4
    dim: int = 256
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 64
    hidden: int = 1024
    vocab: int = 4096
    global_every: int = 4
    batch: int = 1
    decode_tokens: int = 32
    repeats: int = 3
    check_tokens: int = 1152
    memory_contexts: tuple[int, ...] = (2048, 8192, 32768)
    chunk: int = 4096
    threads: int | None = 1
    clock: Literal["cpu", "wall"] = "cpu"
    seed: int = 0
    compile: bool = False

    def __post_init__(self):
        for name in ("context", "window", "layers", "dim", "heads", "kv_heads", "head_dim", "hidden", "vocab",
                     "global_every", "batch", "decode_tokens", "repeats", "check_tokens", "chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads: expected a positive int or None, got {self.threads!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock: expected 'cpu' or 'wall', got {self.clock!r}")
        self.memory_contexts = tuple(self.memory_contexts)
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.memory_contexts):
            raise ValueError(f"memory_contexts: expected positive ints, got {self.memory_contexts!r}")

    @property
    def layer_types(self) -> list[str]:
        """HF layer types: ``global_every - 1`` sliding-window layers, then a full-attention one, repeated."""
        return ["sliding_attention" if (i + 1) % self.global_every else "full_attention" for i in range(self.layers)]

    def describe(self) -> str:
        kinds = self.layer_types
        return (f"{self.layers} layers ({kinds.count('sliding_attention')} local with window {self.window}, "
                f"{kinds.count('full_attention')} global), width {self.dim}, {self.heads} heads / {self.kv_heads} "
                f"kv heads of dim {self.head_dim}, MLP {self.hidden}, vocab {self.vocab}, batch {self.batch}, "
                f"fp32, {self.threads or torch.get_num_threads()} torch threads")


QUICK = Config(context=512, window=64, layers=2, dim=64, heads=2, kv_heads=1, head_dim=32, hidden=128, vocab=256,
               global_every=2, decode_tokens=4, repeats=2, check_tokens=160, memory_contexts=(128, 512, 2048),
               chunk=512)


def quick(**overrides) -> Config:
    """The ``--quick`` configuration, with overrides."""
    return replace(QUICK, **overrides)


@dataclass
class SpeedRow:
    """One implementation's speed and memory at ``context``."""

    impl: str
    prefill_s: float
    prefill_tok_s: float
    decode_ms: float
    decode_tok_s: float
    prefill_peak_mib: float
    decode_peak_mib: float


@dataclass
class CacheRow:
    """One implementation's cache after prefilling ``context`` tokens: bytes per layer of each type."""

    impl: str
    context: int
    local_bytes: int  # per local layer
    global_bytes: int  # per global layer
    total_bytes: int
    prefill_s: float


@dataclass
class Result:
    config: Config
    check: dict[str, float] = field(default_factory=dict)  # what was compared -> max abs diff
    logit_scale: float = 0.0
    speed: list[SpeedRow] = field(default_factory=list)
    cache: list[CacheRow] = field(default_factory=list)


def build(cfg: Config):
    """(HF ``Gemma3ForCausalLM`` with random weights, the DecoderLM converted from it), both in eval mode."""
    try:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    except ImportError as e:  # transformers is a dev dependency
        raise ValueError("veil bench lm compares with Hugging Face transformers: pip install 'veil[dev]'") from e
    from veil.models import DecoderLM

    torch.manual_seed(cfg.seed)
    longest = max(cfg.context + cfg.decode_tokens + 2, cfg.check_tokens, *cfg.memory_contexts)
    hf_cfg = Gemma3TextConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.dim, intermediate_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
        query_pre_attn_scalar=cfg.head_dim, sliding_window=cfg.window, layer_types=cfg.layer_types,
        max_position_embeddings=longest, attn_implementation="sdpa", pad_token_id=0, bos_token_id=None,
        eos_token_id=None)
    hf = Gemma3ForCausalLM(hf_cfg).eval()
    return hf, DecoderLM.from_transformers(hf)


def _hf_cache(hf):
    from transformers import DynamicCache

    return DynamicCache(config=hf.config)


def _hf_last(hf, ids: torch.Tensor, cache) -> torch.Tensor:
    """HF forward of ``ids`` ``[B, L]`` appended to ``cache``; the last position's logits ``[B, V]``."""
    # transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns, then goes in 5.40)
    name = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    return hf(ids, use_cache=True, logits_to_keep=1, **{name: cache}).logits[:, -1]


def _hf_step(hf, tok: torch.Tensor, cache) -> torch.Tensor:
    """One HF decode step: logits ``[B, V]`` of the tokens ``[B]`` appended to ``cache``."""
    return _hf_last(hf, tok[:, None], cache)


def _timed(fn: Callable[[], object], clock: Callable[[], float]) -> tuple[float, object]:
    t = clock()
    out = fn()
    return clock() - t, out


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def run(cfg: Config, log: Callable[[str], None] = print) -> Result:
    """Measure everything listed in the module docstring; ``log`` gets a line per step as it finishes."""
    saved = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        with torch.inference_mode():  # both models alike (veil's generate runs its loop this way)
            return _run(cfg, log)
    finally:
        torch.set_num_threads(saved)


def _run(cfg: Config, log: Callable[[str], None]) -> Result:
    hf, ours = build(cfg)
    res = Result(cfg)
    clock = CLOCKS[cfg.clock]
    g = torch.Generator().manual_seed(cfg.seed + 1)

    # 1. logits check: full forward, no cache
    ids = torch.randint(0, cfg.vocab, (cfg.batch, cfg.check_tokens), generator=g)
    want = hf(ids).logits
    res.check[f"full forward, {cfg.check_tokens} tokens"] = _diff(ours(ids), want)
    res.logit_scale = float(want.abs().max())
    log(f"logits check: max abs diff {res.check[f'full forward, {cfg.check_tokens} tokens']:.2e} "
        f"(logits up to {res.logit_scale:.2f})")
    del want

    # 2. prefill, interleaved
    prompt = torch.randint(0, cfg.vocab, (cfg.batch, cfg.context), generator=g)
    cap = cfg.context + cfg.decode_tokens + 2

    fixed = None
    if cfg.compile:  # one fixed-shape cache, reset per prefill: a new cache object would be a new graph
        ours.compile(fullgraph=True)
        fixed = ours.new_cache(cfg.batch, cap, fixed_shapes=True)

    def veil_prefill():
        if fixed is not None:
            fixed.reset()
            return fixed, ours.prefill(prompt, None, fixed)
        cache = ours.new_cache(cfg.batch, cap)
        return cache, ours.prefill(prompt, None, cache)

    if cfg.compile:  # the compile runs: prefill and decode graphs
        t0 = time.perf_counter()
        c, lg = veil_prefill()
        ours.decode_step(lg.argmax(-1), c)
        log(f"warm-up (veil's prefill, its decoding graph compiled) in {time.perf_counter() - t0:.0f} s")

    def hf_prefill():
        cache = _hf_cache(hf)
        return cache, _hf_last(hf, prompt, cache)

    times: dict[str, list[float]] = {i: [] for i in IMPLS}
    outs: dict[str, tuple] = {}
    prefill_diff = 0.0
    for r in range(cfg.repeats):
        for impl in (IMPLS if r % 2 == 0 else IMPLS[::-1]):
            outs.pop(impl, None)  # free the previous cache before the next prefill
            t, outs[impl] = _timed(veil_prefill if impl == "veil" else hf_prefill, clock)
            times[impl].append(t)
        prefill_diff = max(prefill_diff, _diff(outs["veil"][1], outs["hf"][1]))
        log(f"prefill {r + 1}/{cfg.repeats}: veil {times['veil'][-1]:.2f} s, hf {times['hf'][-1]:.2f} s")
    res.check[f"prefill, last position, {cfg.context} tokens"] = prefill_diff

    # 3. decode, interleaved step by step from the prefilled caches
    (v_cache, v_logits), (h_cache, h_logits) = outs["veil"], outs["hf"]
    steps: dict[str, list[float]] = {i: [] for i in IMPLS}
    decode_diff = 0.0
    for s in range(cfg.decode_tokens):
        tok = v_logits.argmax(dim=-1)  # (B,)
        for impl in (IMPLS if s % 2 == 0 else IMPLS[::-1]):
            if impl == "veil":  # a compiled model's later steps as generate runs them (DecoderLM.warm_stance)
                with ours.warm_stance(cfg.compile):
                    t, v_logits = _timed(partial(ours.decode_step, tok, v_cache), clock)
            else:
                t, h_logits = _timed(partial(_hf_step, hf, tok, h_cache), clock)
            steps[impl].append(t)
        decode_diff = max(decode_diff, _diff(v_logits, h_logits))
    res.check[f"decode, {cfg.decode_tokens} steps from {cfg.context} tokens"] = decode_diff
    log(f"decode: veil {1e3 * statistics.median(steps['veil']):.1f} ms/step, "
        f"hf {1e3 * statistics.median(steps['hf']):.1f} ms/step; max abs diff prefill {prefill_diff:.2e}, "
        f"decode {decode_diff:.2e}")

    # 4. peak memory: one prefill (fresh cache included) and one more decode step each
    tok = v_logits.argmax(dim=-1)
    peaks = {
        "veil": (peak_bytes(veil_prefill, "cpu"), peak_bytes(partial(ours.decode_step, tok, v_cache), "cpu")),
        "hf": (peak_bytes(hf_prefill, "cpu"), peak_bytes(partial(_hf_step, hf, tok, h_cache), "cpu")),
    }
    outs.clear()
    v_cache = h_cache = None  # free them before the cache-size runs
    for impl in IMPLS:
        pre, dec = statistics.median(times[impl]), statistics.median(steps[impl])
        res.speed.append(SpeedRow(impl, pre, cfg.batch * cfg.context / pre, 1e3 * dec, cfg.batch / dec,
                                  peaks[impl][0] / 2**20, peaks[impl][1] / 2**20))

    # 5. cache bytes per layer type as the context grows (chunked prefill)
    for n in () if cfg.compile else cfg.memory_contexts:
        ids = torch.randint(0, cfg.vocab, (cfg.batch, n), generator=g)
        res.cache.extend(_cache_rows(cfg, hf, ours, ids))
        log("cache at {} tokens: {}".format(n, ", ".join(
            f"{r.impl} local {r.local_bytes / 2**20:.2f} MiB/layer, global {r.global_bytes / 2**20:.2f} MiB/layer"
            for r in res.cache[-2:])))
    return res


def _cache_rows(cfg: Config, hf, ours, ids: torch.Tensor) -> list[CacheRow]:
    n = ids.shape[1]
    kinds = ["local" if t == "sliding_attention" else "global" for t in cfg.layer_types]
    cache = ours.new_cache(cfg.batch, n)
    t_veil, _ = _timed(partial(ours.prefill, ids, None, cache, chunk_size=cfg.chunk), CLOCKS[cfg.clock])
    per = {k: [layer.k.nbytes + layer.v.nbytes for layer, kind in zip(cache.layers, kinds) if kind == k]
           for k in ("local", "global")}
    rows = [CacheRow("veil", n, max(per["local"], default=0), max(per["global"], default=0), cache.nbytes(), t_veil)]
    del cache
    h_cache = _hf_cache(hf)

    def hf_fill():
        for s in range(0, n, cfg.chunk):
            _hf_last(hf, ids[:, s:s + cfg.chunk], h_cache)

    t_hf, _ = _timed(hf_fill, CLOCKS[cfg.clock])
    sizes = [layer.keys.nbytes + layer.values.nbytes for layer in h_cache.layers]
    per = {k: [b for b, kind in zip(sizes, kinds) if kind == k] for k in ("local", "global")}
    rows.append(CacheRow("hf", n, max(per["local"], default=0), max(per["global"], default=0), sum(sizes), t_hf))
    return rows


# --- markdown ---------------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return format(x, ".0f" if x >= 100 else ".1f" if x >= 10 else ".2f" if x >= 1 else ".3f")


def tables(res: Result) -> str:
    """The check lines and the speed and cache tables, in markdown."""
    cfg = res.config
    by = {r.impl: r for r in res.speed}
    v, h = by["veil"], by["hf"]
    lines = ["Logits check (max abs diff, veil vs HF, fp32; logits up to "
             f"{res.logit_scale:.2f}): " + "; ".join(f"{k}: {d:.1e}" for k, d in res.check.items()) + ".", "",
             f"| impl | prefill {cfg.context} tok/s | prefill s | decode tok/s | decode ms/step | prefill peak MiB "
             "| decode step peak MiB |", "|---|---|---|---|---|---|---|"]
    for r in res.speed:
        lines.append(f"| {r.impl} | {_num(r.prefill_tok_s)} | {_num(r.prefill_s)} | {_num(r.decode_tok_s)} | "
                     f"{_num(r.decode_ms)} | {_num(r.prefill_peak_mib)} | {_num(r.decode_peak_mib)} |")
    lines.append(f"| veil / hf | {v.prefill_tok_s / h.prefill_tok_s:.2f}x | | {v.decode_tok_s / h.decode_tok_s:.2f}x "
                 f"| | {v.prefill_peak_mib / h.prefill_peak_mib:.2f}x | {v.decode_peak_mib / h.decode_peak_mib:.2f}x |")
    if not res.cache:
        return "\n".join(lines)
    lines += ["", f"Cache after a chunked prefill (chunks of {cfg.chunk} tokens), MiB:", "",
              "| impl | context | per local layer | per global layer | all layers | prefill s |",
              "|---|---|---|---|---|---|"]
    for r in res.cache:
        lines.append(f"| {r.impl} | {r.context} | {_num(r.local_bytes / 2**20)} | {_num(r.global_bytes / 2**20)} | "
                     f"{_num(r.total_bytes / 2**20)} | {_num(r.prefill_s)} |")
    return "\n".join(lines)


def section(name: str, title: str, res: Result, command: str) -> str:
    """The docs/benchmarks.md section of one run, between the markers of ``name``."""
    import datetime

    from veil.bench.report import machine

    cfg = res.config
    saved = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or saved)  # the machine line names the threads the run used
    where = machine("cpu")
    torch.set_num_threads(saved)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"<!-- veil bench {name} -->",
        f"## `veil bench {title}`",
        "",
        f"Command: `{command}`  ",
        f"Machine: {where}, device `cpu`  ",
        f"Date: {date}  ",
        f"Model: Hugging Face `Gemma3ForCausalLM` (random weights, `attn_implementation=\"sdpa\"`, `DynamicCache`) "
        f"and veil's `DecoderLM.from_transformers` of it{COMPILED_NOTE if cfg.compile else ''}: {cfg.describe()}. "
        f"Prefill: {cfg.context} tokens into a "
        f"fresh cache, median of {cfg.repeats}, veil's and HF's runs interleaved. Decode: {cfg.decode_tokens} greedy "
        f"steps from there, interleaved step by step, median step. Both under `torch.inference_mode()`. Times: "
        f"{'CPU time of the process (`time.process_time`)' if cfg.clock == 'cpu' else 'wall clock'}.  ",
        "Peak MiB: torch allocations during one call beyond what existed before it (prefill: cache creation "
        "included). veil allocates its global layers' cache for `max_len` tokens up front, so a decode step "
        "allocates only activations; HF's `DynamicCache` concatenates each global layer's keys and values per step.",
        "",
        tables(res),
        f"<!-- /veil bench {name} -->",
    ])
