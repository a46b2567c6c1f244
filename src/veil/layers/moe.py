"""Mixture of experts with token-choice top-k routing, capacity, and auxiliary losses.

Legend: N tokens (batch and sequence flattened), E experts, k experts per token, D model width, F expert
hidden width, A = k * N assignments (token, expert).

Tokens are grouped per expert by sorting the assignments (``argsort`` + segment lengths from ``bincount``),
then each expert runs one matmul over its contiguous segment (a loop over experts, never over tokens), and
the weighted results are scattered back with ``index_add``. The router runs in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from veil.layers.feedforward import Activation, activation_fn

Tensor = torch.Tensor


@dataclass
class MoEAux:
    """What the router reports for one forward.

    Attributes:
        load_balancing_loss: scalar, ``E * sum_e f_e P_e`` with ``f_e`` the fraction of the ``A`` assignments
            routed to expert ``e`` (before capacity drops) and ``P_e`` the mean router probability of ``e``
            (Switch Transformer, https://arxiv.org/abs/2101.03961, eq. 4). 1 for perfectly uniform routing;
            HF Mixtral's ``load_balancing_loss_func`` returns ``k`` times this value.
        z_loss: scalar, ``mean_n logsumexp(logits_n)^2`` (ST-MoE, https://arxiv.org/abs/2202.08906, eq. 5).
        tokens_per_expert: int ``[E]``, assignments each expert processed (after capacity).
        dropped: int scalar tensor, assignments dropped for capacity (0 when dropless).
        capacity: slots per expert, or None when dropless.
    """

    load_balancing_loss: Tensor
    z_loss: Tensor
    tokens_per_expert: Tensor
    dropped: Tensor
    capacity: int | None


class MoE(nn.Module):
    """Token-choice top-k mixture of MLP experts.

    Each token's router probabilities ``softmax(W_r x)`` pick its top ``k`` experts; the gates are those
    probabilities, renormalised to sum to 1 over the ``k`` picks when ``normalize_gates`` (Mixtral).

    Capacity: with ``capacity_factor`` set, each expert processes at most
    ``ceil(capacity_factor * k * N / E)`` assignments. Priority goes to first choices over second choices
    (GShard), then to earlier tokens; a dropped assignment contributes nothing (the token's remaining gates
    are not renormalised), and a token whose every assignment is dropped gets 0 (its residual carries it).
    ``capacity_factor=None`` is dropless.

    Args:
        dim: model width D.
        hidden: expert hidden width F.
        num_experts: E.
        top_k: k, in ``[1, E]``.
        capacity_factor: None (dropless) or a positive float.
        activation: expert activation (see :func:`veil.layers.feedforward.activation_fn`).
        gated: experts are gated MLPs ``down(act(x W_g) * (x W_u))`` (SwiGLU with SiLU) rather than
            ``down(act(x W_u))``.
        normalize_gates: renormalise the top-k gates to sum to 1.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, capacity_factor: float | None = None, *,
                 activation: Activation = "silu", gated: bool = True, normalize_gates: bool = True):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("num_experts", num_experts), ("top_k", top_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if top_k > num_experts:
            raise ValueError(f"top_k: expected at most num_experts={num_experts}, got {top_k}")
        if capacity_factor is not None and (isinstance(capacity_factor, bool) or not capacity_factor > 0):
            raise ValueError(f"capacity_factor: expected None (dropless) or a positive float, got {capacity_factor!r}")
        self.dim, self.hidden, self.num_experts, self.top_k = dim, hidden, num_experts, top_k
        self.capacity_factor = capacity_factor
        self.normalize_gates = normalize_gates
        self.gated = gated
        self.act = activation_fn(activation)
        self.router = nn.Linear(dim, num_experts, bias=False)
        bound_in, bound_out = 1 / math.sqrt(dim), 1 / math.sqrt(hidden)
        self.w_up = nn.Parameter(torch.empty(num_experts, dim, hidden).uniform_(-bound_in, bound_in))
        self.w_gate = (nn.Parameter(torch.empty(num_experts, dim, hidden).uniform_(-bound_in, bound_in))
                       if gated else None)
        self.w_down = nn.Parameter(torch.empty(num_experts, hidden, dim).uniform_(-bound_out, bound_out))

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on ``x`` ``[n, D]`` -> ``[n, D]``."""
        h = x @ self.w_up[e]  # (n, F)
        h = self.act(x @ self.w_gate[e]) * h if self.w_gate is not None else self.act(h)
        return h @ self.w_down[e]  # (n, D)

    def capacity(self, num_tokens: int) -> int | None:
        """Slots per expert for ``num_tokens`` tokens, or None when dropless."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * self.top_k * num_tokens / self.num_experts)

    def forward(self, x: Tensor) -> tuple[Tensor, MoEAux]:
        """Route and mix.

        Args:
            x: ``[..., D]`` (e.g. ``[B, L, D]``).

        Returns:
            ``(out, aux)``: ``out`` has ``x``'s shape and dtype; ``aux`` is a :class:`MoEAux`.
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x: expected [..., {self.dim}], got {list(getattr(x, 'shape', []))}")
        e_count, k = self.num_experts, self.top_k
        xf = x.reshape(-1, self.dim)  # (N, D)
        n = xf.shape[0]
        logits = nn.functional.linear(xf.float(), self.router.weight.float())  # (N, E)
        probs = logits.softmax(dim=-1)
        gates, chosen = probs.topk(k, dim=-1)  # (N, k)
        if self.normalize_gates:
            gates = gates / gates.sum(dim=-1, keepdim=True)

        # assignments in priority order: all first choices (token order), then all second choices, ...
        flat_expert = chosen.t().reshape(-1)  # (A,)
        flat_token = torch.arange(n, device=x.device).repeat(k)  # (A,)
        flat_gate = gates.t().reshape(-1)  # (A,)
        order = torch.argsort(flat_expert, stable=True)  # (A,) grouped by expert, priority kept inside a group
        counts = torch.bincount(flat_expert, minlength=e_count)  # (E,)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel(), device=x.device) - starts[flat_expert[order]]  # slot inside the expert
        cap = self.capacity(n)
        if cap is not None:
            kept = order[rank < cap]
            kept_counts = counts.clamp(max=cap)
        else:
            kept, kept_counts = order, counts
        tokens = flat_token[kept]  # (A_kept,) grouped by expert
        xs = xf[tokens]  # (A_kept, D)
        ys = [self.expert(e, seg) if seg.shape[0] else seg
              for e, seg in enumerate(torch.split(xs, kept_counts.tolist()))]
        ys = torch.cat(ys, dim=0) * flat_gate[kept].to(x.dtype)[:, None]  # (A_kept, D)
        out = torch.zeros_like(xf).index_add_(0, tokens, ys.to(xf.dtype))  # (N, D)

        frac = counts.float() / max(1, n * k)  # f_e
        mean_prob = probs.mean(dim=0)  # P_e
        aux = MoEAux(
            load_balancing_loss=e_count * (frac * mean_prob).sum(),
            z_loss=torch.logsumexp(logits, dim=-1).pow(2).mean(),
            tokens_per_expert=kept_counts,
            dropped=(counts - kept_counts).sum(),
            capacity=cap,
        )
        return out.view_as(x), aux

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, num_experts={self.num_experts}, top_k={self.top_k}, "
                f"capacity_factor={self.capacity_factor}, gated={self.gated}")
