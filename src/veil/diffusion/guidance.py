"""Classifier-free guidance: one batch of conditional and unconditional rows, per-expert scales.

Legend: B batch, L text tokens, Dt text width.

The conditional prompt and the negative prompt usually have different token counts. Both are padded to the
longer one and passed with their own lengths, so the denoiser sees every row with its true length and never
attends the padding (the denoiser protocol's ``context_lengths``); the unconditional half costs one batched
call instead of a second pass. Guidance: ``pred = uncond + g * (cond - uncond)``
(Ho & Salimans, https://arxiv.org/abs/2207.12598).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_context", "expert_index", "guidance_batch", "guidance_scale_for", "pad_tokens", "parse_guidance_scale",
]


def check_context(context: Tensor, lengths: Tensor | None, *, name: str = "context",
                  batch: int | None = None) -> Tensor:
    """Validate text embeddings and return their lengths ([B] int64, defaulting to L for every row).

    Args:
        context: [B, L, Dt] float embeddings (L may be 0).
        lengths: [B] integer lengths in [0, L], or None for "all L tokens".
        name: the argument name used in errors (``lengths`` is reported as ``{name}_lengths``).
        batch: the expected B (or None for any).

    Raises:
        ValueError: wrong rank, dtype, batch size or a length outside [0, L].
    """
    if not isinstance(context, Tensor) or context.dim() != 3 or not context.is_floating_point():
        got = f"{context.dtype} {list(context.shape)}" if isinstance(context, Tensor) else type(context).__name__
        raise ValueError(f"{name}: expected a float tensor [B, L, Dt], got {got}")
    b, l, _ = context.shape
    if batch is not None and b != batch:
        raise ValueError(f"{name}: expected batch size {batch}, got {b}")
    if lengths is None:
        return torch.full((b,), l, dtype=torch.long, device=context.device)
    lname = f"{name}_lengths" if name != "context" else "context_lengths"
    if not isinstance(lengths, Tensor) or lengths.shape != (b,) or lengths.is_floating_point() or \
            lengths.dtype == torch.bool:
        got = f"{lengths.dtype} {list(lengths.shape)}" if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"{lname}: expected an integer tensor [{b}], got {got}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > l):
        raise ValueError(f"{lname}: expected values in [0, {l}] (the {name} length), got {lengths.tolist()}")
    return lengths.to(device=context.device, dtype=torch.long)


def pad_tokens(x: Tensor, length: int) -> Tensor:
    """``x`` [B, L, Dt] padded with zero rows to [B, length, Dt] (``length`` >= L; ``x`` itself when equal)."""
    if x.shape[1] == length:
        return x
    pad = x.new_zeros(x.shape[0], length - x.shape[1], x.shape[2])
    return torch.cat([x, pad], dim=1)  # (B, length, Dt)


def guidance_batch(context: Tensor, context_lengths: Tensor, negative_context: Tensor | None,
                   negative_lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """Stack conditional rows over unconditional rows: ``(context [2B, L, Dt], lengths [2B])``.

    Args:
        context: [B, Lc, Dt]; ``context_lengths`` [B].
        negative_context: [B or 1, Ln, Dt] (one row is repeated for the batch), or None for the null prompt
            (no tokens: length 0, as a text-dropped training sample with an empty context).
        negative_lengths: [B or 1] lengths of the negative rows, or None for all Ln.

    Returns:
        Both halves padded with zeros to L = max(Lc, Ln); rows 0..B-1 conditional, B..2B-1 unconditional, each
        with its own length.

    Raises:
        ValueError: the negative prompt's batch or width does not match.
    """
    b, _, dt = context.shape
    if negative_context is None:
        negative_context = context.new_zeros(b, 0, dt)
        negative_lengths = torch.zeros(b, dtype=torch.long, device=context.device)
    if not isinstance(negative_context, Tensor) or negative_context.dim() != 3 or \
            negative_context.shape[0] not in (1, b) or negative_context.shape[2] != dt:
        got = list(negative_context.shape) if isinstance(negative_context, Tensor) else type(negative_context).__name__
        raise ValueError(f"negative_context: expected a float tensor [{b} or 1, Ln, {dt}], got {got}")
    nb = negative_context.shape[0]
    negative_lengths = check_context(negative_context, negative_lengths, name="negative", batch=nb)
    if nb != b:
        negative_context = negative_context.expand(b, -1, -1)
        negative_lengths = negative_lengths.expand(b)
    length = max(context.shape[1], negative_context.shape[1])
    both = torch.cat([pad_tokens(context, length), pad_tokens(negative_context.to(context), length)])  # (2B, L, Dt)
    return both, torch.cat([context_lengths, negative_lengths.to(context_lengths.device)])


def parse_guidance_scale(guidance_scale: float | Sequence[float]) -> tuple[float, float]:
    """``g`` -> ``(g, g)``; ``(high, low)`` -> itself.

    Raises:
        ValueError: not a finite number or a pair of them.
    """
    if isinstance(guidance_scale, (int, float)) and not isinstance(guidance_scale, bool):
        pair = (float(guidance_scale), float(guidance_scale))
    elif isinstance(guidance_scale, Sequence) and len(guidance_scale) == 2 and \
            all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in guidance_scale):
        pair = (float(guidance_scale[0]), float(guidance_scale[1]))
    else:
        raise ValueError(f"guidance_scale: expected a number or a (high_noise, low_noise) pair, got {guidance_scale!r}")
    if not all(math.isfinite(g) for g in pair):
        raise ValueError(f"guidance_scale: expected finite numbers, got {guidance_scale!r}")
    return pair


def expert_index(model: Any, timestep: float, num_train_timesteps: int = 1000) -> int | None:
    """Which expert of a two-expert denoiser runs at ``timestep``: 0 = high noise, 1 = low noise, None = one model.

    Wan 2.2 A14B splits denoising between a high-noise and a low-noise expert at ``t >= boundary * 1000``
    (boundary 0.875 for text-to-video; Wan-Video/Wan2.2 ``wan/text2video.py``). A model tells it by either

    - a method ``expert_for(timestep: float)`` returning 0 / 1, ``"high"`` / ``"low"``, or the expert module
      itself (compared with the model's ``high_noise_model`` / ``low_noise_model``), or
    - an attribute ``boundary`` (a fraction of ``num_train_timesteps``).

    Raises:
        ValueError: ``expert_for`` returned something else.
    """
    fn = getattr(model, "expert_for", None)
    if callable(fn):
        e = fn(float(timestep))
        if isinstance(e, Tensor) and e.numel() == 1:
            e = e.item()
        if e in (0, 1) and not isinstance(e, float):
            return int(e)
        if isinstance(e, str) and e in ("high", "low"):
            return 0 if e == "high" else 1
        for i, attr in enumerate(("high_noise_model", "low_noise_model")):
            if getattr(model, attr, None) is e and e is not None:
                return i
        raise ValueError(f"model.expert_for: expected 0 / 1, 'high' / 'low' or an expert module, got {e!r}")
    boundary = getattr(model, "boundary", None)
    if isinstance(boundary, (int, float)) and not isinstance(boundary, bool):
        return 0 if float(timestep) >= boundary * num_train_timesteps else 1
    return None


def guidance_scale_for(model: Any, timestep: float, scales: tuple[float, float], *,
                       given_pair: bool, num_train_timesteps: int = 1000) -> float:
    """The guidance scale at ``timestep``: ``scales[expert_index]`` for a two-expert model, else ``scales[0]``.

    Raises:
        ValueError: a (high, low) pair of different scales was given for a model with one expert.
    """
    expert = expert_index(model, timestep, num_train_timesteps)
    if expert is None:
        if given_pair and scales[0] != scales[1]:
            raise ValueError(f"guidance_scale: a (high_noise, low_noise) pair {scales} needs a two-expert model "
                             "(with expert_for(timestep) or a boundary attribute); this model has neither")
        return scales[0]
    return scales[expert]
