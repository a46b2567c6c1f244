"""Conditioning: adaLN-Zero modulation (DiT), timestep embeddings, and in-attention conditioning.

Legend: B batch, L tokens, D model width, C condition width, F sinusoid width.

Numerics: modulation runs in float32 and is cast back to the activations' dtype (as Wan's blocks do).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import nn

Tensor = torch.Tensor


def _check_width(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _per_token(t: Tensor, x: Tensor, name: str) -> Tensor:
    # [B, D] -> [B, 1, D]; [B, L, D] (Wan 2.2 per-token modulation) is kept
    if t.dim() == 2:
        t = t.unsqueeze(1)
    if t.dim() != 3 or t.shape[0] != x.shape[0] or t.shape[-1] != x.shape[-1]:
        raise ValueError(f"{name}: expected [B, D] or [B, L, D] matching x {list(x.shape)}, got {list(t.shape)}")
    return t


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` in float32, cast back to ``x``'s dtype (DiT's ``modulate``).

    Args:
        x: ``[B, L, D]``.
        shift, scale: ``[B, D]`` (broadcast over tokens) or ``[B, L, D]``.
    """
    shift, scale = _per_token(shift, x, "shift"), _per_token(scale, x, "scale")
    # one fused multiply-add pass over x (addcmul) instead of a product and a sum: equal up to fp32 rounding
    return torch.addcmul(shift.float(), x.float(), 1 + scale.float()).to(x.dtype)


def gate(x: Tensor, residual_branch: Tensor, g: Tensor) -> Tensor:
    """``x + g * residual_branch`` in float32, cast back to ``x``'s dtype (adaLN-Zero's gated residual)."""
    g = _per_token(g, x, "gate")
    return torch.addcmul(x.float(), residual_branch.float(), g.float()).to(x.dtype)


class Modulation(NamedTuple):
    """One (shift, scale, gate) triple, each ``[B, D]``."""

    shift: Tensor
    scale: Tensor
    gate: Tensor


class AdaLNZero(nn.Module):
    """adaLN-Zero (https://arxiv.org/abs/2212.09748): ``SiLU -> Linear(C, 3 n D)`` split into ``n`` triples.

    The linear is zero-initialised, so every shift, scale and gate is 0 at init and a block
    ``x + gate * f(modulate(norm(x), shift, scale))`` is the identity.

    Args:
        dim: model width D.
        cond_dim: condition width C.
        n: number of (shift, scale, gate) triples (DiT: 2, one for attention and one for the MLP).
    """

    def __init__(self, dim: int, cond_dim: int, n: int = 2):
        super().__init__()
        self.dim = _check_width("dim", dim)
        _check_width("cond_dim", cond_dim)
        self.n = _check_width("n", n)
        self.linear = nn.Linear(cond_dim, 3 * n * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> list[Modulation]:
        """``c`` ``[B, C]`` -> ``n`` :class:`Modulation` triples, each tensor ``[B, D]``."""
        if c.dim() != 2 or c.shape[-1] != self.linear.in_features:
            raise ValueError(f"c: expected [B, {self.linear.in_features}], got {list(c.shape)}")
        chunks = self.linear(nn.functional.silu(c)).chunk(3 * self.n, dim=-1)  # 3n x (B, D)
        return [Modulation(*chunks[3 * i: 3 * i + 3]) for i in range(self.n)]


def timestep_sinusoid(t: Tensor, dim: int, *, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0,
                      scale: float = 1.0, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (fractional) timesteps: ``[sin(t w), cos(t w)]``, ``w_i = max_period^(-i / (half - s))``.

    Equals diffusers' ``get_timestep_embedding`` with the same arguments (float32). The defaults
    (``flip_sin_to_cos=True, downscale_freq_shift=0``) are DiT's ``TimestepEmbedder`` and Wan's / Latte's
    ``Timesteps(..., flip_sin_to_cos=True, downscale_freq_shift=0)``.

    Args:
        t: ``[B]`` timesteps.
        dim: embedding width F (odd widths get a zero column at the end).
        flip_sin_to_cos: cos half first.
        downscale_freq_shift: ``s`` above (1 in DDPM's original).
        scale: multiplies the angles.
        max_period: the lowest frequency's period.

    Returns:
        ``[B, F]`` float32.
    """
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise ValueError(f"t: expected a tensor [B], got {getattr(t, 'shape', type(t).__name__)}")
    half = _check_width("dim", dim) // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))  # (F/2,)
    ang = scale * (t[:, None].float() * freqs[None, :])  # (B, F/2)
    emb = torch.cat([ang.cos(), ang.sin()] if flip_sin_to_cos else [ang.sin(), ang.cos()], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Timestep -> vector: :func:`timestep_sinusoid` then ``Linear(F, D) -> SiLU -> Linear(D, D)`` (DiT).

    Args:
        dim: output width D.
        freq_dim: sinusoid width F (DiT / Wan: 256).
        flip_sin_to_cos, downscale_freq_shift, max_period: see :func:`timestep_sinusoid`.
    """

    def __init__(self, dim: int, freq_dim: int = 256, *, flip_sin_to_cos: bool = True,
                 downscale_freq_shift: float = 0.0, max_period: float = 10000.0):
        super().__init__()
        self.freq_dim = _check_width("freq_dim", freq_dim)
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.max_period = max_period
        self.linear_1 = nn.Linear(freq_dim, _check_width("dim", dim))
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        """``t`` ``[B]`` -> ``[B, D]`` in the linears' dtype."""
        f = timestep_sinusoid(t, self.freq_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                              downscale_freq_shift=self.downscale_freq_shift, max_period=self.max_period)
        f = f.to(self.linear_1.weight.dtype)
        return self.linear_2(nn.functional.silu(self.linear_1(f)))


Placement = Literal["post_norm", "pre_norm"]


class InAttentionCondition(nn.Module):
    """In-attention conditioning (https://arxiv.org/abs/2105.04090): a condition added to every layer's input.

    The condition ``z`` ``[B, C]`` is projected to the model width when ``C != D`` (a Linear; the identity
    otherwise), broadcast to ``[B, L, D]``, and added to each branch input, by ``placement``:

    - ``"post_norm"``: after the layer's norm, right before attention: ``norm(x) + c`` (the article).
    - ``"pre_norm"``: to the branch input before the pre-norm: ``norm(x + c)`` (x-transformers'
      ``in_attn_cond``). The residual stream itself is never changed: the block still adds its branch
      output to ``x``.

    Usage in a block: ``c = cond.project(z)`` once per forward, then for each sub-layer
    ``h = cond(x, c, norm); x = x + branch(h)``.

    Args:
        dim: model width D.
        cond_dim: condition width C (default D: no projection).
        placement: ``"post_norm"`` or ``"pre_norm"``.
    """

    def __init__(self, dim: int, cond_dim: int | None = None, placement: Placement = "post_norm"):
        super().__init__()
        if placement not in ("post_norm", "pre_norm"):
            raise ValueError(f"placement: expected 'post_norm' or 'pre_norm', got {placement!r}")
        self.dim = _check_width("dim", dim)
        self.cond_dim = dim if cond_dim is None else _check_width("cond_dim", cond_dim)
        self.placement = placement
        self.proj = nn.Linear(self.cond_dim, dim) if self.cond_dim != dim else nn.Identity()

    def project(self, z: Tensor) -> Tensor:
        """``z`` ``[B, C]`` -> ``[B, 1, D]`` (broadcasts over tokens)."""
        if z.dim() != 2 or z.shape[-1] != self.cond_dim:
            raise ValueError(f"z: expected [B, {self.cond_dim}], got {list(z.shape)}")
        return self.proj(z).unsqueeze(1)  # (B, 1, D)

    def forward(self, x: Tensor, c: Tensor, norm: nn.Module) -> Tensor:
        """The branch input for ``x`` ``[B, L, D]`` under condition ``c`` ``[B, 1, D]`` (from :meth:`project`)."""
        if c.dim() != 3 or c.shape[0] != x.shape[0] or c.shape[-1] != x.shape[-1]:
            raise ValueError(f"c: expected [B, 1, D] from project() matching x {list(x.shape)}, got {list(c.shape)}")
        if self.placement == "pre_norm":
            return norm(x + c.to(x.dtype))
        return norm(x) + c.to(x.dtype)
