"""diffusers schedulers configured to match a training objective.

A sampler must share its training objective's schedule and prediction type; :func:`make_scheduler` builds the
diffusers scheduler that does, so that callers (pipelines, the CLI) name only the solver.
"""

from __future__ import annotations

from typing import Any, Literal

from veil.diffusion.objectives import DDPMObjective, FlowMatching

__all__ = ["SCHEDULERS", "make_scheduler"]

SCHEDULERS = ("flow_euler", "unipc", "ddim", "ddpm")


def make_scheduler(name: Literal["flow_euler", "unipc", "ddim", "ddpm"], objective: FlowMatching | DDPMObjective, *,
                   shift: float | None = None) -> Any:
    """A fresh diffusers scheduler named ``name`` for a model trained with ``objective``.

    - flow matching: ``"flow_euler"`` (``FlowMatchEulerDiscreteScheduler(shift=...)``) or ``"unipc"``
      (``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=...)``,
      the solver of diffusers' ``WanPipeline``);
    - DDPM epsilon / v: ``"ddim"``, ``"ddpm"`` or ``"unipc"`` with the objective's betas and prediction type
      (``clip_sample=False``: latents are not bounded to [-1, 1]).

    Args:
        name: the solver.
        objective: the training objective.
        shift: sampling sigma shift for flow matching (Wan samples with a larger shift than it trains with,
            e.g. 5.0 at 720p); None = the objective's.

    Raises:
        ValueError: an unknown name or one that does not fit the objective.
    """
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name not in SCHEDULERS:
        raise ValueError(f"name: expected one of {SCHEDULERS}, got {name!r}")
    if isinstance(objective, FlowMatching):
        s = objective.shift if shift is None else shift
        if not s > 0:
            raise ValueError(f"shift: expected a positive number, got {s!r}")
        if name == "flow_euler":
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=s)
        if name == "unipc":
            return UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                           use_flow_sigmas=True, flow_shift=s)
        raise ValueError(f"name: {name!r} does not sample flow-matching models; use 'flow_euler' or 'unipc'")
    if isinstance(objective, DDPMObjective):
        if shift is not None:
            raise ValueError(f"shift: applies to flow matching only, got {shift!r} for a DDPM objective")
        betas = dict(num_train_timesteps=objective.num_train_timesteps, beta_schedule=objective.beta_schedule,
                     beta_start=objective.beta_start, beta_end=objective.beta_end,
                     prediction_type=objective.prediction_type)
        if name == "ddim":
            return DDIMScheduler(clip_sample=False, **betas)
        if name == "ddpm":
            return DDPMScheduler(clip_sample=False, **betas)
        if name == "unipc":
            return UniPCMultistepScheduler(**betas)
        raise ValueError(f"name: {name!r} does not sample DDPM models; use 'ddim', 'ddpm' or 'unipc'")
    raise ValueError(f"objective: expected FlowMatching or DDPMObjective, got {type(objective).__name__}")
