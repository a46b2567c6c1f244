"""Conversion from diffusers' ``LatteTransformer3DModel`` (config and state dict) to :class:`veil.models.LatteDiT`.

diffusers' layout: ``transformer_blocks[i]`` (spatial) and ``temporal_transformer_blocks[i]`` are veil's
``blocks[2 i]`` and ``blocks[2 i + 1]``; ``adaln_single`` is ``t_embedder`` + ``t_block``; ``pos_embed.proj``
is ``patch_embed``; the tables (``pos_embed.pos_embed``, ``temp_pos_embed``) are recomputed, not copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from veil.models.latte_config import LatteConfig

Tensor = torch.Tensor
_ACTIVATIONS = {"gelu-approximate": "gelu_tanh", "gelu": "gelu", "geglu": "geglu"}
_ATTN = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj"}


def config_from_diffusers(dc: Mapping[str, Any], **overrides: Any) -> LatteConfig:
    """A :class:`LatteConfig` for a diffusers Latte config (``model.config``).

    Raises:
        ValueError: a setting veil's Latte does not express (another ``norm_type`` or activation, a
            cross-attention width other than the inner width, output channels other than C or 2 C).
    """
    heads, head_dim = dc["num_attention_heads"], dc["attention_head_dim"]
    inner = heads * head_dim
    if dc.get("norm_type") != "ada_norm_single":
        raise ValueError(f"model: expected norm_type='ada_norm_single' (the Latte checkpoints), got "
                         f"{dc.get('norm_type')!r}")
    act = dc.get("activation_fn", "geglu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"model: expected activation_fn in {sorted(_ACTIVATIONS)}, got {act!r}")
    cross = dc.get("cross_attention_dim")
    if cross not in (None, inner):
        raise ValueError(f"model: cross_attention_dim must equal the inner width {inner} (the caption projection "
                         f"outputs it), got {cross}")
    cin = dc["in_channels"]
    cout = cin if dc.get("out_channels") is None else dc["out_channels"]
    if cout not in (cin, 2 * cin):
        raise ValueError(f"model: expected out_channels in ({cin}, {2 * cin}), got {cout}")
    fields: dict[str, Any] = dict(
        input_size=dc["sample_size"], patch_size=dc["patch_size"], in_channels=cin, learn_sigma=cout == 2 * cin,
        num_frames=dc.get("video_length", 16), hidden_size=inner, depth=2 * dc["num_layers"], num_heads=heads,
        mlp_ratio=4.0, feed_forward=_ACTIVATIONS[act], qkv_bias=dc.get("attention_bias", False),
        norm_affine=dc.get("norm_elementwise_affine", True), norm_eps=dc.get("norm_eps", 1e-5),
        conditioning="adaln_single", text_dim=dc["caption_channels"] if cross is not None else None,
    )  # interpolation_scale: LatteConfig's default is diffusers' max(sample_size // 64, 1)
    return LatteConfig(**{**fields, **overrides})


def _block(sd: Mapping[str, Tensor], src: str, dst: str, config: LatteConfig, cross: bool) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {f"{dst}.scale_shift_table": sd[f"{src}.scale_shift_table"]}
    params = ("weight", "bias")
    if config.norm_affine:
        for norm in ("norm1", "norm2"):
            for p in params:
                out[f"{dst}.{norm}.{p}"] = sd[f"{src}.{norm}.{p}"]
    for theirs, ours in [("attn1", "attn")] + ([("attn2", "cross_attn")] if cross else []):
        for a, b in _ATTN.items():
            for p in params:
                key = f"{src}.{theirs}.{a}.{p}"
                if key in sd:
                    out[f"{dst}.{ours}.{b}.{p}"] = sd[key]
    w_in, b_in = sd[f"{src}.ff.net.0.proj.weight"], sd[f"{src}.ff.net.0.proj.bias"]
    w_out, b_out = sd[f"{src}.ff.net.2.weight"], sd[f"{src}.ff.net.2.bias"]
    if config.feed_forward == "geglu":
        # diffusers' GEGLU: proj -> (hidden, gate) halves, hidden * gelu(gate)
        up_w, gate_w = w_in.chunk(2, dim=0)
        up_b, gate_b = b_in.chunk(2, dim=0)
        out.update({f"{dst}.mlp.up_proj.weight": up_w, f"{dst}.mlp.up_proj.bias": up_b,
                    f"{dst}.mlp.gate_proj.weight": gate_w, f"{dst}.mlp.gate_proj.bias": gate_b,
                    f"{dst}.mlp.down_proj.weight": w_out, f"{dst}.mlp.down_proj.bias": b_out})
    else:
        out.update({f"{dst}.mlp.fc1.weight": w_in, f"{dst}.mlp.fc1.bias": b_in,
                    f"{dst}.mlp.fc2.weight": w_out, f"{dst}.mlp.fc2.bias": b_out})
    return out


def state_dict_from_diffusers(sd: Mapping[str, Tensor], config: LatteConfig) -> dict[str, Tensor]:
    """veil's state dict for a diffusers Latte state dict (tensors shared, not copied)."""
    out: dict[str, Tensor] = {
        "patch_embed.weight": sd["pos_embed.proj.weight"],
        "patch_embed.bias": sd["pos_embed.proj.bias"],
        "final_table": sd["scale_shift_table"],
        "proj_out.weight": sd["proj_out.weight"],
        "proj_out.bias": sd["proj_out.bias"],
    }
    for p in ("weight", "bias"):
        for i in (1, 2):
            out[f"t_embedder.linear_{i}.{p}"] = sd[f"adaln_single.emb.timestep_embedder.linear_{i}.{p}"]
        out[f"t_block.{p}"] = sd[f"adaln_single.linear.{p}"]
        if config.text_dim is not None:
            for i in (1, 2):
                out[f"caption_proj.linear_{i}.{p}"] = sd[f"caption_projection.linear_{i}.{p}"]
    for i in range(config.depth // 2):
        out.update(_block(sd, f"transformer_blocks.{i}", f"blocks.{2 * i}", config, config.text_dim is not None))
        out.update(_block(sd, f"temporal_transformer_blocks.{i}", f"blocks.{2 * i + 1}", config, False))
    return out
