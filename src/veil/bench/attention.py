"""``veil bench attention``: every backend against dense SDPA, on the masks generative models use.

For each (mask, sequence length or video grid, backend) it measures, side by side in one run:

- the median wall time of the call over ``repeats`` runs, after ``warmup`` runs (the correctness check
  below is the first of them);
- the speed-up over dense SDPA with no mask on the same shapes (``t_dense / t_backend``, where the dense
  runs are interleaved with the backend's runs so that a busy machine slows both alike), the ideal
  speed-up ``1 / density`` (a kernel that skipped exactly the masked pairs at the dense kernel's speed),
  and the share of the ideal reached: ``(t_dense / t_backend) / (1 / density)``;
- the peak memory allocated by the call (see :mod:`veil.bench.memory`);
- the largest absolute difference of the output (and, with ``backward``, of the input gradients) from the
  oracle: the ``reference`` backend where its score tensor fits in ``max_scores_gib``, else ``sdpa``.

``naive`` is a peer row, not a registered backend: the attention most model code writes (materialised
scores, ``masked_fill`` with the dtype's min from ``mask.to_bool``, softmax, matmul). Backends that
materialise the ``B x H x Q x K`` scores (``reference``, ``naive``) are skipped, with the reason, where
those scores would exceed ``max_scores_gib``. A backend that cannot run a call says why
(:meth:`veil.attention.Backend.why_not`).

Legend: B batch, H heads, L tokens (Q == K == L), D head dim, T H W video grid.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from veil.attention import Call, attend, get_backend, list_backends, select
from veil.bench.memory import peak_bytes
from veil.masks import Mask, key_padding, parse, per_head, spatial, temporal, tile_window

Grid = tuple[int, int, int]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NAIVE = "naive"
# "wall": elapsed time, what a user waits; "cpu": the process's CPU time, which other jobs on a shared
# machine do not inflate (it counts the work of all of torch's threads).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
MATERIALISING = frozenset({"reference", NAIVE})

# Bare names with a benchmark meaning (the mask language needs their sizes spelled out):
#   key_padding: the second half of the keys is padding (lengths = L // 2 for every sample);
#   tile_window: tiles of a quarter of each grid axis (1 where the axis is not divisible by 4), a window
#                of 3 tiles per axis (fewer where the grid has fewer tiles);
#   per_head: Sparse VideoGen's split, the first half of the heads spatial, the second half temporal.
DEFAULT_MASKS = ("causal", "sliding_window(512)", "(sink(4) | sliding_window(512)) & causal", "key_padding",
                 "spatial", "temporal", "window_3d((3, 9, 9))", "window_3d((3, 9, 9), border='shift')",
                 "window_3d((3, 5, 5), dilation=(1, 2, 2))", "tile_window", "radial", "per_head")


@dataclass(kw_only=True)
class Config:
    """What ``veil bench attention`` runs. ``backends=None`` means every registered backend and ``naive``."""

    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    grids: tuple[Grid, ...] = ((4, 32, 32), (16, 32, 32))
    masks: tuple[str, ...] = DEFAULT_MASKS
    backends: tuple[str, ...] | None = None
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    dtype: str = "fp32"
    device: str = "cpu"
    backward: bool = False
    repeats: int = 5
    warmup: int = 1
    max_scores_gib: float = 2.0
    seed: int = 0
    clock: str = "wall"
    threads: int | None = None

    @property
    def clock_fn(self) -> Callable[[], float]:
        return CLOCKS[self.clock]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("batch", "heads", "head_dim", "repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock: expected one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads: expected a positive int or None, got {self.threads!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected an int >= 0, got {self.warmup}")
        if any(n < 1 for n in self.lengths):
            raise ValueError(f"lengths: expected positive ints, got {self.lengths}")
        for expr in self.masks:
            _grid_of(expr)  # a bad expression fails here, before anything runs
        if self.backends is not None:
            known = [*list_backends(), NAIVE]
            for name in self.backends:
                if name not in known:
                    raise ValueError(f"backends: unknown backend {name!r}; expected some of {', '.join(known)}")


@dataclass
class Case:
    """One mask at one size: ``tokens`` is the length (sequences) or ``TxHxW`` (video grids)."""

    expr: str
    mask: Mask
    length: int
    tokens: str


@dataclass
class Row:
    """One line of the table; ``ms`` is None when the backend did not run (``note`` says why)."""

    mask: str
    tokens: str
    backend: str
    density: float
    ms: float | None = None
    speedup: float | None = None
    peak_mib: float | None = None
    diff: float | None = None
    oracle: str = ""
    auto: bool = False
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ideal(self) -> float:
        return 1.0 / self.density if self.density > 0 else float("inf")

    @property
    def pct_ideal(self) -> float | None:
        return None if self.speedup is None else 100.0 * self.speedup / self.ideal


def cases(cfg: Config) -> Iterator[Case]:
    """The (mask, size) pairs: sequence masks at every length, video masks on every grid."""
    for expr in cfg.masks:
        video, own_grid = _grid_of(expr)
        if video:
            for grid in [own_grid] if own_grid is not None else cfg.grids:
                t, h, w = grid
                yield Case(expr, build_mask(expr, t * h * w, cfg.batch, grid, cfg.heads), t * h * w, f"{t}x{h}x{w}")
        else:
            for n in cfg.lengths:
                yield Case(expr, build_mask(expr, n, cfg.batch, None), n, str(n))


def build_mask(expr: str, length: int, batch: int, grid: Grid | None, heads: int = 8) -> Mask:
    """A mask expression at one size; see ``DEFAULT_MASKS`` for the bare names with a benchmark meaning."""
    name = expr.strip()
    if name == "per_head" and grid is not None:
        half = heads // 2
        return per_head([spatial(grid)] * half + [temporal(grid)] * (heads - half))
    if name == "key_padding":
        return key_padding(torch.full((batch,), length // 2, dtype=torch.long))
    if name == "tile_window" and grid is not None:
        tile = tuple(g // 4 if g % 4 == 0 else 1 for g in grid)
        window = tuple(min(3, g // t) for g, t in zip(grid, tile))
        return tile_window(grid, tile, window)
    return parse(expr, grid=grid)


def _grid_of(expr: str) -> tuple[bool, Grid | None]:
    """``(is a video mask, the grid it names itself or None)``; raises ValueError for a bad expression."""
    if expr.strip() in ("tile_window", "per_head"):
        return True, None
    if expr.strip() == "key_padding":
        return False, None
    try:
        mask = parse(expr)
    except ValueError:
        parse(expr, grid=(1, 1, 1))  # raises the parser's error when the grid is not what is missing
        return True, None
    grids = {leaf.grid for leaf in mask.leaves() if hasattr(leaf, "grid")}
    if len(grids) > 1:
        raise ValueError(f"masks: {expr!r} names several grids {sorted(grids)}; expected one")
    return (True, grids.pop()) if grids else (False, None)


def naive_attention(q, k, v, mask: Mask | None, scale: float):
    """What most model code does: full scores, ``masked_fill`` with the dtype's min, softmax, matmul."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, L, L)
    if mask is not None:
        b, h, n, m = scores.shape
        scores = scores.masked_fill(~mask.to_bool(b, h, n, m, device=q.device), torch.finfo(scores.dtype).min)
    return torch.matmul(scores.softmax(-1), v)  # (B, H, L, D)


def default_backends(device: str) -> list[str]:
    """Every registered backend and ``naive``; on CPU not ``flex``, which compiles a kernel per mask there
    (seconds each, past torch's recompile limit an eager fallback) and is never what ``auto`` runs on CPU."""
    names = [*list_backends(), NAIVE]
    if torch.device(device).type == "cpu":
        names.remove("flex")
    return names


def run(cfg: Config, on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Run every case on every backend; ``on_row`` sees each row as soon as it is measured."""
    backends = list(cfg.backends) if cfg.backends is not None else default_backends(cfg.device)
    rows: list[Row] = []
    saved = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        for case in cases(cfg):
            for row in _run_case(cfg, case, backends):
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    finally:
        torch.set_num_threads(saved)
    return rows


def _run_case(cfg: Config, case: Case, backends: list[str]) -> Iterator[Row]:
    dev, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    shape = (cfg.batch, cfg.heads, case.length, cfg.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(dev, dtype).requires_grad_(cfg.backward) for _ in range(3))
    grad_out = torch.randn(shape, generator=gen).to(dev, dtype)
    scale = cfg.head_dim ** -0.5
    density = case.mask.density(cfg.batch, cfg.heads, case.length, case.length)
    scores_gib = cfg.batch * cfg.heads * case.length * case.length * 4 / 2**30

    def runner(fn: Callable[[], torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
        def go() -> list[torch.Tensor]:
            for t in (q, k, v):
                t.grad = None
            out = fn()
            if cfg.backward:
                out.backward(grad_out)
                return [out.detach(), q.grad, k.grad, v.grad]
            return [out]
        return go

    def timed(go: Callable[[], list[torch.Tensor]]) -> float:
        _sync(dev)
        clock = cfg.clock_fn
        t0 = clock()
        go()
        _sync(dev)
        return clock() - t0

    dense_go = runner(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale))

    def measure(go: Callable[[], list[torch.Tensor]], warmed: int) -> tuple[float, float, float]:
        """Median ms of ``go``, median ms of dense runs interleaved with it, and go's peak MiB."""
        for _ in range(max(0, cfg.warmup - warmed)):
            go()
        times, dense_times = [], []
        for _ in range(cfg.repeats):
            times.append(timed(go))
            if go is not dense_go:
                dense_times.append(timed(dense_go))
        ms = 1e3 * statistics.median(times)
        return ms, 1e3 * statistics.median(dense_times) if dense_times else ms, peak_bytes(go, dev) / 2**20

    ctx = torch.enable_grad() if cfg.backward else torch.no_grad()
    with ctx:
        dense = Row(case.expr, case.tokens, "sdpa, no mask", 1.0, note="the baseline: every pair computed")
        dense.ms, _, dense.peak_mib = measure(dense_go, warmed=0)
        dense.speedup = 1.0
        yield dense

        oracle_name = "reference" if scores_gib <= cfg.max_scores_gib else "sdpa"
        expected = [t.clone() for t in runner(lambda: attend(q, k, v, case.mask, backend=oracle_name))()]
        call = Call.of(q, k, v, case.mask, None)
        auto_name = select(call).name
        for name in backends:
            row = Row(case.expr, case.tokens, name, density, oracle=oracle_name, auto=name == auto_name)
            if name in MATERIALISING and scores_gib > cfg.max_scores_gib:
                row.note = f"skipped: would materialise {scores_gib:.1f} GiB of scores (> {cfg.max_scores_gib:g})"
                yield row
                continue
            if name == NAIVE:
                fn = lambda: naive_attention(q, k, v, case.mask, scale)  # noqa: E731
            else:
                why = get_backend(name).why_not(call)
                if why is not None:
                    row.note = f"cannot run: {why}"
                    yield row
                    continue
                fn = lambda name=name: attend(q, k, v, case.mask, backend=name)  # noqa: E731
            go = runner(fn)
            got = go()  # the check run is the first warm-up run
            row.diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, expected))
            del got
            row.ms, dense_ms, row.peak_mib = measure(go, warmed=1)
            row.speedup = dense_ms / row.ms
            yield row


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


QUICK = Config(lengths=(1024, 2048), grids=((4, 16, 16),), heads=4, repeats=3)


def quick(**overrides) -> Config:
    """The ``--quick`` configuration, with overrides."""
    return replace(QUICK, **overrides)
