"""Keyframe anchoring: hold given frames of a video fixed while the rest is sampled.

Legend: B batch, C latent channels, T frames, K anchored frames, H W latent height and width.

Before each denoiser call the anchored frames are replaced by their clean latents noised to the current noise
level with the scheduler's own forward process (``scale_noise`` for flow-match Euler, ``add_noise`` for the
others), using the sample's initial noise for those frames so the anchor follows one consistent trajectory;
after the last step they are set to the clean latents exactly. The other frames attend to the anchors through
the denoiser and are pulled towards a video that continues them (the replacement trick of
https://arxiv.org/abs/2201.09865 without resampling).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["Keyframes", "noise_to_timestep"]


class Keyframes:
    """Anchored frames of a [B, C, T, H, W] sample.

    Args:
        frames: ``{frame index: clean latent}``; an index may be negative (``-1`` = last frame); a latent is
            [B, C, H, W] or [C, H, W] (the same for every sample).
        shape: the sample's shape (B, C, T, H, W).

    Raises:
        ValueError: an index outside [-T, T), the same frame twice, or a latent of the wrong shape.
    """

    def __init__(self, frames: Mapping[int, Tensor], shape: tuple[int, ...]):
        if not isinstance(frames, Mapping) or not frames:
            raise ValueError(f"keyframes: expected a non-empty mapping {{frame index: latent}}, got {frames!r}")
        b, c, t, h, w = shape
        indices: list[int] = []
        latents: list[Tensor] = []
        for i, lat in frames.items():
            if not isinstance(i, int) or isinstance(i, bool) or not -t <= i < t:
                raise ValueError(f"keyframes: expected frame indices in [-{t}, {t}) for {t} frames, got {i!r}")
            j = i % t
            if j in indices:
                raise ValueError(f"keyframes: frame {j} is given twice (as {i} and {indices[indices.index(j)]})")
            if not isinstance(lat, Tensor) or tuple(lat.shape[-3:]) != (c, h, w) or lat.dim() not in (3, 4) or \
                    (lat.dim() == 4 and lat.shape[0] != b):
                got = list(lat.shape) if isinstance(lat, Tensor) else type(lat).__name__
                raise ValueError(f"keyframes[{i}]: expected a latent [{b}, {c}, {h}, {w}] or [{c}, {h}, {w}], "
                                 f"got {got}")
            indices.append(j)
            latents.append(lat.expand(b, c, h, w))
        self.indices = indices
        self.clean = torch.stack(latents, dim=2)  # (B, C, K, H, W)

    def __len__(self) -> int:
        return len(self.indices)

    def apply(self, x: Tensor, values: Tensor) -> Tensor:
        """A copy of ``x`` [B, C, T, H, W] with the anchored frames set to ``values`` [B, C, K, H, W]."""
        x = x.clone()
        x[:, :, self.indices] = values.to(x.dtype)
        return x

    def noised(self, scheduler, noise: Tensor, timestep: Tensor) -> Tensor:
        """The clean anchors noised to ``timestep`` with ``noise`` [B, C, K, H, W] by the scheduler."""
        return noise_to_timestep(scheduler, self.clean.to(noise), noise, timestep)


def noise_to_timestep(scheduler, clean: Tensor, noise: Tensor, timestep: Tensor) -> Tensor:
    """``clean`` noised to the scheduler's noise level at ``timestep`` (one of ``scheduler.timesteps``).

    Uses diffusers' forward process: ``scale_noise`` (flow-match Euler: ``(1 - sigma) x0 + sigma noise``) or
    ``add_noise`` (DDPM / DDIM: ``sqrt(abar) x0 + sqrt(1 - abar) noise``; UniPC with flow sigmas:
    ``(1 - sigma) x0 + sigma noise``). Schedulers with a step index are expected to have ``set_begin_index(0)``
    called before sampling so that the level is the current step's.

    Raises:
        ValueError: the scheduler has neither method.
    """
    t = timestep.reshape(1).expand(clean.shape[0]).to(clean.device)
    if hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(clean, t, noise)
    if hasattr(scheduler, "add_noise"):
        return scheduler.add_noise(clean, noise, t)
    raise ValueError(f"scheduler: {type(scheduler).__name__} has neither scale_noise nor add_noise; "
                     "keyframes need the scheduler's forward process")
