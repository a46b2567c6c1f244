"""Wan 2.x video diffusion transformer (https://arxiv.org/abs/2503.20314), weight-compatible with diffusers'
``WanTransformer3DModel``.

Legend: B batch, C latent channels, F H W latent frames / rows / columns, (T, H', W') the patch grid,
L = T*H'*W' video tokens, S text tokens, E model width, N heads, D head dim.

A block: ``x += g1 * SelfAttn(mod(LN(x)))`` (QK RMS-norm over the whole ``N*D``, 3D RoPE, a per-layer mask);
``x += CrossAttn(LN_affine(x), text)``; ``x += g2 * MLP(mod(LN(x)))``. The six modulation vectors are a
learned per-block table plus one shared projection of the timestep embedding.

Numerics: the timestep embedding, its projection, every modulation and gated residual and every LayerNorm are
computed in float32 (as Wan's original code under ``autocast(float32)``; diffusers runs the projection in the
activations' dtype), the RoPE angles in float64, the attention softmax as :func:`veil.attend`'s backend does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from veil import masks as M
from veil.distributed import SequenceParallel
from veil.layers import (
    MLP,
    Attention,
    CrossAttention,
    LayerNorm,
    MoE,
    MoEAux,
    Rope3D,
    RopeTable,
    SequenceParallelModel,
    TimestepEmbedding,
    gate,
    modulate,
    sincos_3d,
    timestep_sinusoid,
)
from veil.models.experts import TimestepExperts
from veil.models.wan_config import WAN_PRESETS, AttentionPattern, WanConfig, WanMoE

Tensor = torch.Tensor
Grid = tuple[int, int, int]

__all__ = ["WAN_PRESETS", "AttentionPattern", "TimestepExperts", "WanBlock", "WanConfig", "WanDiT", "WanMoE"]


def _linear32(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` in float32 whatever the parameters' dtype (Wan keeps the time path in float32)."""
    bias = layer.bias.float() if layer.bias is not None else None
    return F.linear(x.float(), layer.weight.float(), bias)


@dataclass
class _Layout:
    """Token order of one forward: the patch grid, the tile when tokens are in tile order, the RoPE tables."""

    grid: Grid
    tile: Grid | None
    rope: RopeTable  # raster order
    rope_tiled: RopeTable | None  # tile order (when ``tile``)

    def shard(self, sp: SequenceParallel) -> _Layout:
        """The layout of this rank's tokens under sequence parallelism: its rows of the RoPE tables."""
        def rows(t: RopeTable | None) -> RopeTable | None:
            return None if t is None else RopeTable(sp.shard(t.cos, 1), sp.shard(t.sin, 1), t.layout)

        return _Layout(self.grid, self.tile, rows(self.rope), rows(self.rope_tiled))


class TextProjection(nn.Module):
    """Wan's text MLP ``Linear(text_dim, E) -> GELU(tanh) -> Linear(E, E)`` (diffusers' PixArtAlphaTextProjection)."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(text_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, context: Tensor) -> Tensor:
        """``[B, S, text_dim]`` -> ``[B, S, E]``."""
        return self.linear_2(F.gelu(self.linear_1(context), approximate="tanh"))


class WanBlock(nn.Module):
    """One Wan block: modulated self-attention, cross-attention to the text, modulated feed-forward.

    Args:
        config: the model's config.
        layer: this block's index (selects its attention pattern and feed-forward kind).
    """

    def __init__(self, config: WanConfig, layer: int):
        super().__init__()
        e, n, eps = config.dim, config.heads, config.eps
        self.pattern: AttentionPattern = config.layer_patterns()[layer]
        self.norm1 = LayerNorm(e, eps, affine=False)
        self.self_attn = Attention(e, n, qk_norm="full", qk_norm_eps=eps, bias=True, backend=config.backend)
        self.norm2 = LayerNorm(e, eps) if config.cross_attn_norm else None
        self.cross_attn = CrossAttention(e, e, n, qk_norm="full", qk_norm_eps=eps, bias=True, backend=config.backend)
        self.norm3 = LayerNorm(e, eps, affine=False)
        if config.layer_feed_forward()[layer] == "moe":
            spec = config.moe
            self.ffn: nn.Module = MoE(e, spec.hidden or config.ffn_dim, spec.num_experts, spec.top_k,
                                      spec.capacity_factor, activation=spec.activation, gated=spec.gated)
        else:
            self.ffn = MLP(e, config.ffn_dim, activation="gelu_tanh")
        # shift, scale, gate (self-attention), shift, scale, gate (feed-forward); added to the timestep's projection
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, e) / e**0.5)

    def _self_attention(self, h: Tensor, lay: _Layout) -> Tensor:
        p, n = self.pattern, self.self_attn.heads
        if lay.tile is None:
            return self.self_attn(h, p.mask(lay.grid, heads=n), rope=lay.rope)
        if p.kind in ("full", "tile_window"):
            return self.self_attn(h, p.mask(lay.grid, tile_order=True), rope=lay.rope_tiled)
        # a raster-order mask in a tile-ordered model: attend in raster order, come back to tile order
        h = M.from_tile_order(h, lay.grid, lay.tile, dim=1)  # (B, L, E) raster
        out = self.self_attn(h, p.mask(lay.grid, heads=n), rope=lay.rope)
        return M.to_tile_order(out, lay.grid, lay.tile, dim=1)  # (B, L, E) tile order

    def forward(self, x: Tensor, e6: Tensor, context: Tensor, context_lengths: Tensor | None,
                context_mask: Tensor | None, lay: _Layout) -> tuple[Tensor, MoEAux | None]:
        """One block.

        Args:
            x: ``[B, L, E]`` video tokens (in ``lay``'s order).
            e6: float32 ``[B, 6, E]`` (or ``[B, L, 6, E]`` with per-token timesteps): the timestep's projection.
            context: ``[B, S, E]`` projected text. context_lengths / context_mask: valid text tokens, or None
                (every text token attended).
            lay: the token layout of this forward.

        Returns:
            ``(x, aux)``: the new ``[B, L, E]`` and the MoE's aux (None for a dense feed-forward).
        """
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table.float() + e6).unbind(-2)  # (B[, L], E)
        h = modulate(self.norm1(x.float()), shift1, scale1).to(x.dtype)
        x = gate(x, self._self_attention(h, lay), gate1)

        h = self.norm2(x.float()).to(x.dtype) if self.norm2 is not None else x
        x = x + self.cross_attn(h, context, context_lengths, context_mask)

        h = modulate(self.norm3(x.float()), shift2, scale2).to(x.dtype)
        aux = None
        if isinstance(self.ffn, MoE):
            y, aux = self.ffn(h)
        else:
            y = self.ffn(h)
        return gate(x, y, gate2), aux


class WanDiT(SequenceParallelModel, nn.Module):
    """Wan 2.x DiT: latent video ``[B, C, F, H, W]`` + timestep + text embeddings -> ``[B, C_out, F, H, W]``.

    Patches of ``patch_size`` are embedded by a Conv3d; blocks as :class:`WanBlock`; an output head with its
    own two modulation vectors (shift, scale) added to the timestep embedding; unpatchify to the latent shape.

    Args:
        config: a :class:`WanConfig` (e.g. ``WanConfig.preset("wan2.1-t2v-1.3b")``).
    """

    def __init__(self, config: WanConfig):
        super().__init__()
        if not isinstance(config, WanConfig):
            raise TypeError(f"config: expected a WanConfig, got {type(config).__name__}")
        self.config = config
        e, p = config.dim, config.patch_size
        self.patch_embedding = nn.Conv3d(config.in_channels, e, kernel_size=p, stride=p)
        self.text_embedding = TextProjection(config.text_dim, e)
        self.time_embedding = TimestepEmbedding(e, config.freq_dim)
        self.time_projection = nn.Linear(e, 6 * e)
        if config.pooled_text:
            self.pooled_text_embedding = TextProjection(config.text_dim, e)
        self.rope = Rope3D(config.head_dim, config.rope_base)
        self.blocks = nn.ModuleList(WanBlock(config, i) for i in range(config.num_layers))
        self.norm_out = LayerNorm(e, config.eps, affine=False)
        self.proj_out = nn.Linear(e, config.out_channels * math.prod(p))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, e) / e**0.5)  # shift, scale of the output head

    # -- stages -----------------------------------------------------------------------------------------------
    def patchify(self, x: Tensor) -> tuple[Tensor, Grid]:
        """``[B, C, F, H, W]`` -> tokens ``[B, L, E]`` in raster order, and the patch grid ``(T, H', W')``.

        Raises:
            ValueError: wrong channel count or a size not divisible by the patch.
        """
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != cfg.in_channels:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected [B, {cfg.in_channels}, F, H, W], got {got}")
        if any(s % p for s, p in zip(x.shape[2:], cfg.patch_size)):
            raise ValueError(f"x: latent (F, H, W) = {tuple(x.shape[2:])} must be divisible by patch_size "
                             f"{cfg.patch_size}")
        h = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # (B, E, T, H', W')
        grid = tuple(h.shape[2:])
        return h.flatten(2).transpose(1, 2).contiguous(), grid  # (B, L, E)

    def unpatchify(self, x: Tensor, grid: Grid) -> Tensor:
        """Raster-order tokens ``[B, L, C_out * pt * ph * pw]`` -> ``[B, C_out, F, H, W]`` (diffusers' order)."""
        (t, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = x.reshape(x.shape[0], t, h, w, pt, ph, pw, -1)  # (B, T, H', W', pt, ph, pw, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T, pt, H', ph, W', pw)
        return x.reshape(x.shape[0], x.shape[1], t * pt, h * ph, w * pw)

    def embed_time(self, timestep: Tensor, batch: int, num_tokens: int,
                   condition: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Timesteps -> float32 ``(emb, e6)``: ``emb`` ``[B(, L), E]`` and the blocks' ``e6`` ``[B(, L), 6, E]``.

        Args:
            timestep: ``[B]`` (or a scalar, shared by the batch) or per-token ``[B, L]`` (Wan 2.2 TI2V).
            condition: ``[B, E]`` added to the timestep embedding (the pooled text of ``config.pooled_text``).
        """
        if not isinstance(timestep, torch.Tensor):
            timestep = torch.as_tensor(timestep)
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)
        if tuple(timestep.shape) not in ((batch,), (batch, num_tokens)):
            raise ValueError(f"timestep: expected [B] = [{batch}] or per-token [B, L] = [{batch}, {num_tokens}], "
                             f"got {list(timestep.shape)}")
        f = timestep_sinusoid(timestep.reshape(-1), self.config.freq_dim)  # (B[*L], F) float32
        te = self.time_embedding
        emb = _linear32(te.linear_2, F.silu(_linear32(te.linear_1, f)))  # (B[*L], E)
        if condition is not None:
            cond = condition.float()
            emb = emb + (cond.repeat_interleave(num_tokens, 0) if timestep.dim() == 2 else cond)
        e6 = _linear32(self.time_projection, F.silu(emb)).unflatten(-1, (6, -1))  # (B[*L], 6, E)
        if timestep.dim() == 2:
            return emb.unflatten(0, (batch, num_tokens)), e6.unflatten(0, (batch, num_tokens))
        return emb, e6

    def pool_text(self, context: Tensor, context_lengths: Tensor | None, context_mask: Tensor | None) -> Tensor:
        """``config.pooled_text``'s vector ``[B, E]``: the mean of the valid text tokens through their own MLP.

        A sample without valid tokens (the null prompt of guidance) pools to zeros.
        """
        b, s = context.shape[:2]
        valid = torch.ones(b, s, dtype=torch.bool, device=context.device)
        if context_lengths is not None:
            valid = torch.arange(s, device=context.device) < context_lengths.to(context.device).view(-1, 1)
        if context_mask is not None:
            valid = valid & context_mask.to(device=context.device, dtype=torch.bool)
        w = valid.to(context.dtype).unsqueeze(-1)  # (B, S, 1)
        mean = (context * w).sum(1) / w.sum(1).clamp(min=1)  # (B, text_dim)
        proj = self.pooled_text_embedding
        return _linear32(proj.linear_2, F.gelu(_linear32(proj.linear_1, mean.float()), approximate="tanh"))

    def head(self, x: Tensor, emb: Tensor) -> Tensor:
        """Output norm, modulation (float32) and projection: ``[B, L, E]`` -> ``[B, L, C_out * prod(patch)]``."""
        shift, scale = (self.scale_shift_table.float() + emb.unsqueeze(-2)).unbind(-2)  # (B[, L], E)
        return self.proj_out(modulate(self.norm_out(x.float()), shift, scale).to(x.dtype))

    def layout(self, grid: Grid, device: torch.device) -> _Layout:
        """The token order of a forward over ``grid``: raster, or tile order when a layer is tile_window.

        Raises:
            ValueError: the patch grid is not divisible by the tile.
        """
        rope = self.rope(grid, device=device)  # (1, L, D) raster order
        tile = self.config.tile()
        if tile is None:
            return _Layout(grid, None, rope, None)
        if any(g % t for g, t in zip(grid, tile)):
            raise ValueError(f"x: the patch grid {grid} must be divisible by the tile_window tile {tile}")
        tiled = RopeTable(M.to_tile_order(rope.cos, grid, tile, dim=1), M.to_tile_order(rope.sin, grid, tile, dim=1),
                          rope.layout)
        return _Layout(grid, tile, rope, tiled)

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, context_lengths: Tensor | None = None,
                context_mask: Tensor | None = None, *, return_aux: bool = False
                ) -> Tensor | tuple[Tensor, list[MoEAux]]:
        """Predict the flow (or noise) for latent ``x`` at ``timestep`` given text ``context``.

        Args:
            x: ``[B, C, F, H, W]`` latents; cast to the parameters' dtype.
            timestep: ``[B]`` timesteps in ``[0, 1000]`` (or a scalar); per latent frame ``[B, F]`` (diffusion
                forcing: e.g. clean context frames at 0; each temporal patch takes its first frame's timestep);
                or per token ``[B, L]`` (Wan 2.2 TI2V), ``L`` the number of patches in raster order. When
                ``F == L`` the timestep is read per frame.
            context: ``[B, S, text_dim]`` text embeddings, padded (Wan pads with zeros to 512 tokens).
            context_lengths: int ``[B]``, valid text tokens of each sample (right padding); 0 is allowed (the
                cross-attention then contributes exactly 0). Ignored when ``config.mask_text_padding`` is False.
            context_mask: bool ``[B, S]``, True = a valid text token (padding anywhere); same rules.
            return_aux: also return the :class:`veil.layers.MoEAux` of every MoE layer, in layer order.

        Returns:
            ``[B, C_out, F, H, W]`` in the parameters' dtype; with ``return_aux``, ``(out, aux_list)``.

        Raises:
            ValueError: shapes that do not fit the config.
        """
        cfg = self.config
        tokens, grid = self.patchify(x)  # (B, L, E) raster
        if cfg.abs_pos:
            tokens = tokens + sincos_3d(cfg.dim, grid, dtype=tokens.dtype, device=tokens.device)
        bsz, n = tokens.shape[0], tokens.shape[1]
        if not isinstance(context, torch.Tensor) or context.dim() != 3 or context.shape[0] != bsz or (
                context.shape[-1] != cfg.text_dim):
            got = list(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"context: expected [B, S, {cfg.text_dim}] with B={bsz}, got {got}")
        if not cfg.mask_text_padding:
            context_lengths = context_mask = None
        pooled = self.pool_text(context, context_lengths, context_mask) if cfg.pooled_text else None
        timestep = torch.as_tensor(timestep, device=tokens.device)
        if timestep.dim() == 2 and timestep.shape[0] == bsz and timestep.shape[1] == x.shape[2]:
            # per frame: one embedding per temporal patch, shared by its H' W' tokens
            per_frame = timestep[:, :: cfg.patch_size[0]]  # (B, F')
            emb, e6 = self.embed_time(per_frame, bsz, grid[0], pooled)  # (B, F', E), (B, F', 6, E)
            emb = emb.repeat_interleave(grid[1] * grid[2], dim=1)  # (B, L, E)
            e6 = e6.repeat_interleave(grid[1] * grid[2], dim=1)  # (B, L, 6, E)
        else:
            emb, e6 = self.embed_time(timestep, bsz, n, pooled)
        text = self.text_embedding(context.to(tokens.dtype))  # (B, S, E)
        lay = self.layout(grid, tokens.device)
        if lay.tile is not None:
            tokens = M.to_tile_order(tokens, grid, lay.tile, dim=1)  # (B, L, E) tile order
            if emb.dim() == 3:  # per-token timesteps follow their tokens
                emb = M.to_tile_order(emb, grid, lay.tile, dim=1)
                e6 = M.to_tile_order(e6, grid, lay.tile, dim=1)
        sp = self.sequence_parallel
        if sp is not None:  # this rank's shard of the tokens (and of what goes with each token)
            tokens, lay = sp.shard(tokens, 1), lay.shard(sp)  # (B, n, E)
            if emb.dim() == 3:
                emb, e6 = sp.shard(emb, 1), sp.shard(e6, 1)
        aux: list[MoEAux] = []
        for block in self.blocks:
            tokens, a = block(tokens, e6, text, context_lengths, context_mask, lay)
            if a is not None:
                aux.append(a)
        out = self.head(tokens, emb)  # (B, L, C_out * prod(patch))
        if sp is not None:
            out = sp.gather(out, n, dim=1)  # (B, L, C_out * prod(patch)) on every rank
        if lay.tile is not None:
            out = M.from_tile_order(out, grid, lay.tile, dim=1)  # raster order
        out = self.unpatchify(out, grid)
        return (out, aux) if return_aux else out

    # -- sequence parallelism (enable_sequence_parallel: SequenceParallelModel) --------------------------------
    # Tokens are cut after the patch embedding (in tile order when the model uses it) and gathered after the output
    # projection; the cross-attention runs against the whole text on each rank.
    def _sequence_parallel_heads(self) -> int:
        return self.config.heads

    def _sequence_parallel_refusal(self) -> str | None:
        if any(isinstance(m, MoE) and m.capacity_factor is not None for m in self.modules()):
            return ("moe: a capacity-limited MoE drops tokens per batch of tokens, which sequence parallelism "
                    "changes; use capacity_factor=None (dropless) to run sequence-parallel")
        if self.config.tile() is not None and any(p.kind not in ("full", "tile_window")
                                                  for p in self.config.layer_patterns()):
            return ("attention: tile order mixed with raster-order local patterns permutes tokens across ranks at "
                    "every such layer; not supported under sequence parallelism")
        return None

    # -- diffusers interop --------------------------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, model: nn.Module, *, copy: bool = True, **overrides) -> WanDiT:
        """A WanDiT with the weights of a diffusers ``WanTransformer3DModel`` (text-to-video; no image branch).

        With ``mask_text_padding=False`` the outputs equal diffusers' on the same inputs; with the default
        (True) they also do unless ``context_lengths`` / ``context_mask`` mark padding, which veil then masks.

        Args:
            model: a ``diffusers.WanTransformer3DModel``.
            copy: clone the weights (False shares their storage with ``model``: no extra memory).
            overrides: options that leave the weights alone: ``mask_text_padding``, ``attention``,
                ``tile_permute``, ``backend``.

        Raises:
            TypeError: not a Wan transformer, or an override that would change the weights.
            ValueError: an image-to-video model (``image_dim`` / ``added_kv_proj_dim``).
        """
        cfg = getattr(model, "config", None)
        if cfg is None or not hasattr(cfg, "num_attention_heads") or not hasattr(model, "condition_embedder"):
            raise TypeError(f"model: expected a diffusers WanTransformer3DModel, got {type(model).__name__}")
        allowed = {"mask_text_padding", "attention", "tile_permute", "backend"}
        if set(overrides) - allowed:
            raise TypeError(f"overrides: only {sorted(allowed)} leave the weights unchanged, got "
                            f"{sorted(set(overrides) - allowed)}")
        if cfg.image_dim is not None or cfg.added_kv_proj_dim is not None:
            raise ValueError(f"model: image-to-video Wan (image_dim={cfg.image_dim}, added_kv_proj_dim="
                             f"{cfg.added_kv_proj_dim}) is not supported; expected a text-to-video model")
        config = WanConfig(
            in_channels=cfg.in_channels, out_channels=cfg.out_channels or cfg.in_channels,
            patch_size=tuple(cfg.patch_size), dim=cfg.num_attention_heads * cfg.attention_head_dim,
            heads=cfg.num_attention_heads, num_layers=cfg.num_layers, ffn_dim=cfg.ffn_dim, text_dim=cfg.text_dim,
            freq_dim=cfg.freq_dim, eps=cfg.eps, cross_attn_norm=cfg.cross_attn_norm, **overrides)
        state = {_rename(k): (v.detach().clone() if copy else v.detach()) for k, v in model.state_dict().items()}
        with torch.device("meta"):
            ours = cls(config)
        ours.load_state_dict(state, strict=True, assign=True)
        left = [n for n, v in (*ours.named_parameters(), *ours.named_buffers()) if v.is_meta]
        if left:  # a tensor the checkpoint did not provide would stay on meta: never hand that out
            raise RuntimeError(f"from_diffusers: tensors without a value after loading: {left}")
        return ours


_PREFIXES = (
    ("condition_embedder.time_embedder.", "time_embedding."),
    ("condition_embedder.time_proj.", "time_projection."),
    ("condition_embedder.text_embedder.", "text_embedding."),
)
_BLOCK_PARTS = {
    "attn1.": "self_attn.", "attn2.": "cross_attn.", "ffn.net.0.proj.": "ffn.fc1.", "ffn.net.2.": "ffn.fc2.",
}
_ATTN_PARTS = {"to_q.": "q_proj.", "to_k.": "k_proj.", "to_v.": "v_proj.", "to_out.0.": "o_proj.",
               "norm_q.": "qk_norm.q.", "norm_k.": "qk_norm.k."}


def _replace_prefix(key: str, table: Sequence[tuple[str, str]] | dict[str, str]) -> str:
    for old, new in (table.items() if isinstance(table, dict) else table):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _rename(key: str) -> str:
    """A diffusers ``WanTransformer3DModel`` state-dict key -> the WanDiT key."""
    if not key.startswith("blocks."):
        return _replace_prefix(key, _PREFIXES)
    _, idx, rest = key.split(".", 2)
    rest = _replace_prefix(rest, _BLOCK_PARTS)
    if rest.startswith(("self_attn.", "cross_attn.")):
        head, tail = rest.split(".", 1)
        rest = f"{head}.{_replace_prefix(tail, _ATTN_PARTS)}"
    return f"blocks.{idx}.{rest}"
