"""``veil.models``: one model family per file, configs and presets beside them; built on :mod:`veil.layers`."""

from veil.models.decoder_lm import (
    DECODER_PRESETS,
    DecoderBlock,
    DecoderConfig,
    DecoderLM,
    LMCache,
    gemma2_layer_types,
    gemma3_layer_types,
)
from veil.models.latte import LATTE_PRESETS, LatteConfig, LatteDiT
from veil.models.sampling import filter_logits, next_token
from veil.models.wan import WAN_PRESETS, AttentionPattern, TimestepExperts, WanConfig, WanDiT, WanMoE

__all__ = [
    "LATTE_PRESETS", "LatteConfig", "LatteDiT", "WAN_PRESETS", "AttentionPattern", "TimestepExperts", "WanConfig",
    "WanDiT", "WanMoE",
    "DECODER_PRESETS", "DecoderBlock", "DecoderConfig", "DecoderLM", "LMCache", "filter_logits", "gemma2_layer_types",
    "gemma3_layer_types", "next_token",
]
