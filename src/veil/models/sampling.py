"""Next-token choice for autoregressive decoding: greedy, temperature, top-k and top-p (nucleus) sampling.

Legend: B batch, V vocabulary.

The processors run in the order Hugging Face ``generate`` applies them (temperature, then top-k, then top-p)
and with its conventions: top-k keeps the ``k`` largest logits (ties at the k-th value are kept); top-p keeps
the smallest set of most likely tokens whose probability reaches ``p`` (at least one token). Everything runs
in float32.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check_logits(logits: object) -> Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point or logits.dim() != 2:
        got = f"{logits.dtype} {list(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected a float tensor [B, V], got {got}")
    return logits


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Validate sampling arguments.

    Raises:
        ValueError: ``temperature <= 0``, ``top_k < 1`` or ``top_p`` outside ``(0, 1]``.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature: expected a float > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p: expected None or a float in (0, 1], got {top_p!r}")


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Scale by ``1 / temperature`` and set the logits outside top-k / top-p to ``-inf``.

    Args:
        logits: ``[B, V]``.
        temperature: > 0.
        top_k: keep the ``top_k`` largest logits per row (None: all).
        top_p: keep the most likely tokens until their probability reaches ``top_p`` (None or 1: all).

    Returns:
        float32 ``[B, V]``; every row keeps at least one finite entry.

    Raises:
        ValueError: bad arguments (see :func:`check_sampling`).
    """
    check_sampling(temperature, top_k, top_p)
    out = _check_logits(logits).float() / temperature
    if top_k is not None and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]  # (B, 1)
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        probs, order = torch.sort(out.softmax(dim=-1), dim=-1, descending=True)  # (B, V)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p  # the first token always has mass_before 0 < top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def next_token(logits: Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """The next token of each row: argmax (``do_sample=False``) or a draw from the filtered distribution.

    Args:
        logits: ``[B, V]`` for the last position.
        do_sample: sample instead of taking the argmax (temperature / top-k / top-p only matter then).
        temperature, top_k, top_p: see :func:`filter_logits`.
        generator: the random generator for sampling (on the logits' device).

    Returns:
        int64 ``[B]``.
    """
    _check_logits(logits)
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
