"""Prompt weighting: ``"a (red:1.3) ball"`` scales the embeddings of the tokens of "red" by 1.3.

The syntax is ``(text:weight)`` with a non-negative decimal weight; it is removed before tokenising (the
encoder sees "a red ball"), and the tokens whose characters overlap a weighted span are scaled after encoding.
Parentheses that do not hold ``:number`` are ordinary text. Spans do not nest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

_WEIGHTED = re.compile(r"\(([^()]+?):\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\)")


def parse_weights(prompt: str) -> tuple[str, list[tuple[int, int, float]]]:
    """Strip the weighting syntax.

    Args:
        prompt: text with optional ``(text:weight)`` spans.

    Returns:
        (clean text, spans) where each span is (start, end, weight), character offsets into the clean text.

    Raises:
        TypeError: ``prompt`` is not a string.
        ValueError: a negative or non-finite weight, or nested weighted spans.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a string, got {type(prompt).__name__}")
    out: list[str] = []
    spans: list[tuple[int, int, float]] = []
    pos = length = 0
    for m in _WEIGHTED.finditer(prompt):
        weight = float(m.group(2))
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"prompt {prompt!r}: weight {m.group(2)} of {m.group(1)!r} must be finite and >= 0")
        before = prompt[pos:m.start()]
        out.append(before)
        length += len(before)
        out.append(m.group(1))
        spans.append((length, length + len(m.group(1)), weight))
        length += len(m.group(1))
        pos = m.end()
    out.append(prompt[pos:])
    clean = "".join(out)
    if spans and _WEIGHTED.search(clean):
        raise ValueError(f"prompt {prompt!r}: nested weighted spans are not supported")
    return clean, spans


def token_weights(offsets: torch.Tensor, spans: Sequence[tuple[int, int, float]]) -> torch.Tensor:
    """Weight of each token: that of the weighted span its characters overlap, else 1.

    Args:
        offsets: long [L, 2], the tokenizer's (start, end) character offsets into the clean text; special and
            padding tokens have start == end and get weight 1.
        spans: from :func:`parse_weights`.

    Returns:
        float32 [L].
    """
    w = torch.ones(offsets.shape[0], dtype=torch.float32)
    start, end = offsets[:, 0], offsets[:, 1]
    real = end > start
    for s, e, weight in spans:
        w[real & (start < e) & (end > s)] = weight
    return w
