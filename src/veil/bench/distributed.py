"""``veil bench distributed``: sequence-parallel attention and a WanDiT step on 1, 2 and 4 gloo processes (CPU).

For each process count P, mode (Ulysses, ring) and mask: the median time of this rank's attention call (forward,
and forward + backward), the bytes each rank sent against the formula, the share of (query shard, key shard)
blocks a ring skips because the mask leaves them empty, and the ring's load imbalance (the busiest rank's blocks
over the mean: with contiguous shards a causal mask gives rank i i + 1 blocks; the zig-zag layout, an early and a
late chunk per rank, evens it out). Then a small WanDiT forward + backward step, Ulysses over P processes against
one process. Every P runs in its own group of fresh processes (:func:`veil.distributed.spawn`) at one torch thread
each: with P processes on a 2-core machine, P > 2 shares the cores, so the times show the overheads of the method
here, not the speed-up P devices would give.

Formulas (bytes sent by one rank per attention call, e bytes per element, n = N / P tokens per rank, Dv = D):
Ulysses forward ``4 B H n D e (P - 1) / P`` (q, k, v in, out back), backward the same; ring forward
``2 B Hkv n D e (P - 1)`` (keys and values passed P - 1 times), backward ``2 B Hkv n D (e (P - 1) + 4 P)`` (keys
and values again, and their float32 gradients P times to come home).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

MASKS = ("full", "causal", "sliding_window", "window_3d")


@dataclass
class Config:
    """Sizes of one run."""

    tokens: int = 4096
    heads: int = 8
    head_dim: int = 64
    processes: tuple[int, ...] = (1, 2, 4)
    masks: tuple[str, ...] = MASKS
    repeats: int = 5
    model_grid: tuple[int, int, int] = (8, 16, 16)
    model_dim: int = 256
    model_layers: int = 4


def quick(**overrides) -> Config:
    """A CI-sized run (about a minute on 2 cores)."""
    base = dict(tokens=1024, heads=4, head_dim=32, repeats=3, model_grid=(4, 8, 8), model_dim=128, model_layers=2)
    return Config(**{**base, **overrides})


@dataclass
class Row:
    processes: int
    mode: str
    mask: str
    fwd_ms: float
    fwd_bwd_ms: float
    sent_fwd: int
    sent_fwd_bwd: int
    formula_fwd: int
    formula_fwd_bwd: int
    skip: float
    imbalance: float  # the busiest rank's blocks / the mean (ring)
    max_diff: float


@dataclass
class ModelRow:
    processes: int
    mode: str
    tokens: int
    ms: float
    sent: int
    max_diff: float
    extra: dict = field(default_factory=dict)


def _mask(name: str, n: int):
    import veil.masks as M

    if name == "full":
        return None
    if name == "causal":
        return M.causal()
    if name == "sliding_window":
        return M.causal() & M.sliding_window(max(1, n // 8))
    t = 16
    side = int((n // t) ** 0.5)
    return M.window_3d((t, side, n // t // side), (3, 5, 5))


def _tokens_for(name: str, n: int) -> int:
    if name == "window_3d":
        t = 16
        side = int((n // t) ** 0.5)
        return t * side * (n // t // side)
    return n


def _formula(mode: str, p: int, b: int, h: int, n_local: int, d: int, e: int) -> tuple[int, int]:
    if p == 1:
        return 0, 0
    if mode == "ulysses":
        fwd = 4 * b * h * n_local * d * e * (p - 1) // p
        return fwd, 2 * fwd
    fwd = 2 * b * h * n_local * d * e * (p - 1)
    return fwd, fwd + 2 * b * h * n_local * d * (e * (p - 1) + 4 * p)


def _timed(fn, repeats: int) -> float:
    import torch.distributed as dist

    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _worker(cfg: Config) -> tuple[list[Row], list[ModelRow]]:
    import torch.distributed as dist

    import veil
    import veil.distributed as vd
    from veil.distributed.comm import bytes_sent

    p = dist.get_world_size()
    modes = ("ulysses", "ring", "ring zigzag") if p > 1 else ("one process",)
    rows: list[Row] = []
    for name in cfg.masks:
        n = _tokens_for(name, cfg.tokens)
        mask = _mask(name, n)
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, cfg.heads, n, cfg.head_dim, generator=g) for _ in range(3))
        with torch.no_grad():
            ref = veil.attend(q, k, v, mask)
        for mode in modes:
            layout = "zigzag" if mode.endswith("zigzag") else "contiguous"
            kw = {} if p == 1 else {mode.split()[0]: p, "layout": layout}
            qs, ks, vs = (vd.shard(t, 2, layout=layout).clone().requires_grad_() for t in (q, k, v))

            def fwd(kw=kw, qs=qs, ks=ks, vs=vs, mask=mask):
                with torch.no_grad():
                    return vd.attend(qs, ks, vs, mask, **kw)

            def fwd_bwd(kw=kw, qs=qs, ks=ks, vs=vs, mask=mask):
                vd.attend(qs, ks, vs, mask, **kw).sum().backward()

            out = fwd()
            diff = float((out - vd.shard(ref, 2, layout=layout)).abs().max()) if out.numel() else 0.0
            bytes_sent(reset=True)
            fwd()
            sent_fwd = bytes_sent(reset=True)
            fwd_bwd()
            sent_both = bytes_sent(reset=True)
            f_ms, fb_ms = _timed(fwd, cfg.repeats), _timed(fwd_bwd, cfg.repeats)
            formula = _formula(mode.split()[0], p, 1, cfg.heads, vd.shard_sizes(n, p)[0], cfg.head_dim, 4)
            ring = mode.startswith("ring")
            skip = vd.ring_skips(mask, n, n, p, layout) if ring else 0.0
            blocks = vd.ring_blocks(mask, n, n, p, layout)
            imbalance = max(blocks) / (sum(blocks) / p) if ring and sum(blocks) else 1.0
            rows.append(Row(p, mode, name, f_ms, fb_ms, sent_fwd, sent_both, *formula, skip, imbalance, diff))
    return rows, _model_rows(cfg, p)


def _model_rows(cfg: Config, p: int) -> list[ModelRow]:
    import torch.distributed as dist

    from veil.distributed.comm import bytes_sent
    from veil.models import WanConfig, WanDiT

    torch.manual_seed(0)
    wan_cfg = WanConfig(patch_size=(1, 2, 2), in_channels=16, out_channels=16, dim=cfg.model_dim, heads=8,
                        num_layers=cfg.model_layers, ffn_dim=cfg.model_dim * 3, text_dim=64, freq_dim=64)
    model = WanDiT(wan_cfg)
    t_, h_, w_ = cfg.model_grid
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, t_, 2 * h_, 2 * w_, generator=g)
    text, lengths = torch.randn(1, 32, 64, generator=g), torch.tensor([20])
    with torch.no_grad():
        ref = model(x, torch.tensor([500.0]), text, lengths)
    out_rows = []
    if p > 1:
        model.enable_sequence_parallel(ulysses=p)

    def step():
        model.zero_grad(set_to_none=True)
        model(x, torch.tensor([500.0]), text, lengths).square().mean().backward()

    with torch.no_grad():
        diff = float((model(x, torch.tensor([500.0]), text, lengths) - ref).abs().max())
    bytes_sent(reset=True)
    step()
    sent = bytes_sent(reset=True)
    ms = _timed(step, cfg.repeats)
    dist.barrier()
    out_rows.append(ModelRow(p, "ulysses" if p > 1 else "one process", t_ * h_ * w_, ms, sent, diff))
    return out_rows


def run(cfg: Config, on_rows=None) -> tuple[list[Row], list[ModelRow]]:
    """Every process count in turn; returns rank 0's rows."""
    from veil.distributed import spawn

    rows: list[Row] = []
    model_rows: list[ModelRow] = []
    for p in cfg.processes:
        r, m = spawn(_worker, p, cfg, timeout=1800, threads=1)[0]
        rows += r
        model_rows += m
        if on_rows is not None:
            on_rows(r, m)
    return rows, model_rows


def header() -> str:
    cols = ("P", "mode", "mask", "fwd ms", "x one process", "fwd+bwd ms", "x one process", "KiB sent fwd (formula)",
            "KiB sent fwd+bwd (formula)", "ring blocks skipped", "ring busiest / mean", "max abs diff")
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def format_rows(rows: list[Row], base: dict[str, Row]) -> list[str]:
    out = []
    for r in rows:
        one = base.get(r.mask)
        x1 = f"{one.fwd_ms / r.fwd_ms:.2f}" if one else ""
        x2 = f"{one.fwd_bwd_ms / r.fwd_bwd_ms:.2f}" if one else ""
        out.append(f"| {r.processes} | {r.mode} | {r.mask} | {r.fwd_ms:.1f} | {x1} | {r.fwd_bwd_ms:.1f} | {x2} | "
                   f"{r.sent_fwd / 1024:.0f} ({r.formula_fwd / 1024:.0f}) | {r.sent_fwd_bwd / 1024:.0f} "
                   f"({r.formula_fwd_bwd / 1024:.0f}) | {r.skip:.0%} | {r.imbalance:.2f} | {r.max_diff:.1e} |")
    return out


def model_header() -> str:
    cols = ("P", "mode", "video tokens", "WanDiT fwd+bwd ms", "x one process", "KiB sent per step",
            "max abs diff (forward)")
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def format_model_rows(rows: list[ModelRow], base: ModelRow | None) -> list[str]:
    return [f"| {r.processes} | {r.mode} | {r.tokens} | {r.ms:.0f} | "
            f"{'' if base is None else f'{base.ms / r.ms:.2f}'} | {r.sent / 1024:.0f} | {r.max_diff:.1e} |"
            for r in rows]
