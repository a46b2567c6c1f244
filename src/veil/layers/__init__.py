"""``veil.layers``: transformer building blocks on :func:`veil.attend` (attention, positions, norms, feed-forward,
mixture of experts, conditioning, KV cache). Layers take primitives; models take a config."""

from veil.layers.attention import Attention, CrossAttention, SequenceParallelModel, use_sequence_parallel
from veil.layers.cache import CacheView, KVCache
from veil.layers.conditioning import (
    AdaLNZero,
    InAttentionCondition,
    Modulation,
    TimestepEmbedding,
    gate,
    modulate,
    timestep_sinusoid,
)
from veil.layers.feedforward import GEGLU, MLP, GatedMLP, SwiGLU, activation_fn
from veil.layers.moe import MoE, MoEAux
from veil.layers.norms import LayerNorm, QKNorm, RMSNorm
from veil.layers.positions import (
    Rope3D,
    RopeTable,
    RotaryEmbedding,
    rotate_half,
    sincos_1d,
    sincos_2d,
    sincos_3d,
    sincos_from_positions,
    wan_rope_split,
)

__all__ = [
    "SequenceParallelModel",
    "use_sequence_parallel",
    "GEGLU", "MLP", "AdaLNZero", "Attention", "CacheView", "CrossAttention", "GatedMLP", "InAttentionCondition",
    "KVCache", "LayerNorm", "MoE", "MoEAux", "Modulation", "QKNorm", "RMSNorm", "Rope3D", "RopeTable",
    "RotaryEmbedding", "SwiGLU", "TimestepEmbedding", "activation_fn", "gate", "modulate", "rotate_half",
    "sincos_1d", "sincos_2d", "sincos_3d", "sincos_from_positions", "timestep_sinusoid", "wan_rope_split",
]
