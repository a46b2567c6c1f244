"""Diffusion for video denoisers: training objectives and sampling over diffusers' schedulers.

Legend: B batch, C latent channels, T frames, H W latent height and width, L text tokens, Dt text width.

The denoiser protocol
---------------------
Everything here is model-agnostic. A denoiser is any callable

    model(x, timestep, context, context_lengths=None, **kw) -> prediction

- ``x``: [B, C, T, H, W] float, the noisy latents.
- ``timestep``: [B] float on the 0..1000 scale: ``sigma * 1000`` for flow matching, the DDPM step for
  epsilon / v models (fractional values are allowed).
- ``context``: [B, L, Dt] float text embeddings, zero-padded to a common L.
- ``context_lengths``: [B] int64, the number of real tokens per row (None: all L). A row may have length 0
  (the null prompt). The model must never attend the padding: a row's prediction may depend only on its
  first ``context_lengths[b]`` tokens, so a guided batch with unequal prompt lengths is exact.
- ``prediction``: like ``x`` (velocity ``noise - x0``, epsilon or v, as the objective trained it), or with
  2C channels when the model learns a variance (DiT / Latte); the extra channels are ignored.

A two-expert model (Wan 2.2's ``TimestepExperts``) may also expose ``expert_for(timestep: float)``
(0 / "high" for the high-noise expert, 1 / "low" for the low-noise one) or a ``boundary`` attribute
(``t >= boundary * 1000`` is high noise); then :func:`sample` accepts per-expert guidance scales.

Modules
-------
- :mod:`~veil.diffusion.objectives`: :class:`FlowMatching` (Wan), :class:`DDPMObjective` (Latte) and losses.
- :mod:`~veil.diffusion.schedulers`: :func:`make_scheduler`, the diffusers scheduler matching an objective.
- :mod:`~veil.diffusion.guidance`: classifier-free guidance in one batch, per-expert scales.
- :mod:`~veil.diffusion.keyframes`: frames held fixed through sampling.
- :mod:`~veil.diffusion.sampling`: :func:`sample` and :func:`extend` (long videos window by window).
"""

from __future__ import annotations

from veil.diffusion.guidance import expert_index, guidance_batch
from veil.diffusion.keyframes import Keyframes
from veil.diffusion.objectives import (
    DDPMObjective,
    FlowMatching,
    Objective,
    TrainingExample,
    ddpm_loss,
    flow_matching_loss,
    shift_sigma,
)
from veil.diffusion.sampling import extend, sample
from veil.diffusion.schedulers import SCHEDULERS, make_scheduler

__all__ = [
    "SCHEDULERS",
    "DDPMObjective",
    "FlowMatching",
    "Keyframes",
    "Objective",
    "TrainingExample",
    "ddpm_loss",
    "expert_index",
    "extend",
    "flow_matching_loss",
    "guidance_batch",
    "make_scheduler",
    "sample",
    "shift_sigma",
]
