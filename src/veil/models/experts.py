"""Timestep experts: two whole denoisers split along the noise axis (Wan 2.2 A14B's "MoE").

Legend: B batch, T frames, N tokens. A sample with timestep ``t >= boundary * num_train_timesteps`` goes to the
high-noise expert (layout, early steps), any other to the low-noise expert (detail, late steps): Wan2.2
``wan/text2video.py`` (``t.item() >= boundary``, ``boundary = 0.875 * num_train_timesteps``, from
``wan/configs/wan_t2v_A14B.py``; 0.900 for I2V).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Tensor = torch.Tensor
Expert = Literal["high", "low"]
WAN22_T2V_BOUNDARY = 0.875  # Wan 2.2 A14B text-to-video (wan/configs/wan_t2v_A14B.py)


class TimestepExperts(nn.Module):
    """Route each sample to the high- or low-noise expert by its timestep; a drop-in denoiser for any sampler.

    ``forward(x, timestep, *args, **kwargs)`` has the experts' own signature. A batch whose samples fall on
    both sides of the boundary (e.g. a training batch) is split per sample, each part runs through its expert,
    and the results are put back in batch order; tensor arguments whose first dim is ``B`` are split with it.

    Memory: with ``keep_active_only=True`` only the expert in use is on the inputs' device; the other is moved
    to ``offload_device`` (CPU) before it, so at most one expert's weights sit on the accelerator. A sampler
    switches once (high then low), so a run costs one move; in a mixed batch the resident expert runs first.
    ``swaps`` counts the moves and ``resident`` names the expert on the device. On a CPU-only machine the
    moves are CPU -> CPU (no memory is saved; the bookkeeping is the same). Place the experts yourself or let
    the first call do it: ``TimestepExperts.to(device)`` moves both, as for any module.

    Args:
        high_noise_model: the expert for ``t >= boundary * num_train_timesteps``.
        low_noise_model: the expert below.
        boundary: fraction of the training schedule in ``(0, 1]`` (Wan 2.2 T2V: 0.875, I2V: 0.900).
        num_train_timesteps: length of the training schedule the timesteps are measured on (1000).
        keep_active_only: keep only the active expert on the inputs' device.
        offload_device: where the inactive expert goes (not ``meta``: its weights would be lost).

    Raises:
        ValueError: a boundary outside ``(0, 1]``, a non-positive schedule length, or a ``meta`` offload.
    """

    def __init__(self, high_noise_model: nn.Module, low_noise_model: nn.Module,
                 boundary: float = WAN22_T2V_BOUNDARY, *,
                 num_train_timesteps: int = 1000, keep_active_only: bool = False,
                 offload_device: torch.device | str = "cpu"):
        super().__init__()
        for name, m in (("high_noise_model", high_noise_model), ("low_noise_model", low_noise_model)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name}: expected an nn.Module, got {type(m).__name__}")
        if isinstance(boundary, bool) or not isinstance(boundary, (int, float)) or not 0 < boundary <= 1:
            raise ValueError(f"boundary: expected a fraction in (0, 1], got {boundary!r}")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps: expected a positive int, got {num_train_timesteps!r}")
        self.offload_device = torch.device(offload_device)
        if self.offload_device.type == "meta":
            raise ValueError("offload_device: 'meta' would drop the inactive expert's weights; use 'cpu'")
        self.high_noise_model = high_noise_model
        self.low_noise_model = low_noise_model
        self.boundary = float(boundary)
        self.num_train_timesteps = num_train_timesteps
        self.keep_active_only = bool(keep_active_only)
        self.resident: Expert | None = None
        self.swaps = 0

    @property
    def config(self):
        """The high-noise expert's ``config`` (both experts share an architecture), for samplers that read it."""
        return getattr(self.high_noise_model, "config", None)

    @property
    def threshold(self) -> float:
        """The timestep from which the high-noise expert is used (``boundary * num_train_timesteps``)."""
        return self.boundary * self.num_train_timesteps

    def route(self, timestep: Tensor | float, batch: int) -> Tensor:
        """Bool ``[B]``: True where the sample goes to the high-noise expert.

        A sample with several timesteps (per frame ``[B, T]`` or per token ``[B, N]``, as a continuation with clean
        context frames at 0 gives them: diffusion forcing) is routed by its largest one: the expert is the one for
        the noisiest frames, those the step denoises; the clean frames it is conditioned on do not move it.

        Args:
            timestep: ``[B]``, ``[B, ...]`` (several per sample), or a scalar shared by the batch.

        Raises:
            ValueError: a shape whose first dim is not ``B``.
        """
        t = torch.as_tensor(timestep)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 0 or t.shape[0] != batch or t.numel() == 0:
            raise ValueError(f"timestep: expected a scalar, [B] = [{batch}] or [B, ...] (several per sample), got "
                             f"{list(t.shape)}")
        if t.dim() > 1:
            t = t.reshape(batch, -1).amax(1)  # (B,): the noisiest frame of each sample
        return t.double() >= self.threshold

    def expert(self, name: Expert) -> nn.Module:
        """The expert called ``name`` (``"high"`` or ``"low"``)."""
        return self.high_noise_model if name == "high" else self.low_noise_model

    def activate(self, name: Expert, device: torch.device | str) -> nn.Module:
        """Make ``name`` the expert on ``device`` (offloading the other when ``keep_active_only``); return it."""
        model = self.expert(name)
        if not self.keep_active_only:
            return model
        device = torch.device(device)
        if self.resident != name or _device_of(model) != device:
            self.expert("low" if name == "high" else "high").to(self.offload_device)
            model.to(device)
            self.resident = name
            self.swaps += 1
        return model

    def forward(self, x: Tensor, timestep: Tensor | float, *args, **kwargs):
        """Denoise ``x`` ``[B, ...]`` with each sample's expert; the experts' arguments pass through.

        Returns:
            the experts' output (a tensor ``[B, ...]``), in batch order.
        """
        bsz = x.shape[0]
        high = self.route(timestep, bsz).to(x.device)
        n_high = int(high.sum())
        if n_high in (0, bsz):  # the whole batch on one side: no split (every step of a sampler)
            return self.activate("high" if n_high else "low", x.device)(x, timestep, *args, **kwargs)
        t = torch.as_tensor(timestep, device=x.device)
        t = t.expand(bsz) if t.dim() == 0 else t  # (B,) or (B, ...): split with the batch
        order: list[Expert] = ["low", "high"] if self.resident == "low" else ["high", "low"]
        out: Tensor | None = None
        for name in order:
            idx = (high if name == "high" else ~high).nonzero().squeeze(1)  # (b,)
            part = self.activate(name, x.device)(x[idx], t[idx], *_take(args, idx, bsz), **_take(kwargs, idx, bsz))
            if not isinstance(part, torch.Tensor):
                raise TypeError(f"expert {name!r}: a split batch needs a tensor output, got {type(part).__name__}")
            if out is None:
                out = part.new_empty((bsz, *part.shape[1:]))
            out[idx] = part
        return out


def _device_of(model: nn.Module) -> torch.device | None:
    p = next(model.parameters(), None)
    return p.device if p is not None else None


def _take(values, idx: Tensor, bsz: int):
    """Rows ``idx`` of every tensor with a leading batch dim ``bsz`` in a tuple or dict; others unchanged."""
    def one(v):
        return v[idx.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == bsz else v
    if isinstance(values, dict):
        return {k: one(v) for k, v in values.items()}
    return tuple(one(v) for v in values)
