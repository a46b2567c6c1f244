"""Normalisation layers, computed in float32 and cast back to the input dtype.

Legend: B batch, L tokens, N heads, D features (the normalised, last axis).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Tensor = torch.Tensor
QKNormMode = Literal["head", "full"]


def _check_dim(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _check_last(x: Tensor, dim: int, who: str) -> None:
    if x.shape[-1] != dim:
        raise ValueError(f"x: {who} expects last dim {dim}, got shape {list(x.shape)}")


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis: ``x / sqrt(mean(x^2) + eps) * w``.

    The normalisation is computed in float32. With ``unit_offset=True`` (Gemma) the weight starts at 0 and
    the scale is ``1 + w``, multiplied in float32 before casting back, exactly as HF ``GemmaRMSNorm``; with
    ``unit_offset=False`` (Llama, Wan's ``torch.nn.RMSNorm``) the weight starts at 1 and the scale is ``w``,
    also applied in float32.

    Args:
        dim: size D of the last axis.
        eps: added to the mean square.
        unit_offset: Gemma's ``1 + weight`` parametrisation.
        affine: learn a weight; without it the output is only normalised.
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, unit_offset: bool = False, affine: bool = True):
        super().__init__()
        self.dim = _check_dim("dim", dim)
        self.eps = float(eps)
        self.unit_offset = bool(unit_offset)
        if affine:
            self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``[..., D]``; returns the same shape and dtype."""
        _check_last(x, self.dim, "RMSNorm")
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            w = self.weight.float()
            h = h * (1.0 + w if self.unit_offset else w)
        return h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, unit_offset={self.unit_offset}, affine={self.weight is not None}"


class LayerNorm(nn.Module):
    """Layer norm over the last axis, computed in float32 (as diffusers' ``FP32LayerNorm``), with or without affine.

    Args:
        dim: size D of the last axis.
        eps: added to the variance.
        affine: learn a weight (init 1) and, if ``bias``, a bias (init 0). Wan's ``norm1``/``norm3`` and
            DiT's adaLN blocks use ``affine=False``.
        bias: learn a bias when ``affine``.
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, affine: bool = True, bias: bool = True):
        super().__init__()
        self.dim = _check_dim("dim", dim)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``[..., D]``; returns the same shape and dtype."""
        _check_last(x, self.dim, "LayerNorm")
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return nn.functional.layer_norm(x.float(), (self.dim,), w, b, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}, bias={self.bias is not None}"


class QKNorm(nn.Module):
    """RMSNorm of queries and keys before attention (and before RoPE).

    Two conventions exist and both are needed:

    - ``mode="head"`` (Gemma 3, HF ``q_norm``/``k_norm``): normalise each head's ``D`` features, one weight
      of size ``D`` shared by the heads. Apply to ``[B, L, N, D]`` (or ``[B, N, L, D]``).
    - ``mode="full"`` (Wan 2.x, diffusers ``norm_q``/``norm_k`` over ``heads * dim_head``): normalise the whole
      projected vector ``N * D`` before it is split into heads. Apply to ``[B, L, N * D]``.

    Args:
        q_dim: features normalised for queries: ``D`` in head mode, ``Nq * D`` in full mode.
        k_dim: the same for keys (``Nkv * D`` in full mode with GQA).
        mode: ``"head"`` or ``"full"``.
        eps: RMSNorm eps.
        unit_offset: Gemma's ``1 + weight``.
    """

    def __init__(self, q_dim: int, k_dim: int, mode: QKNormMode = "head", eps: float = 1e-6, *,
                 unit_offset: bool = False):
        super().__init__()
        if mode not in ("head", "full"):
            raise ValueError(f"mode: expected 'head' or 'full', got {mode!r}")
        self.mode = mode
        self.q = RMSNorm(q_dim, eps, unit_offset=unit_offset)
        self.k = RMSNorm(k_dim, eps, unit_offset=unit_offset)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Normalise ``q`` and ``k`` over their last axis; shapes and dtypes are kept."""
        return self.q(q), self.k(k)
