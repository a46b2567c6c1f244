"""Training objectives: flow matching (Wan, rectified flow) and DDPM epsilon / v-prediction (Latte).

Legend: B batch, C latent channels, T frames, H W latent height and width, L text tokens, Dt text width.

Each objective turns clean latents ``x0`` [B, C, T, H, W] into one training example ``(x_t, timestep, target)``
and scores a denoiser's prediction against the target with a mean squared error (flow matching can score the
examples below a noise level with an absolute error instead, ``FlowMatching.absolute_below``). Timesteps are on
the 0..1000 scale of the denoiser protocol (see :mod:`veil.diffusion`): ``sigma * 1000`` for flow matching, the integer
DDPM step (as a float) for the DDPM objectives. The DDPM noising and the v target come from diffusers'
``DDPMScheduler`` (``add_noise``, ``get_velocity``) so that training and diffusers' samplers share one schedule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

__all__ = [
    "DDPMObjective",
    "FlowMatching",
    "Objective",
    "TrainingExample",
    "ddpm_loss",
    "flow_matching_loss",
    "prediction_for",
    "shift_sigma",
]


def shift_sigma(sigma: Tensor | float, shift: float) -> Tensor | float:
    """Shift noise levels towards 1: ``sigma' = s * sigma / (1 + (s - 1) * sigma)``.

    The same map as diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s)`` and Wan's ``sample_shift``
    (SD3, https://arxiv.org/abs/2403.03206, section 5.3.2). ``s = 1`` is the identity; ``s > 1`` spends more
    steps at high noise, which large video latents need.

    Args:
        sigma: noise levels in [0, 1] (tensor or float).
        shift: s > 0.

    Raises:
        ValueError: ``shift`` is not positive.
    """
    if not shift > 0:
        raise ValueError(f"shift: expected a positive number, got {shift!r}")
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclasses.dataclass
class TrainingExample:
    """One noised batch: the denoiser input ``x_t``, its ``timestep`` [B] (0..1000 float) and the ``target``."""

    x_t: Tensor
    timestep: Tensor
    target: Tensor
    weight: Tensor | None = None  # [B] per-sample loss weights, or broadcast to x0 (a frame mask); None = 1
    # [B] per-sample factor of an absolute error that replaces the squared one (0: the squared error); None: squared
    absolute: Tensor | None = None


def prediction_for(prediction: Tensor, x: Tensor) -> Tensor:
    """The part of a denoiser output that predicts the target.

    A model with a learned variance (DiT / Latte ``learn_sigma``) returns 2C channels: the first C are the
    prediction, the second C the variance, which these objectives do not train (no variational bound term) and
    which samplers drop, as diffusers' ``LattePipeline`` does.

    Raises:
        ValueError: the prediction's shape is neither ``x``'s nor ``x``'s with twice the channels.
    """
    if prediction.shape == x.shape:
        return prediction
    if prediction.dim() == x.dim() and prediction.shape[1] == 2 * x.shape[1] and \
            prediction.shape[2:] == x.shape[2:] and prediction.shape[0] == x.shape[0]:
        return prediction[:, : x.shape[1]]
    raise ValueError(f"model output: expected shape {list(x.shape)} (or twice the channels for a learned "
                     f"variance), got {list(prediction.shape)}")


class Objective(Protocol):
    """What a training loop needs from an objective."""

    def example(self, x0: Tensor, *, generator: torch.Generator | None = None) -> TrainingExample: ...

    def loss(self, model: Any, x0: Tensor, context: Tensor, context_lengths: Tensor | None = None, *,
             generator: torch.Generator | None = None, rows: tuple[int, int] | None = None,
             **model_kwargs: Any) -> Tensor: ...


def _check_x0(x0: Tensor) -> None:
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() != 5:
        got = f"{x0.dtype} {list(x0.shape)}" if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0: expected a float tensor [B, C, T, H, W], got {got}")


def _randn(shape: torch.Size, generator: torch.Generator | None, like: Tensor) -> Tensor:
    # drawn on the generator's device (CPU by default) and moved: the same numbers on every device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(like.device, like.dtype)


def _rand(n: int, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)


def _rows(x0: Tensor, rows: tuple[int, int] | None) -> tuple[int, slice]:
    """How many samples to draw and which of them are ``x0``'s (see ``rows`` in the objectives' ``example``)."""
    if rows is None:
        return x0.shape[0], slice(None)
    start, total = rows
    if not (isinstance(start, int) and isinstance(total, int) and 0 <= start and start + x0.shape[0] <= total):
        raise ValueError(f"rows: expected (start, total) with 0 <= start and start + B <= total for B = "
                         f"{x0.shape[0]}, got {rows!r}")
    return total, slice(start, start + x0.shape[0])


def _mse(model: Any, ex: TrainingExample, context: Tensor, context_lengths: Tensor | None,
         model_kwargs: dict[str, Any]) -> Tensor:
    pred = model(ex.x_t, ex.timestep, context, context_lengths, **model_kwargs)
    pred = prediction_for(pred, ex.x_t)
    # the loss in fp32 whatever the autocast dtype of the prediction
    diff = pred.float() - ex.target.float()
    err = diff**2
    if ex.absolute is not None:  # per sample: scale * |error| where the factor is > 0, the squared error elsewhere
        a = ex.absolute.to(err.device, err.dtype).view(-1, *([1] * (err.dim() - 1)))
        err = torch.where(a > 0, a * diff.abs(), err)
    if ex.weight is None:
        return torch.mean(err)
    w = ex.weight.to(err.device, err.dtype)
    if w.dim() == 1:
        return torch.mean(err.flatten(1).mean(1) * w)
    # per-element weights (a mask of the frames that count): each sample's weighted mean over what it weights
    w = w.expand_as(err)
    count = (w > 0).flatten(1).sum(1).clamp_min(1)
    return torch.mean((err * w).flatten(1).sum(1) / count)


@dataclasses.dataclass(kw_only=True)
class FlowMatching:
    """Flow matching / rectified flow as trained by Wan: ``x_t = (1 - sigma) x0 + sigma noise``.

    The denoiser predicts the velocity ``noise - x0`` at ``timestep = sigma * 1000``. Sample with diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=...)`` or ``UniPCMultistepScheduler(use_flow_sigmas=True,
    prediction_type="flow_prediction", flow_shift=...)``.

    Attributes:
        shift: sigma shift ``s`` applied to the drawn sigma (:func:`shift_sigma`); 1 = none.
        sampling: how the unshifted sigma is drawn: ``"uniform"`` on [0, 1], or ``"logit_normal"``
            (``sigmoid(N(mean, std))``, SD3's choice).
        logit_mean, logit_std: parameters of ``"logit_normal"``.
        weighting: per-sample weight of the velocity error: ``"none"`` (Wan, SD3's rectified flow) or
            ``"sigma_sqr"`` (``sigma^2``: for a denoiser that predicts the clean sample, as
            :class:`~veil.pipelines.t2v.XPrediction`, this is the plain x0 error, which gives the high-noise
            samples that decide a video's layout and motion as much weight as the nearly clean ones).
        context_frames: the share of samples trained for continuation (diffusion forcing,
            https://arxiv.org/abs/2407.01392, with one noise level after a clean prefix): their first ``k`` frames
            stay clean, at timestep 0, ``k`` a multiple of ``frame_patch`` drawn uniformly from ``frame_patch`` to
            half the clip; the loss skips those frames. With ``context_frames > 0`` every example's timestep is
            per frame, ``[B, T]`` (see :class:`~veil.models.WanDiT`), so the denoiser learns to continue given
            frames that it sees clean, as :func:`veil.diffusion.extend` gives them (``clean_anchors``).
        context_one_patch: the share of continuation examples whose clean prefix is a single temporal patch (the
            others draw their length as above): the case of a clip continued from its first patch
            (``PipelineConfig.staged``).
        context_high_noise: the share of continuation examples whose noisy frames are drawn near pure noise,
            ``sigma = 1 - 0.05 u^2`` (``u`` uniform; in [0.95, 1], densest at 1), instead of at the drawn sigma.
            Down to sigma ~0.99 the noisy frames themselves still show where a clip moves; above, only the
            caption does, and the usual sigma distributions almost never draw there (logit-normal with shift 5:
            0.14% of examples at sigma >= 0.99).
        frame_patch: the denoiser's temporal patch: clean prefixes are whole patches.
        unshifted: the share of examples whose sigma skips the ``shift`` (drawn as ``sampling`` says and used as
            drawn). A large shift draws the nearly clean levels at which sampling ends almost never (logit-normal
            with shift 5: 0.17% of examples below sigma 0.21, the last level of a 20-step schedule with the same
            shift); these examples train them. 0 draws nothing extra: the other draws are those of a run without it.
        absolute_below, absolute_scale: the examples whose sigma (that of their noisy frames) is below
            ``absolute_below`` are scored with ``absolute_scale * |prediction - target|`` instead of the squared
            error; 0 (the default): none, 1: every example. The absolute error tolerates many small errors
            (a textured background) in exchange for fewer large ones, and drew cleaner backgrounds and sharper edges
            in fine-tunes of ``tiny-t2v-16f``; at high noise it trains the per-element median of the possible
            clips instead of their mean, which lost shapes there, hence the threshold (docs/t2v.md). It draws
            nothing: the examples are those of a run without it.
        sigma_min, sigma_max: draw the noise levels from this part of the schedule only: the distribution above
            (shift and ``unshifted`` share included) truncated to ``[sigma_min, sigma_max]``, by mapping the uniform
            draw into the matching interval of its inverse CDF (one draw per example, as without them). This trains
            one expert of a pair split along the noise axis (:class:`~veil.models.TimestepExperts`, Wan 2.2's
            high- and low-noise experts): ``sigma_max=0.875`` the low-noise expert of a boundary of 0.875,
            ``sigma_min=0.875`` the high-noise one. Clean context frames stay at 0. The defaults, 0 and 1, draw
            what a run without them draws.

    Raises:
        ValueError: a field out of range.
    """

    shift: float = 1.0
    sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weighting: Literal["none", "sigma_sqr"] = "none"
    context_frames: float = 0.0
    context_one_patch: float = 0.0
    context_high_noise: float = 0.0
    frame_patch: int = 1
    unshifted: float = 0.0
    absolute_below: float = 0.0
    absolute_scale: float = 1.0
    sigma_min: float = 0.0
    sigma_max: float = 1.0

    def __post_init__(self) -> None:
        for name in ("context_frames", "context_one_patch", "context_high_noise", "unshifted", "absolute_below"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                what = "a noise level" if name == "absolute_below" else "a share"
                raise ValueError(f"{name}: expected {what} in [0, 1], got {value!r}")
        if isinstance(self.frame_patch, bool) or not isinstance(self.frame_patch, int) or self.frame_patch < 1:
            raise ValueError(f"frame_patch: expected a positive int, got {self.frame_patch!r}")
        if not self.shift > 0:
            raise ValueError(f"shift: expected a positive number, got {self.shift!r}")
        if self.sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"sampling: expected 'uniform' or 'logit_normal', got {self.sampling!r}")
        if not self.logit_std > 0:
            raise ValueError(f"logit_std: expected a positive number, got {self.logit_std!r}")
        if self.weighting not in ("none", "sigma_sqr"):
            raise ValueError(f"weighting: expected 'none' or 'sigma_sqr', got {self.weighting!r}")
        scale = self.absolute_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"absolute_scale: expected a positive finite number, got {scale!r}")
        lo, hi = self.sigma_min, self.sigma_max
        for name, value in (("sigma_min", lo), ("sigma_max", hi)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a noise level in [0, 1], got {value!r}")
        if not lo < hi:
            raise ValueError(f"sigma_min, sigma_max: expected sigma_min < sigma_max, got {lo!r} and {hi!r}")
        if self.context_high_noise > 0 and (hi < 1 or lo > 0.95):
            raise ValueError(f"context_high_noise: draws noise levels in [0.95, 1], outside sigma_min, sigma_max = "
                             f"[{lo!r}, {hi!r}]; set context_high_noise=0 for an expert of part of the schedule")

    def _inverse_cdf_bounds(self, shifted: bool) -> tuple[float, float]:
        """The interval of the uniform draw whose noise levels lie in ``[sigma_min, sigma_max]``."""
        def u_of(sigma: float) -> float:  # the inverse of the draw: sigma -> u, monotonic
            if shifted:
                sigma = sigma / (self.shift - (self.shift - 1) * sigma)  # the inverse of shift_sigma
            if self.sampling == "logit_normal":
                if sigma <= 0.0 or sigma >= 1.0:
                    return min(max(sigma, 0.0), 1.0)
                z = (math.log(sigma / (1 - sigma)) - self.logit_mean) / self.logit_std
                return 0.5 * (1 + math.erf(z / math.sqrt(2)))  # the standard normal CDF
            return sigma
        return u_of(float(self.sigma_min)), u_of(float(self.sigma_max))

    def _absolute(self, sigma: Tensor) -> Tensor | None:
        """[B] factors of the absolute error for examples at noise levels ``sigma`` [B] (None: squared everywhere)."""
        if self.absolute_below <= 0:
            return None
        below = sigma < self.absolute_below if self.absolute_below < 1 else torch.ones_like(sigma, dtype=torch.bool)
        return below.float() * self.absolute_scale

    def sample_sigma(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` shifted noise levels in [0, 1], float32 on the generator's device."""
        u = _rand(n, generator)
        whole = self.sigma_min == 0 and self.sigma_max == 1  # as drawn without a range, to the bit
        # the intervals of the uniform draw that land in the range: unshifted (a, b) and shifted (c, d)
        (a, b), (c, d) = self._inverse_cdf_bounds(False), self._inverse_cdf_bounds(True)
        sigma = shift_sigma(self._inverse_cdf(u if whole else c + (d - c) * u), self.shift)
        if self.unshifted > 0:
            plain = self._inverse_cdf(u if whole else a + (b - a) * u)
            share = self.unshifted
            if not whole:  # each kind of draw in the proportion of its mass inside the interval
                share = share * (b - a) / max(share * (b - a) + (1 - share) * (d - c), 1e-300)
            sigma = torch.where(_rand(n, generator) < share, plain, sigma)
        if not whole:  # rounding at the ends of the interval
            sigma = sigma.clamp(self.sigma_min, self.sigma_max)
        return sigma.float()

    def _inverse_cdf(self, u: Tensor) -> Tensor:
        """Unshifted noise levels of uniform draws ``u``."""
        if self.sampling == "logit_normal":
            # inverse-CDF of the normal keeps one uniform draw per sample, whatever the sampling
            z = self.logit_mean + self.logit_std * math.sqrt(2) * torch.erfinv(2 * u.clamp(1e-7, 1 - 1e-7) - 1)
            return torch.sigmoid(z)
        return u

    def noise(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """``(1 - sigma) x0 + sigma noise`` with ``sigma`` [B] broadcast over [C, T, H, W]."""
        s = sigma.to(x0.device, x0.dtype).view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1, 1)
        return (1 - s) * x0 + s * noise

    def example(self, x0: Tensor, *, generator: torch.Generator | None = None,
                sigma: Tensor | None = None, noise: Tensor | None = None,
                rows: tuple[int, int] | None = None) -> TrainingExample:
        """A noised batch with target ``noise - x0`` and ``timestep = sigma * 1000``.

        Args:
            x0: clean latents [B, C, T, H, W] float.
            generator: draws sigma (first) and the noise (second).
            sigma: [B] noise levels to use instead of drawing them (already shifted).
            noise: noise to use instead of drawing it, shaped like ``x0``.
            rows: ``(start, total)``: ``x0`` is rows ``[start, start + B)`` of a batch of ``total`` split across
                data-parallel ranks; the draws are made for the whole batch and these rows kept, so the ranks
                together draw exactly what one process would.

        Raises:
            ValueError: ``x0`` is not a 5-D float tensor.
        """
        _check_x0(x0)
        n, mine = _rows(x0, rows)
        if sigma is None:
            sigma = self.sample_sigma(n, generator=generator)[mine]
        if noise is None:
            noise = _randn((n, *x0.shape[1:]), generator, x0)[mine]
        sigma = sigma.to(x0.device, torch.float32)
        weight = sigma**2 if self.weighting == "sigma_sqr" else None
        if self.context_frames > 0:
            return self._continuation(x0, noise, sigma, weight, n, mine, generator)
        return TrainingExample(self.noise(x0, noise, sigma), sigma * 1000.0, noise - x0, weight,
                               self._absolute(sigma))

    def _continuation(self, x0: Tensor, noise: Tensor, sigma: Tensor, weight: Tensor | None, n: int, mine: slice,
                      generator: torch.Generator | None) -> TrainingExample:
        # per-frame noise levels: 0 on a clean prefix of the chosen samples, sigma elsewhere; drawn after sigma and
        # the noise, so that the other draws are those of a run without continuation
        t, pt = x0.shape[2], self.frame_patch
        patches = t // pt
        if t % pt or patches < 2:
            raise ValueError(f"x0: continuation needs at least 2 temporal patches of {pt} frames, got {t} frames")
        chosen = (_rand(n, generator) < self.context_frames)[mine]
        one = (_rand(n, generator) < self.context_one_patch)[mine] if self.context_one_patch > 0 else None
        k = ((_rand(n, generator) * (patches // 2)).long() + 1)[mine].clamp_max(patches // 2)  # (B,) patches
        if one is not None:
            k = torch.where(one, torch.ones_like(k), k)
        k = torch.where(chosen, k * pt, torch.zeros_like(k)).to(x0.device)  # (B,) frames
        if self.context_high_noise > 0:  # drawn last: the other draws stay those of a run without it
            high = (_rand(n, generator) < self.context_high_noise)[mine].to(x0.device) & chosen.to(x0.device)
            near_one = 1 - 0.05 * _rand(n, generator)[mine].to(x0.device) ** 2  # (B,) float64, in [0.95, 1]
            sigma = torch.where(high, near_one, sigma)
            if weight is not None:
                weight = torch.where(high, near_one**2, weight)
        noisy = (torch.arange(t, device=x0.device)[None] >= k[:, None]).float()  # (B, T)
        per_frame = sigma[:, None] * noisy  # (B, T)
        s = per_frame[:, None, :, None, None].to(x0.dtype)  # (B, 1, T, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        w = noisy[:, None, :, None, None]  # (B, 1, T, 1, 1): the loss skips the clean prefix
        if weight is not None:
            w = w * weight.view(-1, 1, 1, 1, 1)
        return TrainingExample(x_t, per_frame * 1000.0, noise - x0, w, self._absolute(sigma))

    def loss(self, model: Any, x0: Tensor, context: Tensor, context_lengths: Tensor | None = None, *,
             generator: torch.Generator | None = None, rows: tuple[int, int] | None = None,
             **model_kwargs: Any) -> Tensor:
        """Mean squared error between ``model(x_t, sigma * 1000, context, context_lengths)`` and ``noise - x0``
        (the absolute error for the examples below ``absolute_below``)."""
        return _mse(model, self.example(x0, generator=generator, rows=rows), context, context_lengths, model_kwargs)


@dataclasses.dataclass(kw_only=True)
class DDPMObjective:
    """DDPM noising with epsilon or v targets, as trained by Latte (epsilon, linear betas 1e-4..0.02).

    The schedule is a diffusers ``DDPMScheduler`` built from these fields (``self.scheduler``); its
    ``add_noise`` makes ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` and ``get_velocity`` the v target
    ``sqrt(abar_t) noise - sqrt(1 - abar_t) x0`` (https://arxiv.org/abs/2202.00512). Sample with a
    ``DDIMScheduler`` / ``DDPMScheduler`` of the same betas and ``prediction_type``.

    Attributes:
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        num_train_timesteps, beta_schedule, beta_start, beta_end: the diffusers schedule.

    Raises:
        ValueError: a field out of range.
    """

    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type: expected 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        if not (isinstance(self.num_train_timesteps, int) and self.num_train_timesteps > 0):
            raise ValueError(f"num_train_timesteps: expected a positive int, got {self.num_train_timesteps!r}")
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler(num_train_timesteps=self.num_train_timesteps, beta_schedule=self.beta_schedule,
                                       beta_start=self.beta_start, beta_end=self.beta_end,
                                       prediction_type=self.prediction_type)

    def sample_timesteps(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` integer timesteps uniform in [0, num_train_timesteps), int64 on the generator's device."""
        u = _rand(n, generator)
        return (u * self.num_train_timesteps).long().clamp_(max=self.num_train_timesteps - 1)

    def example(self, x0: Tensor, *, generator: torch.Generator | None = None,
                timesteps: Tensor | None = None, noise: Tensor | None = None,
                rows: tuple[int, int] | None = None) -> TrainingExample:
        """A noised batch with the epsilon or v target.

        Args:
            x0: clean latents [B, C, T, H, W] float.
            generator: draws the timesteps (first) and the noise (second).
            timesteps: [B] int64 steps to use instead of drawing them.
            noise: noise to use instead of drawing it, shaped like ``x0``.
            rows: as in :meth:`FlowMatching.example` (data-parallel ranks draw what one process would).

        Raises:
            ValueError: ``x0`` is not a 5-D float tensor.
        """
        _check_x0(x0)
        n, mine = _rows(x0, rows)
        if timesteps is None:
            timesteps = self.sample_timesteps(n, generator=generator)[mine]
        if noise is None:
            noise = _randn((n, *x0.shape[1:]), generator, x0)[mine]
        timesteps = timesteps.to(x0.device)
        x_t = self.scheduler.add_noise(x0, noise, timesteps)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, timesteps)
        return TrainingExample(x_t, timesteps.float(), target)

    def loss(self, model: Any, x0: Tensor, context: Tensor, context_lengths: Tensor | None = None, *,
             generator: torch.Generator | None = None, rows: tuple[int, int] | None = None,
             **model_kwargs: Any) -> Tensor:
        """Mean squared error between the model's prediction (first C channels) and the epsilon / v target."""
        return _mse(model, self.example(x0, generator=generator, rows=rows), context, context_lengths, model_kwargs)


def flow_matching_loss(model: Any, x0: Tensor, context: Tensor, context_lengths: Tensor | None = None, *,
                       shift: float = 1.0, generator: torch.Generator | None = None, **model_kwargs: Any) -> Tensor:
    """:meth:`FlowMatching.loss` with uniform sigma and the given ``shift``."""
    return FlowMatching(shift=shift).loss(model, x0, context, context_lengths, generator=generator, **model_kwargs)


def ddpm_loss(model: Any, x0: Tensor, context: Tensor, context_lengths: Tensor | None = None, *,
              prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
              generator: torch.Generator | None = None, **model_kwargs: Any) -> Tensor:
    """:meth:`DDPMObjective.loss` with Latte's linear schedule and the given ``prediction_type``."""
    return DDPMObjective(prediction_type=prediction_type).loss(model, x0, context, context_lengths,
                                                               generator=generator, **model_kwargs)
