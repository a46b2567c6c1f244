"""Denoisers for the diffusion and training tests, honouring the protocol of veil.diffusion.

- TinyDenoiser: a small conv net conditioned on the length-masked mean of the context and on the timestep.
- PointDenoiser: the exact denoiser for data that is one point per prompt, ``x0 = proj(masked mean of the
  context)`` broadcast over (T, H, W). Exact predictions let a sampler's result be checked against a closed
  form: every scheduler must land on x0, and guidance must land on ``x0(neg) + g (x0(cond) - x0(neg))``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def masked_mean(context: Tensor, lengths: Tensor | None) -> Tensor:
    """Mean of the first ``lengths[b]`` tokens of each row ([B, L, Dt] -> [B, Dt]); zeros for length 0."""
    b, l, _ = context.shape
    if lengths is None:
        lengths = torch.full((b,), l, dtype=torch.long)
    keep = (torch.arange(l)[None, :] < lengths[:, None]).to(context)  # (B, L)
    return (context * keep[..., None]).sum(1) / keep.sum(1).clamp(min=1)[:, None]


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


class TinyDenoiser(nn.Module):
    """conv3d -> FiLM(pooled text, timestep) -> SiLU -> (dropout) -> conv3d; 2C outputs if ``learn_sigma``."""

    def __init__(self, channels: int = 4, text_dim: int = 8, hidden: int = 16, dropout: float = 0.0,
                 learn_sigma: bool = False):
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Conv3d(channels, hidden, 3, padding=1)
        self.cond = nn.Linear(text_dim + 16, 2 * hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Conv3d(hidden, channels * (2 if learn_sigma else 1), 3, padding=1)
        self.calls: list[tuple[int, int]] = []  # (batch rows, context length) of each call

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, context_lengths: Tensor | None = None) -> Tensor:
        self.calls.append((x.shape[0], context.shape[1]))
        c = torch.cat([masked_mean(context, context_lengths), timestep_embedding(timestep / 1000 * 100, 16)], -1)
        scale, shift = self.cond(c).chunk(2, dim=-1)  # (B, hidden) each
        h = self.inp(x) * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]
        return self.out(self.drop(torch.nn.functional.silu(h)))


class PointDenoiser(nn.Module):
    """Exact prediction for data ``x0 = proj(masked mean of context)`` under one objective.

    Args:
        kind: "flow" (velocity), "epsilon" or "v_prediction".
        alphas_cumprod: the DDPM schedule (for epsilon / v), indexed by the integer timestep.
    """

    def __init__(self, kind: str, channels: int = 4, text_dim: int = 8, alphas_cumprod: Tensor | None = None):
        super().__init__()
        self.kind = kind
        self.proj = nn.Linear(text_dim, channels)
        self.alphas_cumprod = alphas_cumprod

    def x0(self, context: Tensor, lengths: Tensor | None, like: Tensor) -> Tensor:
        return self.proj(masked_mean(context, lengths))[:, :, None, None, None].expand_as(like)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, context_lengths: Tensor | None = None) -> Tensor:
        x0 = self.x0(context, context_lengths, x).double()
        x = x.double()
        if self.kind == "flow":
            sigma = (timestep.double() / 1000).view(-1, 1, 1, 1, 1)
            return ((x - x0) / sigma).float()  # velocity noise - x0 for x = (1 - sigma) x0 + sigma noise
        abar = self.alphas_cumprod.double()[timestep.round().long()].view(-1, 1, 1, 1, 1)
        eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        if self.kind == "epsilon":
            return eps.float()
        return (abar.sqrt() * eps - (1 - abar).sqrt() * x0).float()
