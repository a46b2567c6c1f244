"""Latent codecs: what the diffusion model sees instead of pixels.

Videos are ``[B, C, T, H, W]`` floats in ``[-1, 1]``. ``PixelCodec`` is the identity (the model works on
pixels); ``VAECodec`` wraps a diffusers ``AutoencoderKL`` and applies its ``scaling_factor`` (0.18215 for
the Stable Diffusion VAE): Latte multiplies the latents by it after encoding and divides before decoding,
because the VAE itself does not (Latte's ``sample.py`` / ``train.py``).

Legend: B batch, C channels, T frames, H W pixels (or latent rows/columns).
"""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


def _check_video(name: str, x: object, channels: int | None = None) -> Tensor:
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a float tensor [B, C, T, H, W], got {getattr(x, 'dtype', type(x))}")
    if x.dim() != 5 or (channels is not None and x.shape[1] != channels):
        want = f"[B, {channels}, T, H, W]" if channels is not None else "[B, C, T, H, W]"
        raise ValueError(f"{name}: expected {want}, got {list(x.shape)}")
    return x


class PixelCodec(nn.Module):
    """The identity codec: latents are the pixels (``[-1, 1]``)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.channels = channels
        self.spatial_factor = 1
        self.latent_channels = channels

    def encode(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return _check_video("video", video, self.channels)

    def decode(self, latents: Tensor) -> Tensor:
        return _check_video("latents", latents, self.channels).clamp(-1, 1)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (self.channels, frames, height, width)

    def describe(self) -> dict:
        return {"codec": "pixel", "channels": self.channels}


class VAECodec(nn.Module):
    """A diffusers ``AutoencoderKL`` applied frame by frame, latents scaled by ``scaling_factor``.

    Args:
        vae: an ``AutoencoderKL``.
        scaling_factor: defaults to ``vae.config.scaling_factor`` (0.18215 for the SD VAE).
        sample: encode with a sample of the posterior (training) instead of its mean.
    """

    def __init__(self, vae: nn.Module, scaling_factor: float | None = None, sample: bool = False):
        super().__init__()
        config = getattr(vae, "config", None)
        if config is None or not hasattr(vae, "encode") or not hasattr(vae, "decode"):
            raise TypeError(f"vae: expected a diffusers AutoencoderKL, got {type(vae).__name__}")
        self.vae = vae
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else config.scaling_factor)
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor: expected a positive float, got {self.scaling_factor}")
        self.sample = sample
        self.channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        self.spatial_factor = 2 ** (len(config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs) -> VAECodec:
        """Load a VAE by name or path (e.g. ``stabilityai/sd-vae-ft-ema``) when the user has it."""
        from diffusers import AutoencoderKL

        return cls(AutoencoderKL.from_pretrained(name, **kwargs))

    def encode(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[B, C, T, H, W]`` in ``[-1, 1]`` -> scaled latents ``[B, c, T, H/f, W/f]``."""
        b, _, t, _, _ = _check_video("video", video, self.channels).shape
        frames = video.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)
        dist = self.vae.encode(frames).latent_dist
        z = dist.sample(generator) if self.sample else dist.mean
        z = z * self.scaling_factor
        return z.unflatten(0, (b, t)).transpose(1, 2)  # (B, c, T, h, w)

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> video in ``[-1, 1]``: divides by ``scaling_factor`` before the VAE decodes."""
        b, _, t, _, _ = _check_video("latents", latents, self.latent_channels).shape
        z = latents.transpose(1, 2).flatten(0, 1) / self.scaling_factor  # (B*T, c, h, w)
        frames = self.vae.decode(z).sample
        return frames.unflatten(0, (b, t)).transpose(1, 2).clamp(-1, 1)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.spatial_factor
        if height % f or width % f:
            raise ValueError(f"height, width: must be divisible by the VAE's factor {f}, got {height}x{width}")
        return (self.latent_channels, frames, height // f, width // f)

    def describe(self) -> dict:
        return {"codec": "vae", "scaling_factor": self.scaling_factor}
