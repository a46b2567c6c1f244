"""Configuration of :class:`veil.models.WanDiT`: sizes, per-layer attention patterns, per-layer feed-forward, presets.

Legend: T H W the patch grid (latent frames / rows / columns divided by the patch size), L = T*H*W tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from veil import masks as M
from veil.layers.feedforward import Activation
from veil.layers.positions import wan_rope_split

PatternKind = Literal["full", "window_3d", "tile_window", "spatial", "temporal", "frame_causal", "radial", "per_head"]
FeedForwardKind = Literal["dense", "moe"]
_KINDS = ("full", "window_3d", "tile_window", "spatial", "temporal", "frame_causal", "radial", "per_head")
_UNSTRUCTURED = ("full", "spatial", "temporal", "frame_causal", "radial", "per_head")
_WHOLE = 2**31 - 1  # a window_3d extent covering any grid (odd, as window_3d requires)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _triple(name: str, value: object, odd: bool = False) -> tuple[int, int, int]:
    ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 and (not odd or v % 2) for v in value)
    if not ok:
        what = "odd positive ints" if odd else "positive ints"
        raise ValueError(f"{name}: expected 3 {what} (t, h, w), got {value!r}")
    return tuple(value)  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class AttentionPattern:
    """Which video tokens one layer's self-attention may see (a :mod:`veil.masks` video mask).

    Kinds:
        ``"full"``: every token (Wan).
        ``"window_3d"``: a box of ``window = (wt, wh, ww)`` tokens (odd extents) centred on the query
            (:func:`veil.masks.window_3d`); ``(wt, large, large)`` is the Wan article's local temporal window.
        ``"tile_window"``: sliding-tile attention: tiles of ``tile`` tokens, a window of ``window`` tiles
            (:func:`veil.masks.tile_window`). The model permutes tokens into tile order once per forward.
        ``"spatial"`` / ``"temporal"``: within the frame / across frames at one position (Latte's factorised
            attention). ``"frame_causal"``: the query's frame and every earlier one.
        ``"radial"``: Radial Attention's static mask (:func:`veil.masks.radial`, with ``radial`` its keyword
            arguments, e.g. ``{"decay": 0.5, "min_width": 128, "sink_frames": 1}``).
        ``"per_head"``: ``heads`` patterns split the heads evenly, in order (Sparse VideoGen's spatial and temporal
            heads: ``heads=("spatial", "temporal")``); :func:`veil.masks.per_head`.

    Args:
        kind: one of the kinds above.
        window: ``window_3d``: odd box extents in tokens; ``tile_window``: window extents in tiles.
        tile: ``tile_window`` only: tile extents in tokens (the patch grid must be divisible by it).
        dilation, border: ``window_3d`` only: see :func:`veil.masks.window_3d` (NATTEN's dilated and shifted
            neighbourhoods).
        radial: ``radial`` only: keyword arguments of :func:`veil.masks.radial`.
        heads: ``per_head`` only: the patterns of the head groups (raster-order kinds, not ``tile_window``).
    """

    kind: PatternKind = "full"
    window: tuple[int, int, int] | None = None
    tile: tuple[int, int, int] | None = None
    dilation: tuple[int, int, int] = (1, 1, 1)
    border: Literal["clip", "shift"] = "clip"
    radial: tuple[tuple[str, object], ...] | dict | None = None
    heads: tuple[AttentionPattern | str, ...] | None = None

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind: expected one of {_KINDS}, got {self.kind!r}")
        if self.kind in _UNSTRUCTURED and (self.window is not None or self.tile is not None):
            raise ValueError(f"window/tile: a {self.kind!r} pattern takes neither, got window={self.window}, "
                             f"tile={self.tile}")
        if self.kind == "window_3d":
            object.__setattr__(self, "window", _triple("window", self.window, odd=True))
            if self.tile is not None:
                raise ValueError(f"tile: a 'window_3d' pattern takes no tile, got {self.tile}")
        if self.kind == "tile_window":
            object.__setattr__(self, "window", _triple("window", self.window))
            object.__setattr__(self, "tile", _triple("tile", self.tile))
        object.__setattr__(self, "dilation", _triple("dilation", self.dilation))
        if self.kind != "window_3d" and (self.dilation != (1, 1, 1) or self.border != "clip"):
            raise ValueError(f"dilation/border: only a 'window_3d' pattern takes them, got kind={self.kind!r}")
        if self.border not in ("clip", "shift"):
            raise ValueError(f"border: expected 'clip' or 'shift', got {self.border!r}")
        if self.kind == "radial":
            opts = dict(self.radial or {})
            M.radial((2, 1, 1), **opts)  # the keyword names and values are checked here, once
            object.__setattr__(self, "radial", tuple(sorted(opts.items())))  # hashable: the config is frozen
        elif self.radial is not None:
            raise ValueError(f"radial: only a 'radial' pattern takes it, got kind={self.kind!r}")
        if self.kind == "per_head":
            if not isinstance(self.heads, (tuple, list)) or not self.heads:
                raise ValueError(f"heads: a 'per_head' pattern needs a non-empty tuple of patterns, got {self.heads!r}")
            parts = tuple(_as_pattern(p, f"heads[{i}]") for i, p in enumerate(self.heads))
            bad = [p.kind for p in parts if p.kind in ("tile_window", "per_head")]
            if bad:
                raise ValueError(f"heads: per-head patterns must be raster-order kinds, got {bad}")
            object.__setattr__(self, "heads", parts)
        elif self.heads is not None:
            raise ValueError(f"heads: only a 'per_head' pattern takes it, got kind={self.kind!r}")

    @classmethod
    def temporal_window(cls, frames: int) -> AttentionPattern:
        """The Wan article's local temporal window: ``frames`` frames (odd) centred on the query, whole frames."""
        return cls(kind="window_3d", window=(frames, _WHOLE, _WHOLE))

    def mask(self, grid: tuple[int, int, int], tile_order: bool = False, heads: int | None = None) -> M.Mask | None:
        """The mask over a patch ``grid`` (None for ``"full"``); ``tile_order``: tokens are in tile order; ``heads``:
        the layer's head count (``per_head`` only).

        Raises:
            ValueError: ``per_head`` whose groups do not divide ``heads``.
        """
        if self.kind == "full":
            return None
        if self.kind == "window_3d":
            return M.window_3d(grid, self.window, self.dilation, self.border)
        if self.kind == "radial":
            return M.radial(grid, **dict(self.radial))
        if self.kind == "per_head":
            n = len(self.heads)
            if heads is None or heads % n:
                raise ValueError(f"heads: a per_head pattern of {n} groups needs a head count divisible by {n}, "
                                 f"got {heads}")
            full = M.full()
            return M.per_head([p.mask(grid) or full for p in self.heads for _ in range(heads // n)])
        if self.kind == "tile_window":
            return M.tile_window(grid, self.tile, self.window, order="tile" if tile_order else "raster")
        return {"spatial": M.spatial, "temporal": M.temporal, "frame_causal": M.frame_causal}[self.kind](grid)


def _as_pattern(value: object, where: str) -> AttentionPattern:
    if isinstance(value, AttentionPattern):
        return value
    if isinstance(value, str):
        if value not in _UNSTRUCTURED:
            raise ValueError(f"{where}: a string pattern must be one of {_UNSTRUCTURED} (window_3d and tile_window "
                             f"need an AttentionPattern with their window), got {value!r}")
        return AttentionPattern(kind=value)  # type: ignore[arg-type]
    if isinstance(value, Mapping):  # a pattern saved as JSON (checkpoint metadata, TOML)
        fields = {f.name for f in dataclasses.fields(AttentionPattern)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown AttentionPattern fields {unknown}; expected some of {sorted(fields)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        return AttentionPattern(**kw)
    raise TypeError(f"{where}: expected an AttentionPattern, a pattern name or a dict of its fields, got "
                    f"{type(value).__name__}")


@dataclass(frozen=True, kw_only=True)
class WanMoE:
    """Experts of the layers whose feed-forward is ``"moe"`` (:class:`veil.layers.MoE`).

    Args:
        num_experts, top_k, capacity_factor: as :class:`veil.layers.MoE`.
        hidden: expert hidden width (default: the config's ``ffn_dim``).
        activation, gated: expert MLP; the default (tanh-GELU, not gated) is Wan's dense feed-forward.
    """

    num_experts: int = 8
    top_k: int = 2
    capacity_factor: float | None = None
    hidden: int | None = None
    activation: Activation = "gelu_tanh"
    gated: bool = False

    def __post_init__(self):
        _positive_int("num_experts", self.num_experts)
        _positive_int("top_k", self.top_k)
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k: expected at most num_experts={self.num_experts}, got {self.top_k}")
        if self.hidden is not None:
            _positive_int("hidden", self.hidden)


@dataclass(kw_only=True)
class WanConfig:
    """Sizes and options of a Wan 2.x DiT. Defaults are Wan 2.1 T2V 1.3B; see :data:`WAN_PRESETS`.

    Args:
        in_channels, out_channels: latent channels C in and out.
        patch_size: ``(pt, ph, pw)``; the latent ``(F, H, W)`` must be divisible by it.
        dim: model width E. heads: N (E divisible by N; head dim D = E / N, every part of Wan's RoPE split
            ``(D - 4 (D // 6), 2 (D // 6), 2 (D // 6))`` even and > 0).
        num_layers: blocks. ffn_dim: hidden width of the dense feed-forward.
        text_dim: width of the text encoder's embeddings (umT5-XXL: 4096). freq_dim: timestep sinusoid width.
        eps: eps of every LayerNorm and of the QK RMSNorms. cross_attn_norm: LayerNorm (affine) before the
            cross-attention (True in every released Wan).
        rope_base: RoPE theta.
        mask_text_padding: True: text tokens past ``context_lengths`` are never attended. False: Wan's original
            behaviour (zero-padded text tokens are attended; ``context_lengths`` is ignored), for checkpoint
            fidelity.
        pooled_text: also condition on the text globally, as SD3 and Flux do with their pooled text vector: the
            mean of the valid text tokens, through its own text MLP, is added to the timestep embedding that
            modulates every block and the head. Not in Wan (False keeps Wan's weights and outputs).
        abs_pos: also add a fixed 3D sin-cos position embedding to the patch tokens (before the first block), as
            Latte adds its fixed spatial and temporal ones: each token then knows its absolute frame and place,
            which RoPE's relative positions only give through boundary effects. Width split ``(E - 4 (E // 6),
            2 (E // 6), 2 (E // 6))`` over (frame, row, column), positions ``0 .. n - 1`` of the patch grid.
            No parameters; not in Wan (False keeps Wan's outputs).
        attention: one pattern for every layer, or one per layer: an :class:`AttentionPattern` or a name
            (``"full"``, ``"spatial"``, ``"temporal"``, ``"frame_causal"``).
        tile_permute: with ``tile_window`` layers, permute the tokens into tile order once per forward (every
            tile_window layer must then share one tile). False keeps raster order with the raster-order mask:
            the same result, for kernels that do not exploit contiguous tiles.
        feed_forward: ``"dense"`` or ``"moe"``, for every layer or one per layer. moe: the experts (required
            when a layer is ``"moe"``).
        backend: :func:`veil.attend` backend of every attention.
    """

    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    dim: int = 1536
    heads: int = 12
    num_layers: int = 30
    ffn_dim: int = 8960
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    cross_attn_norm: bool = True
    rope_base: float = 10000.0
    mask_text_padding: bool = True
    pooled_text: bool = False
    abs_pos: bool = False
    attention: AttentionPattern | str | tuple[AttentionPattern | str, ...] = "full"
    tile_permute: bool = True
    feed_forward: FeedForwardKind | tuple[FeedForwardKind, ...] = "dense"
    moe: WanMoE | None = None
    backend: str = "auto"

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "dim", "heads", "num_layers", "ffn_dim", "text_dim", "freq_dim"):
            _positive_int(name, getattr(self, name))
        self.patch_size = _triple("patch_size", self.patch_size)
        if self.dim % self.heads:
            raise ValueError(f"heads: must divide dim={self.dim}, got {self.heads}")
        if self.abs_pos and any(d <= 0 or d % 2 for d in wan_rope_split(self.dim)):
            raise ValueError(f"abs_pos: the width split {wan_rope_split(self.dim)} of dim={self.dim} must be even and "
                             f"> 0 in every part (a multiple of 12 works)")
        split = wan_rope_split(self.head_dim)
        if any(d <= 0 or d % 2 for d in split):
            raise ValueError(f"heads: head dim {self.head_dim} (dim / heads) gives the RoPE split {split}; every part "
                             f"must be even and > 0 (a multiple of 6 with an even remainder works, e.g. 12, 64, 128)")
        if not self.eps > 0:
            raise ValueError(f"eps: expected > 0, got {self.eps!r}")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or self.rope_base <= 1:
            raise ValueError(f"rope_base: expected a number > 1, got {self.rope_base!r}")
        patterns = self.layer_patterns()
        for i, p in enumerate(patterns):
            if p.kind == "per_head" and self.heads % len(p.heads):
                raise ValueError(f"attention[{i}]: a per_head pattern of {len(p.heads)} groups needs heads divisible "
                                 f"by {len(p.heads)}, got heads={self.heads}")
        tiles = {p.tile for p in patterns if p.kind == "tile_window"}
        if self.tile_permute and len(tiles) > 1:
            raise ValueError(f"attention: with tile_permute=True every tile_window layer must share one tile (the "
                             f"tokens are permuted once per forward), got tiles {sorted(tiles)}")
        kinds = self.layer_feed_forward()
        if "moe" in kinds and self.moe is None:
            raise ValueError("moe: a layer has feed_forward 'moe' but moe is None; pass a WanMoE")
        if self.moe is not None and not isinstance(self.moe, WanMoE):
            raise TypeError(f"moe: expected a WanMoE or None, got {type(self.moe).__name__}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def _per_layer(self, value: object, name: str) -> tuple:
        if isinstance(value, (tuple, list)):
            if len(value) != self.num_layers:
                raise ValueError(f"{name}: expected one entry per layer ({self.num_layers}), got {len(value)}")
            return tuple(value)
        return (value,) * self.num_layers

    def layer_patterns(self) -> tuple[AttentionPattern, ...]:
        """The attention pattern of each layer."""
        return tuple(_as_pattern(v, f"attention[{i}]") for i, v in enumerate(self._per_layer(self.attention,
                                                                                             "attention")))

    def layer_feed_forward(self) -> tuple[FeedForwardKind, ...]:
        """The feed-forward kind (``"dense"`` / ``"moe"``) of each layer."""
        kinds = self._per_layer(self.feed_forward, "feed_forward")
        for i, k in enumerate(kinds):
            if k not in ("dense", "moe"):
                raise ValueError(f"feed_forward[{i}]: expected 'dense' or 'moe', got {k!r}")
        return kinds

    def tile(self) -> tuple[int, int, int] | None:
        """The tile the tokens are permuted to, or None (raster order throughout)."""
        if not self.tile_permute:
            return None
        return next((p.tile for p in self.layer_patterns() if p.kind == "tile_window"), None)

    @classmethod
    def preset(cls, name: str, **overrides) -> WanConfig:
        """A fresh config from :data:`WAN_PRESETS`, with ``overrides`` replacing fields.

        Raises:
            ValueError: unknown preset name.
        """
        if name not in WAN_PRESETS:
            raise ValueError(f"name: expected one of {sorted(WAN_PRESETS)}, got {name!r}")
        return dataclasses.replace(WAN_PRESETS[name], **overrides)


# Sources: Wan-Video/Wan2.1 wan/configs/wan_t2v_1_3B.py and wan_t2v_14B.py; Wan-Video/Wan2.2
# wan/configs/wan_t2v_A14B.py (two experts of the 14B size, boundary 0.875) and wan_ti2v_5B.py (Wan2.2 VAE:
# 48 latent channels). Text: umT5-XXL (4096), freq_dim 256, eps 1e-6, qk_norm and cross_attn_norm True in all.
WAN_PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(dim=1536, heads=12, num_layers=30, ffn_dim=8960),
    "wan2.1-t2v-14b": WanConfig(dim=5120, heads=40, num_layers=40, ffn_dim=13824),
    "wan2.2-t2v-a14b": WanConfig(dim=5120, heads=40, num_layers=40, ffn_dim=13824),  # per expert
    "wan2.2-ti2v-5b": WanConfig(in_channels=48, out_channels=48, dim=3072, heads=24, num_layers=30, ffn_dim=14336),
    # tests and smoke runs: head dim 12 -> RoPE split (4, 4, 4)
    "tiny": WanConfig(in_channels=4, out_channels=4, dim=24, heads=2, num_layers=2, ffn_dim=64, text_dim=16,
                      freq_dim=32),
}
