"""``veil bench boxes``: how much of a 3D window's ideal speed-up a query-box tiling can reach, at best.

An exact ``window_3d`` kernel that calls dense attention per block cuts the queries into boxes of one frame and
gives each box the union of its queries' windows: a box of ``(1, a, b)`` queries reads ``wt x (a + wh - 1) x
(b + ww - 1)`` keys, of which each query needs only its own ``wt x wh x ww`` (fewer at the grid's edges). This
program measures, side by side in one process, dense SDPA over the whole grid without a mask and, for each box
size, SDPA batched over all the boxes on keys that are already laid out per box (no gather, no mask): the
dense work such a kernel cannot avoid. ``% of ideal`` = ``(t_full / t_boxes) / ideal``, with ``ideal = 1 /
density`` of the clipped window. The real backend also gathers keys and masks pairs, so it can only be slower.

Legend: T H W grid, D head dim; one batch row and one head (the work is the same per head).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from veil.masks import window_3d

Grid = tuple[int, int, int]


@dataclass(kw_only=True)
class Config:
    """What ``veil bench boxes`` runs."""

    grid: Grid = (16, 32, 32)
    window: Grid = (3, 9, 9)
    boxes: tuple[tuple[int, int], ...] = ((1, 4), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16))
    head_dim: int = 64
    repeats: int = 5
    threads: int | None = 1


@dataclass(kw_only=True)
class Row:
    box: tuple[int, int]
    queries: int
    keys: int
    pair_efficiency: float  # needed pairs / computed pairs
    ms: float
    full_ms: float
    ideal: float

    @property
    def speedup(self) -> float:
        return self.full_ms / self.ms

    @property
    def share(self) -> float:
        return self.speedup / self.ideal


def _cpu_best(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def run(cfg: Config) -> list[Row]:
    """One row per box size in ``cfg.boxes`` that divides the grid. Times are the best of ``repeats`` (CPU time)."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        t, h, w = cfg.grid
        n, d = t * h * w, cfg.head_dim
        density = window_3d(cfg.grid, cfg.window).density(q_len=n, kv_len=n)
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 1, n, d, generator=gen) for _ in range(3))
        full = _cpu_best(lambda: F.scaled_dot_product_attention(q, k, v), max(1, cfg.repeats // 2))
        rows = []
        for a, b in cfg.boxes:
            if h % a or w % b:
                continue
            nq = a * b
            nk = cfg.window[0] * (a + cfg.window[1] - 1) * (b + cfg.window[2] - 1)
            tiles = n // nq
            qb, kb, vb = (torch.randn(tiles, 1, m, d, generator=gen) for m in (nq, nk, nk))
            sec = _cpu_best(lambda qb=qb, kb=kb, vb=vb: F.scaled_dot_product_attention(qb, kb, vb), cfg.repeats)
            needed = density * n  # mean visible keys per query
            rows.append(Row(box=(a, b), queries=nq, keys=nk, pair_efficiency=needed / nk, ms=sec * 1e3,
                            full_ms=full * 1e3, ideal=1 / density))
        return rows
    finally:
        torch.set_num_threads(threads)


COLUMNS = ("query box", "queries", "keys per box", "needed / computed pairs", "boxes ms", "full ms",
           "boxes x full", "ideal x", "% of ideal")


def header() -> str:
    return "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def format_row(r: Row) -> str:
    cells = [f"1x{r.box[0]}x{r.box[1]}", str(r.queries), str(r.keys), f"{r.pair_efficiency:.0%}", f"{r.ms:.1f}",
             f"{r.full_ms:.1f}", f"{r.speedup:.1f}", f"{r.ideal:.1f}", f"{r.share:.0%}"]
    return "| " + " | ".join(cells) + " |"
