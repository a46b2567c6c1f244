"""Batches for text-to-video training: a resumable seeded sampler, collation and text dropout.

Legend: B batch, C latent channels, T frames, H W latent height and width, L text tokens, Dt text width.

A dataset item is a mapping with ``"latents"`` [C, T, H, W] float and ``"context"`` [L, Dt] float text
embeddings (L may differ between items, and may be 0); an optional ``"context_length"`` int says how many of
the L rows are real when the item is already padded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from veil.diffusion.guidance import pad_tokens

__all__ = ["SeededSampler", "collate_text_video", "drop_text", "pad_text", "text_bucket"]


class SeededSampler:
    """An endless stream of dataset indices: a fresh permutation per epoch, seeded by ``(seed, epoch)``.

    Its whole state is ``(epoch, position)``, so a checkpoint restores the exact data order.

    Args:
        size: the dataset length (> 0).
        seed: the base seed.
        shuffle: False streams 0..size-1 in order.

    Raises:
        ValueError: ``size`` is not positive.
    """

    def __init__(self, size: int, seed: int = 0, *, shuffle: bool = True):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"size: expected a positive dataset length, got {size!r}")
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def take(self, n: int) -> list[int]:
        """The next ``n`` indices (crossing epoch boundaries as needed)."""
        out: list[int] = []
        while len(out) < n:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            k = min(n - len(out), self.size - self.position)
            out += self._order[self.position:self.position + k]
            self.position += k
        return out

    def state_dict(self) -> dict[str, int]:
        return {"size": self.size, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the state was saved for another dataset size or seed.
        """
        if int(state["size"]) != self.size or int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state: saved for size {state['size']} / seed {state['seed']}, this sampler "
                             f"has size {self.size} / seed {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


def collate_text_video(items: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
    """Stack items into ``latents`` [B, C, T, H, W], ``context`` [B, L, Dt] (zero-padded) and
    ``context_lengths`` [B] int64.

    Raises:
        ValueError: a missing key, or latents / text widths that differ between items.
    """
    if not items:
        raise ValueError("items: expected at least one dataset item, got none")
    lat, ctx, lengths = [], [], []
    for i, item in enumerate(items):
        if "latents" not in item or "context" not in item:
            raise ValueError(f"items[{i}]: expected keys 'latents' and 'context', got {sorted(item)}")
        x, c = item["latents"], item["context"]
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"items[{i}]['latents']: expected a tensor [C, T, H, W], got "
                             f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not isinstance(c, Tensor) or c.dim() != 2:
            raise ValueError(f"items[{i}]['context']: expected a tensor [L, Dt], got "
                             f"{list(c.shape) if isinstance(c, Tensor) else type(c).__name__}")
        n = int(item.get("context_length", c.shape[0]))
        if not 0 <= n <= c.shape[0]:
            raise ValueError(f"items[{i}]['context_length']: expected a value in [0, {c.shape[0]}], got {n}")
        lat.append(x)
        ctx.append(c[:n])
        lengths.append(n)
    if len({tuple(x.shape) for x in lat}) != 1:
        raise ValueError(f"items: latents shapes differ: {sorted({tuple(x.shape) for x in lat})}")
    if len({c.shape[1] for c in ctx}) != 1:
        raise ValueError(f"items: context widths differ: {sorted({c.shape[1] for c in ctx})}")
    width, longest = ctx[0].shape[1], max(lengths)
    context = torch.zeros(len(ctx), longest, width, dtype=ctx[0].dtype)
    for b, c in enumerate(ctx):
        context[b, : c.shape[0]] = c
    return {"latents": torch.stack(lat), "context": context, "context_lengths": torch.tensor(lengths)}


def drop_text(context: Tensor, lengths: Tensor, drop: Tensor, empty: Tensor) -> tuple[Tensor, Tensor]:
    """Replace the rows where ``drop`` is True by the empty prompt's embedding (for classifier-free guidance).

    Args:
        context: [B, L, Dt]; ``lengths`` [B] int64.
        drop: [B] bool.
        empty: [L0, Dt] the empty prompt's embedding (L0 may be 0: the null prompt, no tokens).

    Returns:
        ``(context [B, max(L, L0), Dt], lengths [B])``, the dropped rows holding ``empty`` with length L0.

    Raises:
        ValueError: ``empty`` has another width.
    """
    if empty.dim() != 2 or empty.shape[1] != context.shape[2]:
        raise ValueError(f"empty_context: expected a tensor [L0, {context.shape[2]}], got {list(empty.shape)}")
    if not bool(drop.any()):
        return context, lengths
    b, l, dt = context.shape
    l0 = empty.shape[0]
    out = context.new_zeros(b, max(l, l0), dt)
    out[:, :l] = context
    rows = drop.nonzero().flatten()
    out[rows] = 0
    out[rows, :l0] = empty.to(out)
    return out, torch.where(drop, torch.full_like(lengths, l0), lengths)


def text_bucket(length: int, smallest: int = 16) -> int:
    """The padded text length for ``length`` tokens: ``smallest``, or the next power of two above it.

    A compiled model with static shapes then builds one graph per bucket (16, 32, 64, ... : six up to 512 tokens)
    instead of one per padded length.
    """
    n = smallest
    while n < length:
        n *= 2
    return n


def pad_text(context: Tensor, length: int) -> Tensor:
    """``context`` [B, L, Dt] padded with zero rows to [B, length, Dt] (the lengths, and so the result, unchanged).

    Raises:
        ValueError: ``length`` < L.
    """
    if length < context.shape[1]:
        raise ValueError(f"length: expected at least the context's {context.shape[1]} tokens, got {length}")
    return pad_tokens(context, length)
