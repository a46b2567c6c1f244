"""Feed-forward blocks: a GELU MLP (DiT, Latte, Wan) and gated MLPs (SwiGLU: Llama; GEGLU: Gemma).

Legend: B batch, L tokens, D model width, F hidden width.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Tensor = torch.Tensor
Activation = Literal["gelu_tanh", "gelu", "silu", "relu"]


def activation_fn(name: Activation):
    """The element-wise activation called ``name``.

    ``"gelu_tanh"`` is the tanh approximation (HF ``gelu_pytorch_tanh``, diffusers ``gelu-approximate``).

    Raises:
        ValueError: unknown name.
    """
    if name == "gelu_tanh":
        return lambda x: nn.functional.gelu(x, approximate="tanh")
    if name == "gelu":
        return nn.functional.gelu
    if name == "silu":
        return nn.functional.silu
    if name == "relu":
        return nn.functional.relu
    raise ValueError(f"activation: expected one of 'gelu_tanh', 'gelu', 'silu', 'relu', got {name!r}")


def _check_width(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


class MLP(nn.Module):
    """``fc2(act(fc1(x)))``: the transformer MLP of DiT, Latte and Wan (tanh-approximated GELU by default).

    Args:
        dim: model width D (input and output).
        hidden: hidden width F.
        activation: see :func:`activation_fn`.
        bias: biases on both linears (True in DiT / Latte / Wan).
    """

    def __init__(self, dim: int, hidden: int, *, activation: Activation = "gelu_tanh", bias: bool = True):
        super().__init__()
        _check_width("dim", dim)
        _check_width("hidden", hidden)
        self.act = activation_fn(activation)
        self.activation = activation
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[..., D]`` -> ``[..., D]``."""
        return self.fc2(self.act(self.fc1(x)))


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` (https://arxiv.org/abs/2002.05202), names as HF Llama / Gemma.

    Args:
        dim: model width D.
        hidden: hidden width F (of each of ``gate`` and ``up``).
        activation: ``"silu"`` gives SwiGLU, ``"gelu_tanh"`` gives GEGLU as in Gemma.
        bias: biases on the three linears (False in Llama / Gemma).
    """

    def __init__(self, dim: int, hidden: int, *, activation: Activation = "silu", bias: bool = False):
        super().__init__()
        _check_width("dim", dim)
        _check_width("hidden", hidden)
        self.act = activation_fn(activation)
        self.activation = activation
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[..., D]`` -> ``[..., D]``."""
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class SwiGLU(GatedMLP):
    """:class:`GatedMLP` with SiLU (Llama, Mistral)."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = False):
        super().__init__(dim, hidden, activation="silu", bias=bias)


class GEGLU(GatedMLP):
    """:class:`GatedMLP` with tanh-approximated GELU (Gemma 1/2/3: ``gelu_pytorch_tanh``)."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = False):
        super().__init__(dim, hidden, activation="gelu_tanh", bias=bias)
