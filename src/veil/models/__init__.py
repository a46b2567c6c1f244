"""``veil.models``: model families built on :mod:`veil.layers`, one per file, each with a config and presets."""

from veil.models.decoder_lm import (
    PRESETS,
    DecoderBlock,
    DecoderConfig,
    DecoderLM,
    LMCache,
    gemma2_layer_types,
    gemma3_layer_types,
)
from veil.models.sampling import filter_logits, next_token

__all__ = [
    "PRESETS", "DecoderBlock", "DecoderConfig", "DecoderLM", "LMCache", "filter_logits", "gemma2_layer_types",
    "gemma3_layer_types", "next_token",
]
