"""Load Hugging Face ``Gemma2ForCausalLM`` / ``Gemma3ForCausalLM`` weights into :class:`DecoderLM`.

transformers is not imported here: the model object passed in carries its config and weights.

How HF's fields map (checked against transformers 5.x ``modeling_gemma2.py`` / ``modeling_gemma3.py``):

- ``layer_types``: ``"sliding_attention"`` -> ``"local"``, ``"full_attention"`` -> ``"global"``.
- ``sliding_window = w``: HF keeps keys ``q - w < k <= q`` (``masking_utils.sliding_window_overlay``:
  ``kv_idx > q_idx - sliding_window``, and causal), exactly veil's ``sliding_window(w)``: copied unchanged.
- RoPE: transformers 5 keeps ``rope_parameters`` (Gemma 3: one dict per layer type, ``rope_theta`` and
  optionally ``rope_type="linear"`` with ``factor``); transformers 4 kept ``rope_theta``,
  ``rope_local_base_freq`` and ``rope_scaling`` (global layers only). Both are read.
- Gemma 3's attention ignores ``attn_logit_softcapping`` (HF does not pass it to the attention function), so
  the converted model has no attention softcap either.
"""

from __future__ import annotations

import torch
from torch import nn

from veil.models.decoder_lm import DecoderConfig, DecoderLM

_TYPES = {"sliding_attention": "local", "full_attention": "global"}
_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "silu": "silu"}


def _rope(cfg, layer_type: str, model_type: str) -> tuple[float, float]:
    """(base, linear factor) of HF layer type ``layer_type``."""
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, dict) and params:
        p = params.get(layer_type, params) if model_type == "gemma3_text" else params
        kind = p.get("rope_type", "default")
        if kind not in ("default", "linear"):
            raise ValueError(f"model: rope_type {kind!r} of {layer_type} layers is not supported (default, linear)")
        return float(p["rope_theta"]), float(p.get("factor", 1.0)) if kind == "linear" else 1.0
    # transformers 4.x
    if layer_type == "sliding_attention" and model_type == "gemma3_text":
        return float(cfg.rope_local_base_freq), 1.0
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ValueError(f"model: rope_scaling {scaling!r} is not supported (default, linear)")
    return float(cfg.rope_theta), float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0


def config_from_transformers(cfg) -> DecoderConfig:
    """The :class:`DecoderConfig` of an HF ``Gemma2Config`` or ``Gemma3TextConfig``.

    Raises:
        ValueError: another model type, or a feature DecoderLM does not have (bidirectional attention,
            attention biases, an unsupported activation or RoPE type).
    """
    model_type = getattr(cfg, "model_type", None)
    if model_type not in ("gemma2", "gemma3_text"):
        raise ValueError(f"model: expected a Gemma2ForCausalLM or Gemma3ForCausalLM (config model_type 'gemma2' or "
                         f"'gemma3_text'), got model_type {model_type!r}")
    if getattr(cfg, "use_bidirectional_attention", False):
        raise ValueError("model: use_bidirectional_attention=True is not supported (DecoderLM is causal)")
    if getattr(cfg, "attention_bias", False):
        raise ValueError("model: attention_bias=True is not supported")
    act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
    if act not in _ACTIVATIONS:
        raise ValueError(f"model: hidden_activation {act!r} is not supported ({sorted(_ACTIVATIONS)})")
    if cfg.layer_types is not None:
        hf_types = list(cfg.layer_types)
    else:  # transformers 4.x Gemma 2 without layer_types: alternate, first local
        hf_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(cfg.num_hidden_layers)]
    bad = sorted({t for t in hf_types if t not in _TYPES})
    if bad:
        raise ValueError(f"model: layer types {bad} are not supported (sliding_attention, full_attention)")
    base_g, scale_g = _rope(cfg, "full_attention", model_type)
    base_l, scale_l = _rope(cfg, "sliding_attention", model_type)
    if scale_l != 1.0:
        raise ValueError(f"model: linear rope scaling of local layers ({scale_l}) is not supported")
    gemma3 = model_type == "gemma3_text"
    return DecoderConfig(
        vocab_size=cfg.vocab_size, dim=cfg.hidden_size, depth=cfg.num_hidden_layers, heads=cfg.num_attention_heads,
        kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, hidden=cfg.intermediate_size,
        layer_types=tuple(_TYPES[t] for t in hf_types),
        sliding_window=cfg.sliding_window if "sliding_attention" in hf_types else None,
        attn_softcap=None if gemma3 else cfg.attn_logit_softcapping, final_softcap=cfg.final_logit_softcapping,
        query_pre_attn_scalar=cfg.query_pre_attn_scalar, rope_base=base_g, rope_base_local=base_l,
        rope_scaling=scale_g, qk_norm=gemma3, norm_eps=cfg.rms_norm_eps, activation=_ACTIVATIONS[act],
        max_seq_len=cfg.max_position_embeddings,
    )


_BLOCK = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "attn_post_norm",
    "pre_feedforward_layernorm": "mlp_norm", "post_feedforward_layernorm": "mlp_post_norm",
    "self_attn.q_norm": "attn.qk_norm.q", "self_attn.k_norm": "attn.qk_norm.k",
    "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.o_proj", "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}


def _rename(key: str) -> str | None:
    """HF state-dict key -> DecoderLM key (None: not a weight DecoderLM keeps)."""
    if key == "lm_head.weight":
        return None  # tied to the embedding (checked by the caller)
    if key == "model.embed_tokens.weight":
        return "embed.weight"
    if key == "model.norm.weight":
        return "norm.weight"
    parts = key.split(".")
    if parts[:2] == ["model", "layers"] and len(parts) >= 5:
        module, param = ".".join(parts[3:-1]), parts[-1]
        if module in _BLOCK:
            return f"layers.{parts[2]}.{_BLOCK[module]}.{param}"
    raise ValueError(f"model: unexpected weight {key!r} in the Hugging Face state dict")


def from_transformers(model: nn.Module) -> DecoderLM:
    """A :class:`DecoderLM` with the config and weights of ``model``, in ``model``'s dtype and device.

    Args:
        model: a Hugging Face ``Gemma2ForCausalLM`` or ``Gemma3ForCausalLM`` (text-only, with a
            ``Gemma3TextConfig``).

    Raises:
        TypeError: ``model`` is not an nn.Module with a config.
        ValueError: another architecture, an unsupported feature, or an output head not tied to the embedding.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model: expected a Hugging Face Gemma2ForCausalLM / Gemma3ForCausalLM, got "
                        f"{type(model).__name__}")
    config = config_from_transformers(model.config)
    sd = model.state_dict()
    emb = sd["model.embed_tokens.weight"]
    head = sd.get("lm_head.weight")
    if head is not None and head.data_ptr() != emb.data_ptr() and not torch.equal(head, emb):
        raise ValueError("model: lm_head.weight is not tied to model.embed_tokens.weight (DecoderLM ties them)")
    ours = DecoderLM(config).to(device=emb.device, dtype=emb.dtype)
    renamed = {new: v for k, v in sd.items() if (new := _rename(k)) is not None}
    missing, unexpected = ours.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise ValueError(f"model: weights do not match DecoderLM: missing {missing}, unexpected {unexpected}")
    return ours.eval()
