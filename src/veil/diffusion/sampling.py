"""Sampling with diffusers' schedulers: classifier-free guidance, keyframe anchoring and long videos.

Legend: B batch, C latent channels, T frames, K anchored / overlap frames, H W latent height and width,
L text tokens, Dt text width.

The integration itself is diffusers' (``set_timesteps``, ``scale_model_input``, ``step``): flow-match Euler and
UniPC (``prediction_type="flow_prediction"``) for flow-matching models, DDIM and DDPM for epsilon / v models.
What is added here is how the denoiser is called (the protocol of :mod:`veil.diffusion`, guidance in one batch,
per-expert scales) and what is held fixed (keyframes, the overlap of consecutive windows).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from veil.diffusion.guidance import check_context, guidance_batch, guidance_scale_for, parse_guidance_scale
from veil.diffusion.keyframes import Keyframes
from veil.diffusion.objectives import prediction_for

__all__ = ["extend", "sample"]


def _check_shape(shape: Sequence[int], batch: int) -> tuple[int, int, int, int, int]:
    if len(shape) != 5 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape: expected five positive ints (B, C, T, H, W), got {tuple(shape)!r}")
    if shape[0] != batch:
        raise ValueError(f"shape: expected batch size {batch} (the context's), got {shape[0]}")
    return tuple(shape)  # type: ignore[return-value]


@torch.no_grad()
def sample(model: Any, scheduler: Any, shape: Sequence[int], context: Tensor, context_lengths: Tensor | None = None,
           negative_context: Tensor | None = None, negative_lengths: Tensor | None = None, *,
           guidance_scale: float | Sequence[float] = 5.0, steps: int = 50, generator: torch.Generator | None = None,
           keyframes: Mapping[int, Tensor] | None = None, progress: bool = True, latents: Tensor | None = None,
           model_kwargs: Mapping[str, Any] | None = None, clean_anchors: bool = False,
           guidance_interval: Sequence[float] | None = None) -> Tensor:
    """Sample latents [B, C, T, H, W] from a denoiser with a diffusers scheduler.

    Args:
        model: a denoiser ``model(x, timestep, context, context_lengths, **model_kwargs)`` (see
            :mod:`veil.diffusion`); its output may carry a learned variance in extra channels (dropped).
        scheduler: a diffusers scheduler whose ``prediction_type`` matches the model (``FlowMatchEulerDiscrete``,
            ``UniPCMultistep`` with flow sigmas, ``DDIM``, ``DDPM``, ...). Its timesteps are set here.
        shape: (B, C, T, H, W).
        context: [B, L, Dt] text embeddings; ``context_lengths`` [B] int64 (None: all L).
        negative_context: [B or 1, Ln, Dt] negative prompt embeddings; None: the null prompt (length 0).
            Used only when guidance is on (a scale other than 1).
        negative_lengths: [B or 1] lengths of the negative prompt (None: all Ln).
        guidance_scale: ``g`` in ``uncond + g * (cond - uncond)``; 1 turns guidance off (one row per sample).
            A (high_noise, low_noise) pair gives per-expert scales for a two-expert model (Wan 2.2's
            ``TimestepExperts``); note that Wan's configs list ``sample_guide_scale`` as (low, high).
        steps: number of scheduler steps.
        generator: draws the initial noise (and the noise of stochastic schedulers such as DDPM).
        keyframes: ``{frame index: clean latent [B, C, H, W] or [C, H, W]}`` held fixed through sampling and
            returned exactly (:mod:`veil.diffusion.keyframes`).
        progress: show a tqdm bar.
        latents: initial noise [B, C, T, H, W] (unit variance) to use instead of drawing it.
        model_kwargs: extra keyword arguments for every model call (they are not split by guidance, so they
            must not have a batch dimension).
        clean_anchors: give the keyframes to the denoiser clean, with per-frame timesteps ``[B, T]`` that are 0
            on them, instead of noised to the current level (for a denoiser trained for continuation, see
            ``FlowMatching.context_frames``; its temporal patches must not straddle anchored and free frames).
        guidance_interval: ``(lo, hi)``: guide only the steps whose noise level ``timestep / num_train_timesteps``
            (the sigma of flow matching) lies in ``[lo, hi]``; the other steps run the conditional rows alone
            (scale 1, half the rows). None: every step (Kynkaenniemi et al. 2024 guide a limited interval).

    Returns:
        float32 latents [B, C, T, H, W] on the context's device.

    Raises:
        ValueError: bad shapes, lengths, steps, guidance scales, guidance interval or keyframes.
    """
    lengths = check_context(context, context_lengths)
    b, c, t, h, w = _check_shape(shape, context.shape[0])
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    scales = parse_guidance_scale(guidance_scale)
    interval = _check_interval(guidance_interval)
    given_pair = not isinstance(guidance_scale, (int, float))
    device = context.device
    guided = scales != (1.0, 1.0)
    if guided:
        ctx, ctx_lengths = guidance_batch(context, lengths, negative_context, negative_lengths)
    else:
        ctx, ctx_lengths = context, lengths
    anchors = Keyframes(keyframes, (b, c, t, h, w)) if keyframes is not None else None
    kwargs = dict(model_kwargs or {})

    if latents is None:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn((b, c, t, h, w), generator=generator, device=gen_device, dtype=torch.float32).to(device)
    else:
        if not isinstance(latents, Tensor) or tuple(latents.shape) != (b, c, t, h, w):
            got = list(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise ValueError(f"latents: expected a tensor {[b, c, t, h, w]}, got {got}")
        noise = latents.to(device, torch.float32)

    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()  # no dropout while sampling; the mode is restored below
    try:
        x = _integrate(model, scheduler, steps, noise, ctx, ctx_lengths, anchors, scales, given_pair, guided,
                       generator, progress, kwargs, clean_anchors and anchors is not None, interval)
    finally:
        if was_training:
            model.train()
    if anchors is not None:
        x = anchors.apply(x, anchors.clean.to(x))
    return x


def _integrate(model: Any, scheduler: Any, steps: int, noise: Tensor, ctx: Tensor, ctx_lengths: Tensor,
               anchors: Keyframes | None, scales: tuple[float, float], given_pair: bool, guided: bool,
               generator: torch.Generator | None, progress: bool, kwargs: dict[str, Any],
               clean: bool = False, interval: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    # the scheduler loop of sample(); ctx holds the conditional rows, then the unconditional ones when guided
    b, device = noise.shape[0], noise.device
    anchor_noise = noise[:, :, anchors.indices] if anchors is not None else None  # (B, C, K, H, W)
    scheduler.set_timesteps(steps, device=device)
    if hasattr(scheduler, "set_begin_index"):
        # add_noise / scale_noise then use the current step's noise level (diffusers' inpainting convention)
        scheduler.set_begin_index(0)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    num_train = int(getattr(scheduler.config, "num_train_timesteps", 1000))
    x = noise * float(getattr(scheduler, "init_noise_sigma", 1.0))
    scale_input = getattr(scheduler, "scale_model_input", None)  # flow-match Euler has none
    free = None
    if clean:  # per-frame timesteps: 0 on the anchored frames, which the denoiser sees clean
        free = torch.ones(noise.shape[2], device=device)
        free[anchors.indices] = 0.0

    for timestep in tqdm(scheduler.timesteps, disable=not progress, desc="sampling", leave=False):
        if clean:
            x = anchors.apply(x, anchors.clean.to(x))
        elif anchors is not None:
            x = anchors.apply(x, anchors.noised(scheduler, anchor_noise, timestep))
        x_in = scale_input(x, timestep) if scale_input is not None else x
        g = guidance_scale_for(model, float(timestep), scales, given_pair=given_pair, num_train_timesteps=num_train)
        guide = guided and interval[0] <= float(timestep) / num_train <= interval[1]
        rows = 2 * b if guide else b
        x_in = torch.cat([x_in, x_in]) if guide else x_in  # (rows, C, T, H, W)
        t_in = timestep.to(device=device, dtype=torch.float32).reshape(1).expand(rows)
        if free is not None:
            t_in = t_in[:, None] * free  # (rows, T)
        step_ctx, step_len = (ctx, ctx_lengths) if guide or not guided else (ctx[:b], ctx_lengths[:b])
        pred = prediction_for(model(x_in, t_in, step_ctx, step_len, **kwargs), x_in).float()
        if guide:
            cond, uncond = pred.chunk(2)
            pred = uncond + g * (cond - uncond)
        x = scheduler.step(pred, timestep, x, return_dict=False, **step_kwargs)[0].float()
    return x


@torch.no_grad()
def _check_interval(interval: Sequence[float] | None) -> tuple[float, float]:
    if interval is None:
        return (0.0, 1.0)
    ok = isinstance(interval, Sequence) and len(interval) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)
    if not ok or not 0.0 <= interval[0] <= interval[1] <= 1.0:
        raise ValueError(f"guidance_interval: expected (lo, hi) with 0 <= lo <= hi <= 1, got {interval!r}")
    return float(interval[0]), float(interval[1])


def extend(model: Any, scheduler: Any, video_latents: Tensor, context: Tensor, frames: int, window: int,
           overlap_k: int, *, context_lengths: Tensor | None = None, negative_context: Tensor | None = None,
           negative_lengths: Tensor | None = None, guidance_scale: float | Sequence[float] = 5.0, steps: int = 50,
           generator: torch.Generator | None = None, progress: bool = True, return_windows: bool = False,
           model_kwargs: Mapping[str, Any] | None = None, clean_anchors: bool = False,
           guidance_interval: Sequence[float] | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Extend a video to ``frames`` frames, window after window, each anchored on the previous one's last frames.

    Each new window of ``window`` frames is sampled with its first ``overlap_k`` frames anchored
    (:func:`sample`'s ``keyframes``) to the last ``overlap_k`` frames of the video so far; its remaining
    ``window - overlap_k`` frames are appended (the last window's truncated to reach ``frames`` exactly).

    Args:
        model, scheduler, context, context_lengths, negative_context, negative_lengths, guidance_scale, steps,
            generator, model_kwargs, clean_anchors, guidance_interval: as in :func:`sample`, used for every window.
        video_latents: the video so far [B, C, T0, H, W] with T0 >= overlap_k.
        frames: the requested length, >= T0.
        window: frames per sampled window (the model's trained length).
        overlap_k: anchored frames per window, 0 < overlap_k < window.
        progress: a bar over the windows.
        return_windows: also return the sampled windows [B, C, window, H, W] in order.

    Returns:
        float32 latents [B, C, frames, H, W] starting with ``video_latents`` (and the windows when asked).

    Raises:
        ValueError: bad ``frames``, ``window``, ``overlap_k`` or ``video_latents``.
    """
    if not isinstance(video_latents, Tensor) or video_latents.dim() != 5 or not video_latents.is_floating_point():
        got = list(video_latents.shape) if isinstance(video_latents, Tensor) else type(video_latents).__name__
        raise ValueError(f"video_latents: expected a float tensor [B, C, T, H, W], got {got}")
    b, c, t0, h, w = video_latents.shape
    for name, value in (("frames", frames), ("window", window), ("overlap_k", overlap_k)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name}: expected an int, got {value!r}")
    if not 0 < overlap_k < window:
        raise ValueError(f"overlap_k: expected 0 < overlap_k < window = {window}, got {overlap_k}")
    if t0 < overlap_k:
        raise ValueError(f"video_latents: expected at least overlap_k = {overlap_k} frames, got {t0}")
    if frames < t0:
        raise ValueError(f"frames: expected at least the given video's {t0} frames, got {frames}")

    video = video_latents.to(context.device, torch.float32)
    windows: list[Tensor] = []
    new_per_window = window - overlap_k
    n_windows = -(-(frames - t0) // new_per_window)
    for _ in tqdm(range(n_windows), disable=not progress, desc="windows", leave=False):
        tail = video[:, :, -overlap_k:]  # (B, C, K, H, W)
        anchors = {i: tail[:, :, i] for i in range(overlap_k)}
        win = sample(model, scheduler, (b, c, window, h, w), context, context_lengths, negative_context,
                     negative_lengths, guidance_scale=guidance_scale, steps=steps, generator=generator,
                     keyframes=anchors, progress=False, model_kwargs=model_kwargs, clean_anchors=clean_anchors,
                     guidance_interval=guidance_interval)
        windows.append(win)
        need = frames - video.shape[2]
        video = torch.cat([video, win[:, :, overlap_k:overlap_k + need]], dim=2)  # (B, C, T', H, W)
    return (video, windows) if return_windows else video
