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

    def __init__(self, grid: Grid, window: Grid):
        super().__init__(grid)
        self.window = _check_triple("window", window, "odd positive ints")
        if any(v % 2 == 0 for v in self.window):
            raise ValueError(f"window: expected odd extents (a box centred on the query), got {self.window}")

    def predicate(self, ctx, b, h, q, k):
        tq, hq, wq = self.coords(q)
        tk, hk, wk = self.coords(k)
        rt, rh, rw = (v // 2 for v in self.window)
        return ((tq - tk).abs() <= rt) & ((hq - hk).abs() <= rh) & ((wq - wk).abs() <= rw)

    def _key(self):
        return (self.grid, self.window)

    def __repr__(self):
        return f"window_3d({self.grid}, {self.window})"


def window_3d(grid: Grid, window: Grid) -> Mask:
    """Keeps keys in a box centred on the query, clipped at the grid's borders.

    Key ``k`` is kept when ``|t_k - t_q| <= wt // 2``, ``|h_k - h_q| <= wh // 2`` and
    ``|w_k - w_q| <= ww // 2``. A finite ``wt`` with full ``wh, ww`` is the local temporal window of the
    Wan article.

    Args:
        grid: ``(T, H, W)`` token grid, raster order.
        window: odd box extents ``(wt, wh, ww)`` in tokens; an extent >= twice the grid's is "all".
    """
    return Window3D(grid, window)


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
