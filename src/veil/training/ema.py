"""Exponential moving average of a model's parameters.

``shadow <- d * shadow + (1 - d) * param`` after each optimizer step. The first update uses ``d = 0`` (the
shadow becomes a copy of the weights, so a freshly initialised shadow never drags the average towards the
random init); later updates use ``decay`` (0.9999 for DiT / Latte) or, with ``warmup``, the smaller of
``decay`` and ``(1 + n) / (10 + n)`` after n updates (TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``), which lets short runs follow the weights. Buffers (norm statistics) are copied, not averaged.
The shadow is kept in fp32 whatever the model's dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """An fp32 moving average of ``model``'s floating-point parameters and a copy of its buffers.

    Args:
        model: the trained model (its parameter names key the shadow).
        decay: d in [0, 1).
        warmup: cap the decay at ``(1 + n) / (10 + n)`` after n updates.

    Raises:
        ValueError: ``decay`` outside [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = False):
        if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.is_floating_point()
        }
        self.buffers: dict[str, Tensor] = {name: b.detach().clone() for name, b in model.named_buffers()}

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if self.num_updates == 0:
            return 0.0
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average.

        Raises:
            ValueError: ``model`` has parameters the EMA was not built for (or lacks some).
        """
        d = self.current_decay()
        params = {name: p for name, p in model.named_parameters() if p.is_floating_point()}
        if params.keys() != self.shadow.keys():
            missing, extra = sorted(self.shadow.keys() - params.keys()), sorted(params.keys() - self.shadow.keys())
            raise ValueError(f"model: its parameters differ from the EMA's (missing {missing}, unexpected {extra})")
        for name, p in params.items():
            s = self.shadow[name]
            s.mul_(d).add_(p.detach().to(device=s.device, dtype=torch.float32), alpha=1.0 - d)
        for name, b in model.named_buffers():
            if name in self.buffers:
                self.buffers[name].copy_(b.detach())
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights (cast to each parameter's dtype) and buffers into ``model``."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.device, p.dtype))
        for name, b in model.named_buffers():
            if name in self.buffers:
                b.copy_(self.buffers[name].to(b.device, b.dtype))

    @contextlib.contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run ``model`` with the averaged weights inside the block, its own weights restored after."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(saved)

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow to ``device`` (e.g. keep it on the CPU to save accelerator memory)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self

    def state_dict(self) -> dict[str, Tensor | int | float | bool]:
        """Tensors ``shadow.<name>`` / ``buffer.<name>`` and the scalars ``num_updates``, ``decay``, ``warmup``."""
        out: dict[str, Tensor | int | float | bool] = {f"shadow.{k}": v for k, v in self.shadow.items()}
        out.update({f"buffer.{k}": v for k, v in self.buffers.items()})
        out.update(num_updates=self.num_updates, decay=self.decay, warmup=self.warmup)
        return out

    def load_state_dict(self, state: dict[str, Tensor | int | float | bool]) -> None:
        """Restore from :meth:`state_dict`.

        Raises:
            ValueError: the tensor names or shapes differ from this EMA's.
        """
        shadow = {k[len("shadow."):]: v for k, v in state.items() if k.startswith("shadow.")}
        buffers = {k[len("buffer."):]: v for k, v in state.items() if k.startswith("buffer.")}
        if shadow.keys() != self.shadow.keys() or buffers.keys() != self.buffers.keys():
            diff = sorted((shadow.keys() ^ self.shadow.keys()) | (buffers.keys() ^ self.buffers.keys()))
            raise ValueError(f"ema state: its tensors differ from the model's: {diff}")
        for k, v in shadow.items():
            if v.shape != self.shadow[k].shape:
                raise ValueError(f"ema state: shadow.{k} has shape {list(v.shape)}, the model's is "
                                 f"{list(self.shadow[k].shape)}")
            self.shadow[k] = v.to(self.shadow[k].device, torch.float32).clone()
        for k, v in buffers.items():
            self.buffers[k] = v.to(self.buffers[k].device, self.buffers[k].dtype).clone()
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
