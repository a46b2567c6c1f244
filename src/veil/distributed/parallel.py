"""``SequenceParallel``: how a model splits its tokens across ranks (a group and the Ulysses / ring degrees).

A model switched to sequence parallelism (``model.enable_sequence_parallel(...)``) keeps its weights whole on
every rank of the group, takes the same full inputs on every rank, cuts its tokens into this rank's shard after
the embedding, runs every block on the shard (attention through :func:`veil.distributed.attend` with the
global masks; everything else is per token), and gathers the shards after its last per-token layer, so every
rank returns the full output, equal to one process's.

Gradients: every parameter's gradient on a rank is the contribution of that rank's tokens (what the gathered
output's gradient says about them). Summed over the group (``all_reduce``, SUM) they are one process's
gradients; :meth:`SequenceParallel.reduce_gradients` does that, for training without a data-parallel wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from veil.distributed.attention import attend
from veil.distributed.comm import check_layout, gather, group_index, require_initialized, shard, topology
from veil.masks import Mask

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class SequenceParallel:
    """A sequence-parallel group and its degrees (see :func:`veil.distributed.attend`).

    Attributes:
        group: a ProcessGroup (default: the world), a 1D DeviceMesh, or a 2D DeviceMesh ("ring", "ulysses").
        ulysses, ring: the degrees (``ulysses * ring`` = the group size; default chosen per call from the heads).
        layout: "contiguous" shards, or "zigzag" (an early and a late chunk per rank: a ring under a causal mask
            then gives every rank the same work; see :mod:`veil.distributed.comm`).
    """

    group: Any = None
    ulysses: int | None = None
    ring: int | None = None
    layout: str = "contiguous"

    def __post_init__(self) -> None:
        require_initialized("sequence parallel")
        check_layout(self.layout)
        for name in ("ulysses", "ring"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected a positive int or None, got {v!r}")

    @property
    def size(self) -> int:
        return group_index(self.group)[1]

    def check_heads(self, heads: int) -> None:
        """Raise ``ValueError`` now (not at the first forward) when ``heads`` cannot be split as configured."""
        topo = topology(self.group, self.ulysses, self.ring, heads)
        if heads % topo.ulysses:
            raise ValueError(f"ulysses: the model's {heads} heads do not divide by the Ulysses degree {topo.ulysses}; "
                             f"choose ulysses dividing {heads} and ring = size / ulysses")

    def shard(self, x: Tensor, dim: int = 1) -> Tensor:
        return shard(x, dim, self.group, self.layout)

    def gather(self, x: Tensor, total: int | None = None, dim: int = 1) -> Tensor:
        return gather(x, dim, self.group, total=total, layout=self.layout)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, *, kv_sharded: bool, scale: float | None,
               softcap: float | None, backend: str) -> Tensor:
        return attend(q, k, v, mask, group=self.group, ulysses=self.ulysses, ring=self.ring, kv_sharded=kv_sharded,
                      scale=scale, softcap=softcap, backend=backend, layout=self.layout)

    def reduce_gradients(self, model: nn.Module) -> None:
        """Sum every parameter's gradient over the group (one collective for all of them)."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or self.size == 1:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        pg = self.group.get_group() if type(self.group).__name__ == "DeviceMesh" else self.group
        dist.all_reduce(flat, group=pg)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def enable_sequence_parallel(module: nn.Module, group: Any = None, *, ulysses: int | None = None,
                             ring: int | None = None, layout: str = "contiguous") -> nn.Module:
    """``enable_sequence_parallel`` on ``module`` or, for a wrapper (an x-prediction head, a text normaliser, a
    pair of experts), on every model inside it that has the method; returns ``module``.

    Raises:
        ValueError: nothing inside ``module`` can run sequence-parallel (WanDiT, LatteDiT, DecoderLM can).
    """
    targets = [m for m in module.modules() if hasattr(m, "enable_sequence_parallel")]
    if not targets:
        raise ValueError(f"model: {type(module).__name__} holds no model that can run sequence-parallel "
                         "(enable_sequence_parallel: WanDiT, LatteDiT, DecoderLM)")
    for m in targets:
        m.enable_sequence_parallel(group, ulysses=ulysses, ring=ring, layout=layout)
    return module
