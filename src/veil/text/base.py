"""The text encoder interface: prompts in, padded token embeddings and per-sample lengths out.

Legend: B prompts, L tokens (the longest prompt of the batch), D embedding width. Padding: rows ``l >= lengths[b]``
of ``embeddings[b]`` are exactly zero; attend with ``veil.masks.key_padding(lengths)`` so they are never seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns prompts into token embeddings.

    Attributes:
        id: a string naming the encoder and its settings (the cache key; two encoders with one id must give the
            same embeddings).
        dim: D.
    """

    id: str
    dim: int

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (embeddings float [B, L, D] zero beyond each length, lengths long [B])."""
        ...


def check_prompts(name: str, prompts: object) -> list[str]:
    """A non-empty list of strings (a single string is a list of one).

    Raises:
        TypeError: not a string or a sequence of strings.
        ValueError: an empty sequence.
    """
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name}: expected a string or a sequence of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError(f"{name}: expected at least one prompt, got none")
    return list(prompts)


def pad_embeddings(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-prompt embeddings [L_i, D] into (zero-padded [B, max L_i, D], lengths long [B])."""
    lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
    out = rows[0].new_zeros(len(rows), int(lengths.max()), rows[0].shape[1])
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out, lengths


def unpad(embeddings: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """The inverse of :func:`pad_embeddings`: one [L_i, D] tensor per prompt."""
    return [embeddings[i, : int(n)] for i, n in enumerate(lengths)]


def encode_pair(encoder: TextEncoder, prompts: Sequence[str] | str,
                negative_prompts: Sequence[str] | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a classifier-free-guidance batch: the prompts, then the negative prompts, in one call.

    Args:
        encoder: any :class:`TextEncoder`.
        prompts: B prompts (a single string is one prompt).
        negative_prompts: B negative prompts, one string for all, or None for the empty prompt "".

    Returns:
        (embeddings [2B, L, D], lengths long [2B]): rows ``0..B-1`` are the conditional prompts and rows
        ``B..2B-1`` their negatives, the order of ``torch.cat([cond, uncond])``; each row is zero beyond its own
        length, and the lengths generally differ.

    Raises:
        TypeError / ValueError: bad prompts, or a number of negative prompts other than B.
    """
    prompts = check_prompts("prompts", prompts)
    if negative_prompts is None:
        negative_prompts = [""] * len(prompts)
    elif isinstance(negative_prompts, str):
        negative_prompts = [negative_prompts] * len(prompts)
    negative_prompts = check_prompts("negative_prompts", negative_prompts)
    if len(negative_prompts) != len(prompts):
        raise ValueError(f"negative_prompts: expected {len(prompts)} (one per prompt), got {len(negative_prompts)}")
    return encoder.encode(prompts + negative_prompts)


class TextEncoderBase:
    """Shared methods for veil's encoders; subclasses set ``id``, ``dim`` and implement ``encode``."""

    id: str
    dim: int

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode_pair(self, prompts: Sequence[str] | str,
                    negative_prompts: Sequence[str] | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`encode_pair`."""
        return encode_pair(self, prompts, negative_prompts)
