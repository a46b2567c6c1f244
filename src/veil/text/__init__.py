"""Text: encoders returning token embeddings and lengths, their on-disk cache, prompt weighting, guidance pairs."""

from __future__ import annotations

from veil.text.base import TextEncoder, TextEncoderBase, encode_pair, pad_embeddings, unpad
from veil.text.cache import CachedTextEncoder
from veil.text.hf import HFTextEncoder, MiniLMEncoder
from veil.text.weighting import parse_weights, token_weights

__all__ = [
    "CachedTextEncoder", "HFTextEncoder", "MiniLMEncoder", "TextEncoder", "TextEncoderBase", "encode_pair",
    "pad_embeddings", "parse_weights", "token_weights", "unpad",
]
