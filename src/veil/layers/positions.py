"""Position encodings: rotary (1D, and 3D over video grids as Wan) and fixed sin-cos tables (1D, 2D as Latte / DiT).

Legend: B batch, N heads, L tokens, D head dim (rotary) or model width (sin-cos), T H W latent frames, rows,
columns (a video grid in raster order ``(t, h, w)``).

Numerics: rotary angles are computed in float32 (1D, as HF) or float64 (3D, as diffusers' Wan) and the
cos/sin tables kept in float32 unless cast for the caller; sin-cos tables are computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Tensor = torch.Tensor


def _check_even(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
        raise ValueError(f"{name}: expected a positive even int, got {value!r}")
    return value


def _check_base(base: object) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)) or base <= 1:
        raise ValueError(f"base: expected a number > 1, got {base!r}")
    return float(base)


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the two halves of the last axis (HF Llama / Gemma convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@dataclass
class RopeTable:
    """Cos/sin tables for a set of positions, and the pairing convention they are applied with.

    Attributes:
        cos, sin: ``[B or 1, L, D]``.
        layout: ``"half"``: feature ``i`` pairs with ``i + D/2`` (HF rotate-half); ``"interleaved"``: feature
            ``2i`` pairs with ``2i + 1`` (complex pairs, Wan / Flux / original RoFormer).
    """

    cos: Tensor
    sin: Tensor
    layout: Literal["half", "interleaved"] = "half"
    _pairs: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def length(self) -> int:
        return self.cos.shape[-2]

    def apply(self, x: Tensor) -> Tensor:
        """Rotate ``x`` ``[B, N, L, D]``; the arithmetic runs in the promoted dtype of ``x`` and the table.

        Raises:
            ValueError: ``x``'s length or head dim does not match the table.
        """
        if x.dim() != 4 or x.shape[-1] != self.cos.shape[-1] or x.shape[-2] != self.cos.shape[-2]:
            raise ValueError(
                f"x: expected [B, N, L, D] with L={self.cos.shape[-2]}, D={self.cos.shape[-1]} to match the rotary "
                f"table, got {list(x.shape)}"
            )
        if self.layout == "half":
            cos, sin = self.cos.unsqueeze(1), self.sin.unsqueeze(1)  # (B|1, 1, L, D)
            out = x * cos + rotate_half(x) * sin
        else:
            # (x1, x2) -> (x1 c - x2 s, x2 c + x1 s) as x * cos2 + swap(x) * sin2 (see _pair_tables): 3 passes
            # over x instead of 7 (strided halves, 4 products, 2 sums, an interleaving stack)
            cos2, sin2 = self._pair_tables()
            swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (B, N, L, D): x2, x1 in each pair
            out = torch.addcmul(x * cos2, swapped, sin2)
        return out.to(x.dtype)

    def _pair_tables(self) -> tuple[Tensor, Tensor]:
        """Interleaved layout: ``cos2 = (c, c)`` and ``sin2 = (-s, s)`` per pair, ``[B|1, 1, L, D]``, made once per
        table (c from the even features of ``cos``, s from the odd features of ``sin``, as the pairs are read)."""
        if self._pairs is None:
            c, s = self.cos[..., 0::2], self.sin[..., 1::2]  # (B|1, L, D/2)
            cos2 = torch.stack((c, c), dim=-1).flatten(-2).unsqueeze(1)  # (B|1, 1, L, D)
            sin2 = torch.stack((-s, s), dim=-1).flatten(-2).unsqueeze(1)
            self._pairs = (cos2, sin2)
        return self._pairs


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over one axis (https://arxiv.org/abs/2104.09864), HF rotate-half convention.

    ``inv_freq[i] = base ** (-2i / D)``; the angles ``position * inv_freq`` are computed in float32 and the
    cos/sin cast to the requested dtype, exactly as HF ``LlamaRotaryEmbedding`` / ``Gemma3RotaryEmbedding``.

    Args:
        head_dim: D (even).
        base: rotary base (theta); Gemma 3 uses 10k for local and 1M for global layers.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim = _check_even("head_dim", head_dim)
        self.base = _check_base(base)
        inv_freq = 1.0 / (self.base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> RopeTable:
        """The table for ``positions``.

        Args:
            positions: int tensor ``[L]`` (shared by the batch) or ``[B, L]`` (e.g. left padding: each sample's
                positions start at its first real token).
            dtype: dtype of the returned cos/sin (HF casts them to the activations' dtype).

        Returns:
            a ``"half"`` :class:`RopeTable` with cos/sin ``[B or 1, L, D]``.
        """
        ok = isinstance(positions, torch.Tensor) and not positions.dtype.is_floating_point
        if not ok or positions.dim() not in (1, 2):
            got = list(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
            raise ValueError(f"positions: expected an int tensor [L] or [B, L], got {got}")
        pos = positions if positions.dim() == 2 else positions.unsqueeze(0)  # (B|1, L)
        freqs = pos[..., None].float() * self.inv_freq.to(pos.device).float()  # (B|1, L, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B|1, L, D)
        return RopeTable(emb.cos().to(dtype), emb.sin().to(dtype), "half")

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


def wan_rope_split(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of the head dim over (t, h, w): ``(D - 4 (D // 6), 2 (D // 6), 2 (D // 6))``."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


class Rope3D(nn.Module):
    """Rotary embedding over a video grid ``(t, h, w)``, as diffusers' ``WanRotaryPosEmbed``.

    The head dim is split as :func:`wan_rope_split`; each part rotates with its own axis' position and its
    own frequencies ``base ** (-2i / d_axis)``, features paired as interleaved complex numbers. Angles are
    computed in ``table_dtype`` (float64 as Wan; float32 where float64 is unavailable), tables kept in float32.

    Args:
        head_dim: D, even, with every part of the split even.
        base: rotary base (Wan: 10000).
        table_dtype: float64 or float32.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, table_dtype: torch.dtype = torch.float64):
        super().__init__()
        self.head_dim = _check_even("head_dim", head_dim)
        self.split = wan_rope_split(head_dim)
        if any(d % 2 or d == 0 for d in self.split):
            raise ValueError(f"head_dim: every part of the (t, h, w) split {self.split} must be even and > 0, "
                             f"got head_dim={head_dim}")
        if table_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"table_dtype: expected torch.float32 or torch.float64, got {table_dtype}")
        self.base = _check_base(base)
        self.table_dtype = table_dtype

    def _axis(self, d: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        inv = 1.0 / (self.base ** (torch.arange(0, d, 2, dtype=self.table_dtype, device=device) / d))  # (d/2,)
        ang = torch.outer(torch.arange(n, device=device, dtype=self.table_dtype), inv)  # (n, d/2)
        return ang.cos().repeat_interleave(2, dim=1).float(), ang.sin().repeat_interleave(2, dim=1).float()

    def forward(self, grid: Sequence[int], device: torch.device | str | None = None) -> RopeTable:
        """The table for the tokens of a ``(T, H, W)`` grid in raster order: cos/sin ``[1, T*H*W, D]`` float32.

        Raises:
            ValueError: ``grid`` is not three positive ints.
        """
        if len(grid) != 3 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
            raise ValueError(f"grid: expected three positive ints (T, H, W), got {grid!r}")
        t, h, w = grid
        dev = torch.device(device) if device is not None else torch.device("cpu")
        parts_cos, parts_sin = [], []
        for axis, (d, n) in enumerate(zip(self.split, grid)):
            c, s = self._axis(d, n, dev)
            shape = [1, 1, 1, d]
            shape[axis] = n
            parts_cos.append(c.view(shape).expand(t, h, w, d))  # (T, H, W, d)
            parts_sin.append(s.view(shape).expand(t, h, w, d))
        cos = torch.cat(parts_cos, dim=-1).reshape(1, t * h * w, self.head_dim)  # (1, L, D)
        sin = torch.cat(parts_sin, dim=-1).reshape(1, t * h * w, self.head_dim)
        return RopeTable(cos, sin, "interleaved")

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, split={self.split}, base={self.base}, table_dtype={self.table_dtype}"


def _positions(n: int, base: int | None, interpolation_scale: float) -> Tensor:
    # float32 positions, as diffusers' get_2d_sincos_pos_embed builds its grid
    pos = torch.arange(n, dtype=torch.float32)
    if base is not None:
        pos = pos / (n / base)
    return pos / interpolation_scale


def sincos_from_positions(dim: int, positions: Tensor, *, flip_sin_to_cos: bool = False,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed sin-cos embedding of arbitrary (fractional) positions: ``[sin(p w), cos(p w)]``, ``w_i = 10000^(-2i/dim)``.

    Equals diffusers' ``get_1d_sincos_pos_embed_from_grid`` (computed in float64).

    Args:
        dim: embedding width (even).
        positions: ``[M]`` positions (any shape, flattened).
        flip_sin_to_cos: put the cos half first.
        dtype: dtype of the result.

    Returns:
        ``[M, dim]``.
    """
    _check_even("dim", dim)
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = torch.outer(positions.reshape(-1).to(torch.float64), omega)  # (M, dim/2)
    emb = torch.cat([out.sin(), out.cos()], dim=1) if not flip_sin_to_cos else torch.cat([out.cos(), out.sin()], dim=1)
    return emb.to(dtype)


def sincos_1d(dim: int, length: int, *, base_length: int | None = None, interpolation_scale: float = 1.0,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed sin-cos table for ``length`` positions (Latte's temporal embedding): ``[length, dim]``.

    Args:
        dim: embedding width (even).
        length: number of positions.
        base_length: the length the model was trained on; when given, positions are rescaled to span
            ``[0, base_length)`` (``p * base_length / length``), so a longer or shorter sequence interpolates
            the trained table. None: positions ``0 .. length - 1`` (Latte).
        interpolation_scale: positions are divided by it.
        dtype: dtype of the result.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length: expected a positive int, got {length!r}")
    return sincos_from_positions(dim, _positions(length, base_length, interpolation_scale), dtype=dtype)


def sincos_2d(dim: int, grid: tuple[int, int], *, base_size: int | None = None, interpolation_scale: float = 1.0,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed 2D sin-cos table for an ``(H, W)`` grid in raster order (DiT / Latte spatial): ``[H*W, dim]``.

    Equals diffusers' ``get_2d_sincos_pos_embed(dim, (H, W), base_size=base_size,
    interpolation_scale=interpolation_scale)``: the first ``dim/2`` channels encode the column (w) position,
    the last ``dim/2`` the row (h) position; each axis' positions are ``arange(n) * base_size / n /
    interpolation_scale``, so any grid spans the trained range (interpolation for grids other than the
    trained one).

    Args:
        dim: embedding width, divisible by 4.
        grid: ``(H, W)``.
        base_size: the trained grid side (diffusers' ``PatchEmbed`` uses ``height // patch_size``); default H.
        interpolation_scale: positions are divided by it (Latte: ``max(sample_size // 64, 1)``).
        dtype: dtype of the result.
    """
    if dim % 4:
        raise ValueError(f"dim: expected a multiple of 4 for a 2D sin-cos table, got {dim}")
    if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"grid: expected two positive ints (H, W), got {grid!r}")
    h, w = grid
    base = h if base_size is None else base_size
    ph = _positions(h, base, interpolation_scale)
    pw = _positions(w, base, interpolation_scale)
    rows = ph.view(h, 1).expand(h, w)  # (H, W)
    cols = pw.view(1, w).expand(h, w)
    return torch.cat([sincos_from_positions(dim // 2, cols, dtype=dtype),
                      sincos_from_positions(dim // 2, rows, dtype=dtype)], dim=1)  # (H*W, dim)


def sincos_3d(dim: int, grid: tuple[int, int, int], *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
    """Fixed 3D sin-cos table for a ``(T, H, W)`` grid in raster order: ``[T*H*W, dim]``.

    The width is split as Wan splits its RoPE (:func:`wan_rope_split`): the first ``dim - 4 (dim // 6)`` channels
    encode the frame, the next ``2 (dim // 6)`` the row, the last ``2 (dim // 6)`` the column, each with
    :func:`sincos_from_positions` of the positions ``0 .. n - 1``.

    Raises:
        ValueError: a part of the split that is odd or 0, or a grid that is not three positive ints.
    """
    split = wan_rope_split(dim)
    if any(d <= 0 or d % 2 for d in split):
        raise ValueError(f"dim: the split {split} of dim={dim} must be even and > 0 in every part (a multiple of "
                         f"12 works)")
    if len(grid) != 3 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"grid: expected three positive ints (T, H, W), got {grid!r}")
    t, h, w = grid
    axes = [sincos_from_positions(d, torch.arange(n, dtype=torch.float32), dtype=dtype)
            for d, n in zip(split, grid)]  # (n, d) each
    table = torch.cat([axes[0][:, None, None].expand(t, h, w, -1), axes[1][None, :, None].expand(t, h, w, -1),
                       axes[2][None, None, :].expand(t, h, w, -1)], dim=-1)  # (T, H, W, dim)
    return table.reshape(t * h * w, dim).to(device)

