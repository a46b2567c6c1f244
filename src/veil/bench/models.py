"""``veil bench models``: veil's Wan and Latte against diffusers' on the same weights, and Wan's sparse patterns.

Two parts, in one run:

- **parity**: for each family (``wan``: diffusers ``WanTransformer3DModel`` vs :class:`veil.models.WanDiT`;
  ``latte``: ``LatteTransformer3DModel`` vs :class:`veil.models.LatteDiT`) at each size, diffusers' model is
  built from a config with random weights and veil's from it with ``from_diffusers``. The outputs (and, for
  forward + backward, the latent's gradient) are compared first; a pair that differs by more than
  ``tolerance`` is not timed (its row says so). Then the forward and the forward + backward are timed with
  the two models' runs interleaved (the order alternating each repeat), so that a busy machine slows both
  alike; the speed-up is the median over repeats of ``t(diffusers) / t(veil)`` measured side by side. Peak
  memory per call is :func:`veil.bench.memory.peak_bytes`.
- **sparse**: one veil Wan model at ``sparse_latent`` (>= 16k video tokens by default), its attention pattern
  set to ``full`` and to each sparse pattern on every layer (same weights). For each pattern: the self-attention
  call alone (``veil.attend`` on ``[1, N, L, D]`` under the mask the model builds, tile order for
  ``tile_window``) against full attention, interleaved; its ideal speed-up ``1 / density``; the whole model
  against the full-attention model, interleaved; the attention share of the full model
  (``layers * t(full attention) / t(full model)``) and the model's ideal speed-up from it (Amdahl:
  ``1 / (1 - share + share * density)``).

Legend: L video tokens, N heads, D head dim, E model width, (T, H', W') the patch grid.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from veil.attention import attend
from veil.bench.memory import peak_bytes
from veil.models import AttentionPattern, LatteDiT, WanDiT

Tensor = torch.Tensor
Latent = tuple[int, int, int]
FAMILIES = ("wan", "latte")
MODES = ("forward", "forward+backward")


@dataclass(frozen=True, kw_only=True)
class Size:
    """One model size: width ``dim`` = heads x ``head_dim``, ``layers`` (Wan blocks; Latte spatial + temporal
    pairs, diffusers' ``num_layers``), the latent ``(F, H, W)`` and the text length."""

    name: str
    dim: int
    head_dim: int
    layers: int
    latent: Latent
    text_len: int = 64

    def __post_init__(self):
        for f in ("dim", "head_dim", "layers", "text_len"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f}: expected a positive int, got {v!r}")
        if self.dim % self.head_dim:
            raise ValueError(f"dim: expected a multiple of head_dim={self.head_dim}, got {self.dim}")
        if len(self.latent) != 3 or any(s < 1 for s in self.latent) or self.latent[1] % 2 or self.latent[2] % 2:
            raise ValueError(f"latent: expected (F, H, W) with even H and W, got {self.latent}")


# Wan: head dim 128 as every Wan 2.x model, 16 latent channels, patch (1, 2, 2), feed-forward 4 E.
# Latte: head dim 64, 4 latent channels, patch 2, learn_sigma, adaLN-single and text cross-attention (Latte-1).
WAN_SIZES = (Size(name="S", dim=256, head_dim=128, layers=2, latent=(4, 16, 16)),
             Size(name="M", dim=512, head_dim=128, layers=4, latent=(8, 32, 32)))
LATTE_SIZES = (Size(name="S", dim=256, head_dim=64, layers=2, latent=(4, 16, 16)),
               Size(name="M", dim=512, head_dim=64, layers=2, latent=(8, 32, 32)))
SPARSE_PATTERNS = ("tile_window", "window_3d")


@dataclass(kw_only=True)
class Config:
    """What ``veil bench models`` runs (CPU, float32 unless ``device`` / ``dtype`` say otherwise).

    ``threads``: torch intra-op threads during the run (None: torch's default).
    ``sparse_patterns``: ``"tile_window"`` (tiles of a quarter of each patch-grid axis, a window of 3 tiles
    per axis), ``"window_3d"`` (a ``sparse_window`` box around each token); an empty tuple skips the part.
    """

    families: tuple[str, ...] = FAMILIES
    wan_sizes: tuple[Size, ...] = WAN_SIZES
    latte_sizes: tuple[Size, ...] = LATTE_SIZES
    modes: tuple[str, ...] = MODES
    sparse_size: Size = Size(name="sparse", dim=256, head_dim=128, layers=2, latent=(16, 64, 64))
    sparse_patterns: tuple[str, ...] = SPARSE_PATTERNS
    sparse_window: Latent = (3, 9, 9)
    tolerance: float = 1e-4
    repeats: int = 5
    warmup: int = 1
    memory: bool = True
    max_check_gib: float = 1.0
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads: expected None or a positive int, got {self.threads!r}")
        for f, allowed in (("families", FAMILIES), ("modes", MODES), ("sparse_patterns", SPARSE_PATTERNS)):
            for v in getattr(self, f):
                if v not in allowed:
                    raise ValueError(f"{f}: expected some of {', '.join(allowed)}, got {v!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats: expected a positive int, got {self.repeats!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected an int >= 0, got {self.warmup}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance: expected a number >= 0, got {self.tolerance}")
        if any(w < 1 or w % 2 == 0 for w in self.sparse_window):
            raise ValueError(f"sparse_window: expected three odd positive extents, got {self.sparse_window}")

    def sizes(self, family: str) -> tuple[Size, ...]:
        return self.wan_sizes if family == "wan" else self.latte_sizes


@dataclass
class ParityRow:
    """veil against diffusers on one family, size and mode; times are None when the pair was not timed."""

    family: str
    size: str
    tokens: str
    params_m: float
    mode: str
    diff: float
    diffusers_ms: float | None = None
    veil_ms: float | None = None
    speedup: float | None = None
    diffusers_mib: float | None = None
    veil_mib: float | None = None
    note: str = ""


@dataclass
class SparseRow:
    """One Wan attention pattern against ``full`` on the same model and tokens."""

    pattern: str
    tokens: str
    density: float
    attn_ms: float
    attn_full_ms: float
    attn_speedup: float
    model_ms: float
    model_full_ms: float
    model_speedup: float
    attn_share: float
    diff: float | None = None
    note: str = ""

    @property
    def ideal(self) -> float:
        return 1.0 / self.density

    @property
    def pct_ideal(self) -> float:
        return 100.0 * self.attn_speedup / self.ideal

    @property
    def model_ideal(self) -> float:
        return 1.0 / (1.0 - self.attn_share + self.attn_share * self.density)


# -- building the pairs -----------------------------------------------------------------------------------------
@dataclass
class Pair:
    """Two models on the same weights and their inputs; ``call(model, x)`` returns the output tensor."""

    family: str
    size: Size
    theirs: nn.Module
    ours: nn.Module
    x: Tensor
    call_theirs: Callable[[Tensor], Tensor]
    call_ours: Callable[[Tensor], Tensor]
    grid: Latent


def _diffusers():
    try:
        import diffusers
    except ImportError as e:  # a dev dependency: the library itself never needs it
        raise RuntimeError("veil bench models compares with diffusers: pip install 'veil[dev]'") from e
    return diffusers


def build_pair(family: str, size: Size, *, seed: int = 0, device: str = "cpu") -> Pair:
    """diffusers' model with random weights, veil's from it (``from_diffusers``), and inputs for them.

    Raises:
        ValueError: unknown family.
    """
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    diffusers = _diffusers()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    f, h, w = size.latent
    heads = size.dim // size.head_dim
    t = torch.tensor([500.0], device=device)
    if family == "wan":
        theirs = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=size.head_dim, in_channels=16,
            out_channels=16, text_dim=size.dim, freq_dim=256, ffn_dim=4 * size.dim, num_layers=size.layers,
            cross_attn_norm=True, eps=1e-6)
        with torch.no_grad():  # norms start at 1 / 0: move them so that a misplaced weight would show
            for name, p in theirs.named_parameters():
                if "norm" in name:
                    p.add_(0.5 * torch.randn_like(p))
        theirs = theirs.to(device).eval()
        ours = WanDiT.from_diffusers(theirs).to(device).eval()
        x = torch.randn(1, 16, f, h, w, generator=g).to(device)
        text = torch.randn(1, size.text_len, size.dim, generator=g).to(device)
        return Pair(family, size, theirs, ours, x, lambda x: theirs(x, t, text, return_dict=False)[0],
                    lambda x: ours(x, t, text), (f, h // 2, w // 2))
    theirs = diffusers.LatteTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=size.head_dim, in_channels=4, out_channels=8,
        num_layers=size.layers, cross_attention_dim=size.dim, attention_bias=True, sample_size=h, patch_size=2,
        activation_fn="gelu-approximate", norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=size.dim, video_length=f).to(device).eval()
    ours = LatteDiT.from_diffusers(theirs).to(device).eval()
    x = torch.randn(1, 4, f, h, w, generator=g).to(device)
    text = torch.randn(1, size.text_len, size.dim, generator=g).to(device)
    return Pair(family, size, theirs, ours, x,
                lambda x: theirs(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0],
                lambda x: ours(x, t, encoder_hidden_states=text), (f, h // 2, w // 2))


# -- timing -----------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Sequence[Callable[[], object]], repeats: int, warmup: int,
                device: torch.device | str = "cpu") -> list[list[float]]:
    """Seconds of each of ``fns`` per repeat, the calls interleaved (order reversed every other repeat).

    Returns:
        ``times[i][r]``: function ``i``, repeat ``r``.
    """
    device = torch.device(device)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[i]()
            _sync(device)
            times[i].append(time.perf_counter() - t0)
    return times


def paired_speedup(base: list[float], other: list[float]) -> float:
    """Median over repeats of ``base[r] / other[r]`` (each pair measured side by side)."""
    return statistics.median(b / o for b, o in zip(base, other))


def runner(model: nn.Module, call: Callable[[Tensor], Tensor], x: Tensor, backward: bool,
           grad_out: Tensor | None) -> Callable[[], list[Tensor]]:
    """A timed unit: ``call(x)`` without gradients (``[out]``), or with ``grad_out``'s backward (``[out, x.grad]``)."""
    def go() -> list[Tensor]:
        if not backward:
            with torch.no_grad():
                return [call(x)]
        model.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_(True)
        out = call(xi)
        out.backward(grad_out)
        return [out.detach(), xi.grad]
    return go


def _runner(pair: Pair, ours: bool, backward: bool, grad_out: Tensor | None) -> Callable[[], list[Tensor]]:
    if ours:
        return runner(pair.ours, pair.call_ours, pair.x, backward, grad_out)
    return runner(pair.theirs, pair.call_theirs, pair.x, backward, grad_out)


def parity_rows(pair: Pair, cfg: Config) -> Iterator[ParityRow]:
    """The rows of one pair: outputs compared, then timed and measured when they agree within tolerance."""
    dev = torch.device(cfg.device)
    t, h, w = pair.grid
    tokens = f"{t}x{h}x{w} = {t * h * w}"
    params = sum(p.numel() for p in pair.ours.parameters()) / 1e6
    for mode in cfg.modes:
        backward = mode == "forward+backward"
        grad_out = None
        if backward:
            with torch.no_grad():
                shape = pair.call_ours(pair.x).shape
            grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed + 2)).to(dev)
        go_theirs, go_ours = _runner(pair, False, backward, grad_out), _runner(pair, True, backward, grad_out)
        want, got = go_theirs(), go_ours()  # the check runs are the first warm-up runs
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(want, got))
        del want, got
        row = ParityRow(pair.family, pair.size.name, tokens, params, mode, diff)
        if not diff <= cfg.tolerance:
            row.note = f"not timed: outputs differ by {diff:.2e} > tolerance {cfg.tolerance:g}"
            yield row
            continue
        times = interleaved([go_theirs, go_ours], cfg.repeats, max(0, cfg.warmup - 1), dev)
        row.diffusers_ms, row.veil_ms = (1e3 * statistics.median(ts) for ts in times)
        row.speedup = paired_speedup(*times)
        if cfg.memory:
            row.diffusers_mib = peak_bytes(go_theirs, dev) / 2**20
            row.veil_mib = peak_bytes(go_ours, dev) / 2**20
        yield row


# -- sparse patterns --------------------------------------------------------------------------------------------
def pattern_for(name: str, grid: Latent, window: Latent) -> AttentionPattern:
    """The :class:`AttentionPattern` a sparse row runs on the patch grid ``grid`` (see :class:`Config`)."""
    if name == "tile_window":
        tile = tuple(g // 4 if g % 4 == 0 else 1 for g in grid)
        return AttentionPattern(kind="tile_window", tile=tile, window=tuple(min(3, g // t) for g, t in zip(grid, tile)))
    if name == "window_3d":
        return AttentionPattern(kind="window_3d", window=window)
    raise ValueError(f"pattern: expected one of {', '.join(SPARSE_PATTERNS)}, got {name!r}")


def sparse_rows(cfg: Config) -> Iterator[SparseRow]:
    """Each sparse pattern against full attention on one veil Wan model (weights shared by every pattern)."""
    if not cfg.sparse_patterns:
        return
    dev = torch.device(cfg.device)
    pair = build_pair("wan", cfg.sparse_size, seed=cfg.seed, device=cfg.device)
    full_model, grid = pair.ours, pair.grid
    del pair  # diffusers' copy is not needed here
    t, h, w = grid
    n = t * h * w
    heads, d = full_model.config.heads, full_model.config.head_dim
    g = torch.Generator().manual_seed(cfg.seed + 3)
    q, k, v = (torch.randn(1, heads, n, d, generator=g).to(dev) for _ in range(3))
    x = torch.randn(1, 16, *cfg.sparse_size.latent, generator=g).to(dev)
    text = torch.randn(1, cfg.sparse_size.text_len, cfg.sparse_size.dim, generator=g).to(dev)
    ts = torch.tensor([500.0], device=dev)
    check = n * n * 4 / 2**30 <= cfg.max_check_gib
    for name in cfg.sparse_patterns:
        pattern = pattern_for(name, grid, cfg.sparse_window)
        mask = pattern.mask(grid, tile_order=pattern.kind == "tile_window")
        model = WanDiT(replace(full_model.config, attention=pattern)).to(dev).eval()
        model.load_state_dict(full_model.state_dict())
        with torch.no_grad():
            diff = None
            if check:  # the sparse kernel against dense SDPA with the mask materialised
                want = attend(q, k, v, mask, backend="sdpa")
                diff = float((attend(q, k, v, mask) - want).abs().max())
                del want
            fns = [lambda: attend(q, k, v, None), lambda mask=mask: attend(q, k, v, mask),
                   lambda: full_model(x, ts, text), lambda model=model: model(x, ts, text)]
            attn_full, attn, model_full_t, model_t = interleaved(fns, cfg.repeats, cfg.warmup, dev)
        med = statistics.median
        share = min(1.0, full_model.config.num_layers * med(attn_full) / med(model_full_t))
        yield SparseRow(f"{name} {_describe(pattern)}", f"{t}x{h}x{w} = {n}", mask.density(1, heads, n, n),
                        1e3 * med(attn), 1e3 * med(attn_full), paired_speedup(attn_full, attn),
                        1e3 * med(model_t), 1e3 * med(model_full_t), paired_speedup(model_full_t, model_t), share, diff,
                        "" if check else "unchecked: the dense check would exceed max_check_gib")
        del model


def _describe(p: AttentionPattern) -> str:
    if p.kind == "tile_window":
        return f"tile {p.tile} window {p.window}"
    return f"window {p.window}"


def run(cfg: Config, on_parity: Callable[[ParityRow], None] | None = None,
        on_sparse: Callable[[SparseRow], None] | None = None) -> tuple[list[ParityRow], list[SparseRow]]:
    """Both parts; the callbacks see each row as soon as it is measured. ``cfg.threads`` sets torch's
    intra-op threads for the run (on a CPU shared with other jobs, fewer threads than cores avoids
    oversubscription) and restores them after."""
    saved = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, on_parity, on_sparse)
    finally:
        torch.set_num_threads(saved)


def _run(cfg: Config, on_parity: Callable[[ParityRow], None] | None,
         on_sparse: Callable[[SparseRow], None] | None) -> tuple[list[ParityRow], list[SparseRow]]:
    parity: list[ParityRow] = []
    for family in cfg.families:
        for size in cfg.sizes(family):
            pair = build_pair(family, size, seed=cfg.seed, device=cfg.device)
            for row in parity_rows(pair, cfg):
                parity.append(row)
                if on_parity is not None:
                    on_parity(row)
            del pair
    sparse: list[SparseRow] = []
    for row in sparse_rows(cfg):
        sparse.append(row)
        if on_sparse is not None:
            on_sparse(row)
    return parity, sparse


QUICK = Config(
    wan_sizes=(Size(name="S", dim=128, head_dim=64, layers=1, latent=(2, 8, 8), text_len=16),
               Size(name="M", dim=128, head_dim=64, layers=2, latent=(4, 16, 16), text_len=16)),
    latte_sizes=(Size(name="S", dim=128, head_dim=64, layers=1, latent=(2, 8, 8), text_len=16),
                 Size(name="M", dim=128, head_dim=64, layers=1, latent=(4, 16, 16), text_len=16)),
    sparse_size=Size(name="sparse", dim=128, head_dim=64, layers=1, latent=(4, 32, 32), text_len=16),
    repeats=3,
)


def quick(**overrides) -> Config:
    """The ``--quick`` configuration, with overrides."""
    return dataclasses.replace(QUICK, **overrides)
