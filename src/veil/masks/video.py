"""Masks over a video token grid ``(T, H, W)``.

Tokens are in raster order (frame ``t``, then row ``h``, then column ``w``): token ``i`` sits at
``t = i // (H*W)``, ``h = (i // W) % H``, ``w = i % W``. ``tile_window`` can also be stated over tokens in
*tile order* (see :func:`to_tile_order`), where every tile of ``tt x th x tw`` tokens is contiguous.
These masks are for self-attention over the grid: ``Q == K == T*H*W``.

True = may attend. Legend: T frames, H rows, W columns (of patches), L = T*H*W tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

from veil.masks.core import Mask, Tensor

Grid = tuple[int, int, int]


def _check_triple(name: str, value: object, what: str = "positive ints") -> tuple[int, int, int]:
    if isinstance(value, list):
        value = tuple(value)
    if (
        not isinstance(value, tuple)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{name}: expected a tuple of 3 {what} (T, H, W), got {value!r}")
    if any(v < 1 for v in value):
        raise ValueError(f"{name}: expected 3 {what} (T, H, W), got {value}")
    return value  # type: ignore[return-value]


class _GridMask(Mask):
    def __init__(self, grid: Grid):
        self.grid = _check_triple("grid", grid)

    @property
    def length(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def validate(self, batch, heads, q_len, kv_len, device):
        if q_len != self.length or kv_len != self.length:
            raise ValueError(
                f"grid: {self.kind} over grid {self.grid} needs Q == K == {self.length} tokens, "
                f"got Q={q_len}, K={kv_len}"
            )

    def coords(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(t, h, w) of raster-order token indices."""
        _, gh, gw = self.grid
        return idx // (gh * gw), (idx // gw) % gh, idx % gw

    def _key(self):
        return (self.grid,)

    def __repr__(self):
        return f"{self.kind}({self.grid})"


class Spatial(_GridMask):
    kind = "spatial"

    def predicate(self, ctx, b, h, q, k):
        hw = self.grid[1] * self.grid[2]
        return (q // hw) == (k // hw)


class Temporal(_GridMask):
    kind = "temporal"

    def predicate(self, ctx, b, h, q, k):
        hw = self.grid[1] * self.grid[2]
        return (q % hw) == (k % hw)


class FrameCausal(_GridMask):
    kind = "frame_causal"

    def predicate(self, ctx, b, h, q, k):
        hw = self.grid[1] * self.grid[2]
        return (k // hw) <= (q // hw)


def spatial(grid: Grid) -> Mask:
    """Keeps keys in the query's frame (``t_k == t_q``): Latte's spatial blocks."""
    return Spatial(grid)


def temporal(grid: Grid) -> Mask:
    """Keeps keys at the query's position in every frame (``(h_k, w_k) == (h_q, w_q)``): Latte's temporal blocks."""
    return Temporal(grid)


def frame_causal(grid: Grid) -> Mask:
    """Keeps keys in the query's frame and every earlier frame (``t_k <= t_q``): autoregressive video."""
    return FrameCausal(grid)


class Window3D(_GridMask):
    kind = "window_3d"

    def __init__(self, grid: Grid, window: Grid, dilation: Grid = (1, 1, 1),
                 border: Literal["clip", "shift"] = "clip"):
        super().__init__(grid)
        self.window = _check_triple("window", window, "odd positive ints")
        if any(v % 2 == 0 for v in self.window):
            raise ValueError(f"window: expected odd extents (a box centred on the query), got {self.window}")
        self.dilation = _check_triple("dilation", dilation, "positive ints")
        if border not in ("clip", "shift"):
            raise ValueError(f"border: expected 'clip' or 'shift', got {border!r}")
        self.border = border

    def axis_keep(self, axis: int, cq: Tensor, ck: Tensor) -> Tensor:
        """Along one axis: is coordinate ``ck`` in the window of ``cq``?"""
        w, d, n = self.window[axis], self.dilation[axis], self.grid[axis]
        r = w // 2
        if self.border == "clip":
            diff = ck - cq
            keep = diff.abs() <= r * d
            return keep if d == 1 else keep & (diff % d == 0)
        # shift (NATTEN): within the query's dilation group (coordinates = cq mod d), a window of w group members
        # centred on the query, moved to lie inside the group
        group = cq % d
        members = torch.div(n - group + d - 1, d, rounding_mode="floor")  # tokens of the group along this axis
        iq = torch.div(cq, d, rounding_mode="floor")
        start = torch.minimum(torch.clamp(iq - r, min=0), torch.clamp(members - w, min=0))
        ik = torch.div(ck, d, rounding_mode="floor")
        keep = (ik >= start) & (ik < start + w)
        return keep if d == 1 else keep & (ck % d == group)

    def predicate(self, ctx, b, h, q, k):
        cq, ck = self.coords(q), self.coords(k)
        return self.axis_keep(0, cq[0], ck[0]) & self.axis_keep(1, cq[1], ck[1]) & self.axis_keep(2, cq[2], ck[2])

    def _key(self):
        return (self.grid, self.window, self.dilation, self.border)

    def __repr__(self):
        extra = "" if self.dilation == (1, 1, 1) else f", dilation={self.dilation}"
        extra += "" if self.border == "clip" else f", border={self.border!r}"
        return f"window_3d({self.grid}, {self.window}{extra})"


def window_3d(grid: Grid, window: Grid, dilation: Grid = (1, 1, 1),
              border: Literal["clip", "shift"] = "clip") -> Mask:
    """Keeps keys in a box of ``window = (wt, wh, ww)`` tokens (odd extents) around the query.

    Along each axis (coordinate ``c``, length ``n``, extent ``w``, radius ``r = w // 2``, dilation ``d``):

    - ``border="clip"`` (default): ``|c_k - c_q| <= r * d`` and ``c_k - c_q`` a multiple of ``d``; near the
      grid's borders the box is cut, so a query there sees fewer keys. ``(wt, large, large)`` is the Wan article's
      local temporal window.
    - ``border="shift"`` (NATTEN's neighbourhood): the query's group is the coordinates ``= c_q (mod d)``, of
      ``m = ceil((n - c_q mod d) / d)`` members; with ``i = c // d`` the key is kept when it is in the group and
      ``s <= i_k < s + w`` where ``s = min(max(i_q - r, 0), max(m - w, 0))``: the window moves to stay inside the
      grid, so every query sees ``min(w, m)`` keys along the axis.

    ``d = 1`` is a plain box. Dilation spreads the same number of keys over ``d`` times the span (NATTEN's
    dilated neighbourhood attention).

    Args:
        grid: ``(T, H, W)`` token grid, raster order.
        window: odd box extents ``(wt, wh, ww)`` in tokens; with ``"clip"`` an extent >= twice the grid's is "all".
        dilation: ``(dt, dh, dw)`` positive ints.
        border: ``"clip"`` or ``"shift"``.
    """
    return Window3D(grid, window, dilation, border)


class TileWindow(_GridMask):
    kind = "tile_window"

    def __init__(self, grid: Grid, tile: Grid, window: Grid, order: Literal["raster", "tile"] = "raster"):
        super().__init__(grid)
        self.tile = _check_triple("tile", tile)
        self.window = _check_triple("window", window)
        if order not in ("raster", "tile"):
            raise ValueError(f"order: expected 'raster' or 'tile', got {order!r}")
        self.order = order
        for g, t, name in zip(self.grid, self.tile, "THW"):
            if g % t:
                raise ValueError(f"tile: grid {self.grid} must be divisible by tile {self.tile} (axis {name})")
        self.tiles = tuple(g // t for g, t in zip(self.grid, self.tile))
        for n, nt, name in zip(self.window, self.tiles, "THW"):
            if n > nt:
                raise ValueError(
                    f"window: {n} tiles along {name} but the grid has only {nt} tiles of {self.tile} there"
                )

    def tile_coords(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Tile coordinates (in tiles) of token indices in this mask's order."""
        if self.order == "raster":
            t, h, w = self.coords(idx)
            return t // self.tile[0], h // self.tile[1], w // self.tile[2]
        per_tile = self.tile[0] * self.tile[1] * self.tile[2]
        tid = idx // per_tile
        nt, nh, nw = self.tiles
        return tid // (nh * nw), (tid // nw) % nh, tid % nw

    def window_start(self, tq: Tensor, axis: int) -> Tensor:
        """First tile of the window along ``axis`` for query tiles ``tq`` (the window stays in the grid)."""
        n, nt = self.window[axis], self.tiles[axis]
        return (tq - n // 2).clamp(0, nt - n)

    def predicate(self, ctx, b, h, q, k):
        out = None
        for axis, (cq, ck) in enumerate(zip(self.tile_coords(q), self.tile_coords(k))):
            s = self.window_start(cq, axis)
            keep = (ck >= s) & (ck < s + self.window[axis])
            out = keep if out is None else out & keep
        return out

    def _key(self):
        return (self.grid, self.tile, self.window, self.order)

    def __repr__(self):
        extra = ", order='tile'" if self.order == "tile" else ""
        return f"tile_window({self.grid}, tile={self.tile}, window={self.window}{extra})"


def tile_window(
    grid: Grid, tile: Grid, window: Grid, order: Literal["raster", "tile"] = "raster"
) -> Mask:
    """Sliding-tile attention: the window moves tile by tile, so every key tile is wholly in or out.

    The grid is cut into tiles of ``tile = (tt, th, tw)`` tokens. A query in tile ``(i, j, l)`` keeps every
    key whose tile lies in a window of ``window = (nt, nh, nw)`` tiles centred on ``(i, j, l)``, shifted to
    stay inside the grid: along each axis the window starts at ``clamp(i - n // 2, 0, tiles - n)`` and
    covers ``n`` tiles. Every query therefore sees exactly ``prod(window * tile)`` keys.

    Args:
        grid: ``(T, H, W)``, divisible by ``tile``.
        tile: tile size in tokens.
        window: window size in tiles (at most the number of tiles along each axis).
        order: ``"raster"`` (default) when tokens are in raster order, ``"tile"`` when they were
            permuted with :func:`to_tile_order` (then each tile is a contiguous block of tokens).
    """
    return TileWindow(grid, tile, window, order)


def tile_permutation(grid: Grid, tile: Grid, device: torch.device | str = "cpu") -> Tensor:
    """``perm`` with ``tile_ordered = raster[perm]``: raster index of the i-th token in tile order."""
    grid = _check_triple("grid", grid)
    tile = _check_triple("tile", tile)
    for g, t in zip(grid, tile):
        if g % t:
            raise ValueError(f"tile: grid {grid} must be divisible by tile {tile}")
    (gt, gh, gw), (tt, th, tw) = grid, tile
    idx = torch.arange(gt * gh * gw, device=device).view(gt // tt, tt, gh // th, th, gw // tw, tw)
    return idx.permute(0, 2, 4, 1, 3, 5).reshape(-1)


def to_tile_order(x: Tensor, grid: Grid, tile: Grid, dim: int = -2) -> Tensor:
    """Permute tokens along ``dim`` from raster order to tile order."""
    perm = tile_permutation(grid, tile, x.device)
    if x.shape[dim] != perm.numel():
        raise ValueError(f"x: expected {perm.numel()} tokens along dim {dim} for grid {grid}, got {x.shape[dim]}")
    return x.index_select(dim, perm)


def from_tile_order(x: Tensor, grid: Grid, tile: Grid, dim: int = -2) -> Tensor:
    """Inverse of :func:`to_tile_order`."""
    perm = tile_permutation(grid, tile, x.device)
    if x.shape[dim] != perm.numel():
        raise ValueError(f"x: expected {perm.numel()} tokens along dim {dim} for grid {grid}, got {x.shape[dim]}")
    return x.index_select(dim, torch.argsort(perm))


class Radial(_GridMask):
    kind = "radial"

    def __init__(self, grid: Grid, *, decay: float = 1.0, min_width: int = 1, dense_distance: int = 1,
                 sink_frames: int = 0):
        super().__init__(grid)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not decay > 0:
            raise ValueError(f"decay: expected a positive number, got {decay!r}")
        for name, value, low in (("min_width", min_width, 1), ("dense_distance", dense_distance, 0),
                                 ("sink_frames", sink_frames, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        self.decay, self.min_width = float(decay), min_width
        self.dense_distance, self.sink_frames = dense_distance, sink_frames
        t, h, w = self.grid
        per_frame = h * w
        span = 2 ** per_frame.bit_length()  # the official code's 2 ** bit_length(tokens per frame)
        widths, frames = [], []
        for dist in range(t):  # per temporal distance: the spatial half-width, and whether the frame pair is kept
            if dist <= dense_distance:
                widths.append(per_frame)
                frames.append(True)
                continue
            base = span / 2 ** dist.bit_length()  # halves each time the distance doubles
            widths.append(int(max(base * self.decay, min_width)))
            frames.append(base >= min_width or dist % int(min_width / base) == 0)
        self._widths = torch.tensor(widths, dtype=torch.long)
        self._frames = torch.tensor(frames, dtype=torch.bool)

    def predicate(self, ctx, b, h, q, k):
        hw = self.grid[1] * self.grid[2]
        tq, tk = q // hw, k // hw
        dist = (tq - tk).abs()
        near = ((q % hw) - (k % hw)).abs() <= self._widths.to(ctx.device)[dist]
        keep = self._frames.to(ctx.device)[dist] & near
        return keep | (tk < self.sink_frames) if self.sink_frames else keep

    def _key(self):
        return (self.grid, self.decay, self.min_width, self.dense_distance, self.sink_frames)

    def __repr__(self):
        return (f"radial({self.grid}, decay={self.decay}, min_width={self.min_width}, "
                f"dense_distance={self.dense_distance}, sink_frames={self.sink_frames})")


def radial(grid: Grid, *, decay: float = 1.0, min_width: int = 1, dense_distance: int = 1,
           sink_frames: int = 0) -> Mask:
    """Radial Attention's static mask: a spatial band that halves each time the temporal distance doubles.

    `Radial Attention <https://arxiv.org/abs/2506.19852>`_ (Li et al., 2025), at token level. With ``P = H * W``
    tokens per frame, ``s`` a token's raster index inside its frame, ``S = 2 ** bit_length(P)`` and
    ``d = |t_q - t_k|``, key ``k`` is kept when

    - ``t_k < sink_frames`` (whole sink frames), or
    - ``d <= dense_distance`` (whole frames), or
    - ``|s_k - s_q| <= max(S * decay / 2 ** g, min_width)`` with ``g = bit_length(d)``, and the frame pair is
      kept: when ``S / 2 ** g < min_width`` only distances ``d`` that are multiples of
      ``floor(min_width / (S / 2 ** g))`` are (the band cannot shrink below ``min_width``, so the frames thin out).

    The pairs kept per query fall geometrically with the distance: O(n log n) pairs in all. The official Wan
    setting, before its rounding to 128 x 128 blocks, is ``radial(grid, decay=0.5, min_width=128, sink_frames=1)``.

    Args:
        grid: ``(T, H, W)`` token grid, raster order.
        decay: scales the band width (the official code's ``decay_factor``).
        min_width: the narrowest band (the official code uses its block size, 128).
        dense_distance: frames this close attend to each other whole (the official code: 1).
        sink_frames: the first frames every query sees whole (an attention sink; the official Wan setting: 1).
    """
    return Radial(grid, decay=decay, min_width=min_width, dense_distance=dense_distance, sink_frames=sink_frames)
