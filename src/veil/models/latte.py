"""Latte (https://arxiv.org/abs/2401.03048): a latent video diffusion transformer of alternating spatial and
temporal blocks, weight-compatible with diffusers' ``LatteTransformer3DModel``.

Legend: B batch, C latent channels, T frames, H W latent rows / columns, p patch side, h w patch rows / columns,
P = h*w patches per frame, L = T*P video tokens (raster order: frame, row, column), D width, S text tokens.

Tokens stay one ``[B, L, D]`` sequence for the whole forward: spatial blocks attend under
``veil.masks.spatial((T, h, w))`` (within a frame), temporal blocks under ``veil.masks.temporal((T, h, w))``
(one patch position across frames), so :func:`veil.attend` picks the kernel (``tiles`` runs both as dense
attention over per-frame / per-position blocks). Numerics: norms and modulation run in float32 (see
:mod:`veil.layers`), position tables are computed in float64 and added in the activations' dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from veil import masks as M
from veil.layers import (
    MLP,
    Attention,
    CrossAttention,
    GatedMLP,
    LayerNorm,
    Modulation,
    SequenceParallelModel,
    TimestepEmbedding,
    gate,
    modulate,
    sincos_2d,
    sincos_from_positions,
)
from veil.models.latte_config import LATTE_PRESETS, LatteConfig
from veil.models.latte_diffusers import config_from_diffusers, state_dict_from_diffusers

Tensor = torch.Tensor
__all__ = ["LATTE_PRESETS", "LatteConfig", "LatteDiT"]


class CaptionProjection(nn.Module):
    """Text features -> model width: ``Linear -> GELU(tanh) -> Linear`` (PixArt-alpha, diffusers'
    ``PixArtAlphaTextProjection``)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, text: Tensor) -> Tensor:
        """``[B, S, in_dim]`` -> ``[B, S, D]``."""
        return self.linear_2(nn.functional.gelu(self.linear_1(text), approximate="tanh"))


class LabelEmbedding(nn.Module):
    """Class labels -> vectors, with DiT's label dropout for classifier-free guidance.

    With ``dropout_prob > 0`` the table has one extra row, the null class ``num_classes``: in training each
    label is replaced by it with probability ``dropout_prob``; at sampling time pass ``drop`` (or the label
    ``num_classes``) for the unconditional half of a guided batch.
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels: Tensor, drop: Tensor | None = None) -> Tensor:
        """``labels`` int ``[B]`` (``drop``: bool ``[B]``, True = use the null class) -> ``[B, D]``."""
        rows = self.embedding_table.num_embeddings
        if labels.dtype.is_floating_point or labels.dim() != 1:
            raise ValueError(f"class_labels: expected an int tensor [B], got {labels.dtype} {list(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= rows):
            raise ValueError(f"class_labels: expected values in [0, {rows - 1}] ({self.num_classes} classes"
                             f"{' + the null class' if rows > self.num_classes else ''}), got {labels.tolist()}")
        if self.training and self.dropout_prob > 0:
            random_drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            drop = random_drop if drop is None else drop | random_drop
        if drop is not None:
            if rows == self.num_classes:
                raise ValueError("drop_labels: this model has no null class (class_dropout_prob=0)")
            if drop.dtype != torch.bool or tuple(drop.shape) != tuple(labels.shape):
                raise ValueError(f"drop_labels: expected a bool tensor [B] = {list(labels.shape)}, got "
                                 f"{drop.dtype} {list(drop.shape)}")
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class LatteBlock(nn.Module):
    """One Latte block: adaLN-modulated self-attention, optional cross-attention to text, modulated MLP.

    ``x + g1 * attn(modulate(norm1(x)))``, then ``x + cross_attn(x, text)`` (no norm, no gate: PixArt / Latte
    T2V), then ``x + g2 * mlp(modulate(norm2(x)))``. The six modulation vectors come from the block's own
    zero-initialised :class:`~veil.layers.AdaLNZero`-style linear (``adaln_zero``, DiT) or from the shared
    timestep projection plus the block's learned ``scale_shift_table`` (``adaln_single``, PixArt).
    """

    def __init__(self, config: LatteConfig, cross_attention: bool):
        super().__init__()
        d, cfg = config.hidden_size, config
        self.conditioning = cfg.conditioning
        self.norm1 = LayerNorm(d, cfg.norm_eps, affine=cfg.norm_affine)
        self.attn = Attention(d, cfg.num_heads, bias=cfg.qkv_bias, out_bias=True, backend=cfg.attention_backend)
        self.cross_attn = (CrossAttention(d, d, cfg.num_heads, bias=cfg.qkv_bias, out_bias=True,
                                          backend=cfg.attention_backend) if cross_attention else None)
        self.norm2 = LayerNorm(d, cfg.norm_eps, affine=cfg.norm_affine)
        hidden = int(d * cfg.mlp_ratio)
        if cfg.feed_forward == "geglu":
            self.mlp: nn.Module = GatedMLP(d, hidden, activation="gelu", bias=True)
        else:
            self.mlp = MLP(d, hidden, activation=cfg.feed_forward, bias=True)
        if cfg.conditioning == "adaln_zero":
            self.adaln = nn.Linear(d, 6 * d)
            nn.init.zeros_(self.adaln.weight)
            nn.init.zeros_(self.adaln.bias)
        else:
            self.scale_shift_table = nn.Parameter(torch.randn(6, d) / d**0.5)

    def modulation(self, c: Tensor) -> tuple[Modulation, Modulation]:
        """``c``: ``[B, D]`` (adaln_zero) or the shared ``[B, 6 D]`` projection (adaln_single) -> 2 triples."""
        if self.conditioning == "adaln_zero":
            chunks = self.adaln(nn.functional.silu(c)).chunk(6, dim=-1)  # 6 x (B, D)
        else:
            table = self.scale_shift_table[None] + c.unflatten(-1, (6, -1))  # (B, 6, D)
            chunks = table.unbind(1)
        return Modulation(*chunks[:3]), Modulation(*chunks[3:])

    def forward(self, x: Tensor, c: Tensor, mask: M.Mask, text: Tensor | None = None,
                text_mask: Tensor | None = None) -> Tensor:
        """``x`` ``[B, L, D]``; ``mask`` over the L tokens; ``text`` ``[B, S, D]``, ``text_mask`` bool ``[B, S]``."""
        m_attn, m_mlp = self.modulation(c)
        x = gate(x, self.attn(modulate(self.norm1(x), m_attn.shift, m_attn.scale), mask), m_attn.gate)
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, text, context_mask=text_mask)
        return gate(x, self.mlp(modulate(self.norm2(x), m_mlp.shift, m_mlp.scale)), m_mlp.gate)


class LatteDiT(SequenceParallelModel, nn.Module):
    """Latte: per-frame patches, alternating spatial / temporal blocks, adaLN conditioning, optional text.

    Blocks ``0, 2, 4, ...`` are spatial (and hold the cross-attention when ``config.text_dim`` is set), blocks
    ``1, 3, 5, ...`` temporal. The frozen 2D sin-cos table is added to the patches; the 1D temporal table is
    added once, before the first temporal block. A video of ``n`` frames (``n`` valid frames per sample when
    ``attention_mask`` is given) reads the temporal table at positions ``i * num_frames / n``: the trained
    table itself for ``n == num_frames``, an interpolation of it otherwise, up to ``max_frames``.

    Args:
        config: a :class:`LatteConfig`.
    """

    def __init__(self, config: LatteConfig):
        super().__init__()
        if not isinstance(config, LatteConfig):
            raise TypeError(f"config: expected a LatteConfig, got {type(config).__name__}")
        self.config = cfg = config
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, kernel_size=p, stride=p)
        # frozen sin-cos tables, float32 whatever the weights' dtype (not buffers: .to(bfloat16) would round them)
        self._spatial_tables: dict[tuple[int, int, torch.device], Tensor] = {}
        self.t_embedder = TimestepEmbedding(d, 256)
        self.t_block = nn.Linear(d, 6 * d) if cfg.conditioning == "adaln_single" else None
        self.y_embedder = LabelEmbedding(cfg.num_classes, d, cfg.class_dropout_prob) if cfg.num_classes else None
        self.pooled_text_proj = nn.Linear(cfg.pooled_text_dim, d) if cfg.pooled_text_dim else None
        self.caption_proj = CaptionProjection(cfg.text_dim, d) if cfg.text_dim else None
        self.blocks = nn.ModuleList(
            [LatteBlock(cfg, cross_attention=cfg.text_dim is not None and i % 2 == 0) for i in range(cfg.depth)]
        )
        self.norm_out = LayerNorm(d, 1e-6, affine=False)
        if cfg.conditioning == "adaln_zero":
            self.final_adaln: nn.Linear | None = nn.Linear(d, 2 * d)
        else:
            self.final_adaln = None
            self.final_table = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.proj_out = nn.Linear(d, p * p * cfg.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT / Latte / PixArt initialisation: xavier linears, N(0, 0.02) embedders, zero adaLN and output.

        With ``adaln_zero`` every block is the identity and the output is 0 at init; with ``adaln_single`` the
        output is 0 (zero ``proj_out``). Cross-attention output projections start at 0 (PixArt).
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for lin in (self.t_embedder.linear_1, self.t_embedder.linear_2, self.t_block):
            if lin is not None:
                nn.init.normal_(lin.weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.caption_proj is not None:
            nn.init.normal_(self.caption_proj.linear_1.weight, std=0.02)
            nn.init.normal_(self.caption_proj.linear_2.weight, std=0.02)
        zero = [self.proj_out, self.final_adaln]
        for block in self.blocks:
            zero.append(getattr(block, "adaln", None))
            zero.append(block.cross_attn.o_proj if block.cross_attn is not None else None)
        for lin in zero:
            if lin is not None:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    # -- stages -----------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """Video ``[B, C, T, H, W]`` -> tokens ``[B, L, D]`` with the 2D table added, and the grid ``(T, h, w)``."""
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x: expected a video [B, C={cfg.in_channels}, T, H, W], got "
                             f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        b, c, t, hh, ww = x.shape
        p = cfg.patch_size
        if hh % p or ww % p or t < 1:
            raise ValueError(f"x: expected T >= 1 and H, W divisible by patch_size={p}, got {list(x.shape)}")
        h, w = hh // p, ww // p
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, hh, ww)  # (B*T, C, H, W)
        tokens = self.patch_embed(frames).flatten(2).transpose(1, 2)  # (B*T, P, D)
        tokens = (tokens + self.spatial_table(h, w, tokens.device)).to(tokens.dtype)
        return tokens.reshape(b, t * h * w, -1), (t, h, w)  # (B, L, D)

    def spatial_table(self, h: int, w: int, device: torch.device | str = "cpu") -> Tensor:
        """The frozen 2D sin-cos table of an ``(h, w)`` patch grid: float32 ``[h*w, D]``.

        Grids other than the trained one are evaluated on the trained range (``base_size``), as diffusers'
        ``PatchEmbed`` does.
        """
        key = (h, w, torch.device(device))
        if key not in self._spatial_tables:
            cfg = self.config
            table = sincos_2d(cfg.hidden_size, (h, w), base_size=cfg.input_size // cfg.patch_size,
                              interpolation_scale=cfg.spatial_interpolation_scale)
            self._spatial_tables[key] = table.to(key[2])
        return self._spatial_tables[key]

    def temporal_table(self, frame_valid: Tensor) -> Tensor:
        """The temporal table per sample: ``frame_valid`` bool ``[B, T]`` -> float32 ``[B, T, D]``.

        The ``i``-th valid frame of a sample with ``n`` valid frames gets position ``i * num_frames / n``;
        padded frames and samples with a single frame get 0 (Latte adds no temporal table to one frame).

        Raises:
            ValueError: a sample has more than ``max_frames`` valid frames.
        """
        cfg = self.config
        n = frame_valid.sum(dim=1)  # (B,)
        # only a clip longer than the limit can exceed it: shorter ones (every call under torch.compile, where
        # a value check would need the host) need no read of n
        if frame_valid.shape[1] > cfg.frame_limit and not torch.compiler.is_compiling() and bool(
                (n > cfg.frame_limit).any()):
            raise ValueError(f"x: {int(n.max())} frames exceed max_frames={cfg.frame_limit} (the temporal table is "
                             f"interpolated from the trained num_frames={cfg.num_frames} up to max_frames; raise "
                             "max_frames in the config, or generate longer videos autoregressively)")
        rank = frame_valid.long().cumsum(dim=1) - 1  # (B, T)
        pos = rank.double() * (cfg.num_frames / n.clamp(min=1).double())[:, None]
        table = sincos_from_positions(cfg.hidden_size, pos).view(*frame_valid.shape, -1)  # (B, T, D)
        keep = frame_valid & (n > 1)[:, None]
        return table * keep[..., None]

    def condition(self, timestep: Tensor, batch: int, class_labels: Tensor | None = None,
                  pooled_text: Tensor | None = None, drop_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The block condition and the final layer's condition.

        Returns:
            ``adaln_zero``: ``(c, c)`` with ``c = t_emb + label_emb + pooled_text_emb`` ``[B, D]``;
            ``adaln_single``: ``(t_block(silu(t_emb)) [B, 6 D], t_emb [B, D])``.
        """
        cfg = self.config
        if not isinstance(timestep, torch.Tensor):
            timestep = torch.tensor(timestep, device=self.proj_out.weight.device)
        timestep = timestep.to(self.proj_out.weight.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)
        if tuple(timestep.shape) != (batch,):
            raise ValueError(f"timestep: expected a scalar or a tensor [B] = [{batch}], got {list(timestep.shape)}")
        t = self.t_embedder(timestep)  # (B, D)
        if self.t_block is not None:
            return self.t_block(nn.functional.silu(t)), t
        c = t
        if self.y_embedder is not None:
            if class_labels is None:
                raise ValueError(f"class_labels: required by this model (num_classes={cfg.num_classes}); pass "
                                 f"the null class {cfg.num_classes} or drop_labels for unconditional samples")
            c = c + self.y_embedder(class_labels.to(t.device), drop_labels)
        elif class_labels is not None:
            raise ValueError("class_labels: this model has num_classes=0")
        if self.pooled_text_proj is not None:
            if pooled_text is None or tuple(pooled_text.shape) != (batch, cfg.pooled_text_dim):
                got = None if pooled_text is None else list(pooled_text.shape)
                raise ValueError(f"pooled_text: expected [B, {cfg.pooled_text_dim}] = [{batch}, "
                                 f"{cfg.pooled_text_dim}], got {got}")
            c = c + self.pooled_text_proj(nn.functional.silu(pooled_text.to(t.dtype)))
        elif pooled_text is not None:
            raise ValueError("pooled_text: this model has pooled_text_dim=None")
        return c, c

    def forward_blocks(self, tokens: Tensor, grid: tuple[int, int, int], c: Tensor,
                       frame_valid: Tensor | None = None, text: Tensor | None = None,
                       text_mask: Tensor | None = None, temporal_attention: bool = True, *,
                       gather: bool = True) -> Tensor:
        """Run the blocks on ``tokens`` ``[B, L, D]`` over ``grid`` ``(T, h, w)``; returns ``[B, L, D]``.

        ``frame_valid`` bool ``[B, T]``: padded frames are never attended by the temporal blocks (the spatial
        blocks never mix frames). ``text``: projected text ``[B, S, D]``, ``text_mask`` bool ``[B, S]``.
        ``temporal_attention=False`` skips the temporal blocks and table (diffusers' ``enable_temporal_attentions``).
        Under sequence parallelism the blocks run on this rank's shard of the tokens; ``gather=False`` returns
        that shard ``[B, n, D]`` instead of the gathered ``[B, L, D]``.
        """
        b, _, d = tokens.shape
        t, h, w = grid
        if temporal_attention:  # image mode (no temporal blocks) has no frame limit
            valid = frame_valid if frame_valid is not None else torch.ones(b, t, dtype=torch.bool)
            table = self.temporal_table(valid.to(tokens.device))  # (B, T, D)
        spatial = M.spatial(grid)
        temporal = M.temporal(grid)
        # padded frames are masked; whether any frame is padded is read once per tensor (value_range: None under
        # torch.compile, where the mask is always added), so an all-valid batch keeps the frame-wise fast path
        span = M.value_range(frame_valid) if frame_valid is not None else (1, 1)
        if span is None or span[0] == 0:
            temporal = temporal & M.key_mask(frame_valid.to(tokens.device).repeat_interleave(h * w, dim=1))
        sp = self.sequence_parallel
        x = tokens if sp is None else sp.shard(tokens, 1)  # (B, n, D): this rank's tokens
        for i in range(0, len(self.blocks), 2):
            x = self.blocks[i](x, c, spatial, text, text_mask)
            if not temporal_attention:
                continue
            if i == 0:
                per_token = table.repeat_interleave(h * w, dim=1)  # (B, L, D): each token's frame position
                x = x + (per_token if sp is None else sp.shard(per_token, 1)).to(x.dtype)
            x = self.blocks[i + 1](x, c, temporal)
        if sp is not None and gather:
            x = sp.gather(x, t * h * w, dim=1)
        return x

    def final_layer(self, x: Tensor, c: Tensor) -> Tensor:
        """``[B, L, D]`` -> ``[B, L, p*p*C_out]``: modulated final norm (shift, scale) then the output linear."""
        if self.final_adaln is not None:
            shift, scale = self.final_adaln(nn.functional.silu(c)).chunk(2, dim=-1)  # 2 x (B, D)
        else:
            shift, scale = (self.final_table[None] + c[:, None]).unbind(1)  # 2 x (B, D)
        return self.proj_out(modulate(self.norm_out(x), shift, scale))

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """``[B, L, p*p*C_out]`` -> video ``[B, C_out, T, H, W]``."""
        t, h, w = grid
        p, co = self.config.patch_size, self.config.out_channels
        x = x.reshape(x.shape[0], t, h, w, p, p, co)  # (B, T, h, w, p, p, Co)
        x = x.permute(0, 6, 1, 2, 4, 3, 5)  # (B, Co, T, h, p, w, p)
        return x.reshape(x.shape[0], co, t, h * p, w * p)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: Tensor, timestep: Tensor | float, class_labels: Tensor | None = None,
                encoder_hidden_states: Tensor | None = None, *, attention_mask: Tensor | None = None,
                encoder_attention_mask: Tensor | None = None, pooled_text: Tensor | None = None,
                drop_labels: Tensor | None = None, temporal_attention: bool = True) -> Tensor:
        """Denoiser output for a noisy latent video.

        Args:
            x: ``[B, C, T, H, W]`` latents (H, W divisible by ``patch_size``; any T up to ``max_frames``).
            timestep: diffusion timesteps ``[B]`` (or a scalar), fractional allowed.
            class_labels: int ``[B]`` when ``num_classes > 0``; ``num_classes`` is the null class.
            encoder_hidden_states: text ``[B, S, text_dim]`` when ``text_dim`` is set (cross-attention).
            attention_mask: bool ``[B, T]``, True = a real frame (False: padding in a training batch). Padded
                frames are never attended; they do not change the valid frames' output, which equals the
                output for the valid frames alone. Their own output is 0.
            encoder_attention_mask: ``[B, S]``, 1 / True = keep, 0 / False = padding (never attended). Bool or
                0/1 numbers; an additive bias is rejected. A sample with no valid text token gets no
                cross-attention contribution.
            pooled_text: ``[B, pooled_text_dim]`` when ``pooled_text_dim`` is set (added to the condition).
            drop_labels: bool ``[B]``, True = replace the label by the null class (classifier-free guidance).
            temporal_attention: False skips the temporal blocks (image mode).

        Returns:
            ``[B, C_out, T, H, W]``, ``C_out = 2 C`` with ``learn_sigma`` (noise, then the variance channels).

        Raises:
            ValueError: a shape, mask or conditioning input does not fit the config, or too many frames.
        """
        tokens, grid = self.embed(x)
        b, t = x.shape[0], grid[0]
        frame_valid = None
        if attention_mask is not None:
            if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != (b, t):
                raise ValueError(f"attention_mask: expected a bool tensor [B, T] = [{b}, {t}] (True = real frame), "
                                 f"got {attention_mask.dtype} {list(attention_mask.shape)}")
            frame_valid = attention_mask.to(x.device)
        c, c_final = self.condition(timestep, b, class_labels, pooled_text, drop_labels)
        text, text_mask = self._text(encoder_hidden_states, encoder_attention_mask, b)
        out = self.forward_blocks(tokens, grid, c, frame_valid, text, text_mask, temporal_attention, gather=False)
        out = self.final_layer(out, c_final)  # (B, L or this rank's n, p*p*C_out)
        if self.sequence_parallel is not None:
            out = self.sequence_parallel.gather(out, tokens.shape[1], dim=1)
        out = self.unpatchify(out, grid)
        if frame_valid is not None:
            out = out * frame_valid[:, None, :, None, None].to(out.dtype)
        return out

    def _text(self, text: Tensor | None, mask: Tensor | None, batch: int) -> tuple[Tensor | None, Tensor | None]:
        cfg = self.config
        if self.caption_proj is None:
            if text is not None or mask is not None:
                raise ValueError("encoder_hidden_states: this model has no cross-attention (text_dim=None)")
            return None, None
        if text is None or text.dim() != 3 or text.shape[0] != batch or text.shape[-1] != cfg.text_dim:
            raise ValueError(f"encoder_hidden_states: expected [B, S, {cfg.text_dim}] with B={batch}, got "
                             f"{None if text is None else list(text.shape)}")
        keep = None
        if mask is not None:
            if tuple(mask.shape) != tuple(text.shape[:2]):
                raise ValueError(f"encoder_attention_mask: expected [B, S] = {list(text.shape[:2])}, got "
                                 f"{list(mask.shape)}")
            if mask.dtype == torch.bool:
                keep = mask
            else:
                if not torch.compiler.is_compiling() and not bool(((mask == 0) | (mask == 1)).all()):
                    raise ValueError("encoder_attention_mask: expected 1 = keep, 0 = padding (bool or 0/1), got "
                                     f"values {torch.unique(mask).tolist()[:6]} (an additive bias is not accepted)")
                keep = mask == 1
            keep = keep.to(text.device)
        return self.caption_proj(text.to(self.caption_proj.linear_1.weight.dtype)), keep

    # -- sequence parallelism (enable_sequence_parallel: SequenceParallelModel) ----------------
    # Tokens are cut after the patch embedding and gathered after the final layer; frame padding stays a global
    # mask, the cross-attention runs against the whole text on each rank.
    def _sequence_parallel_heads(self) -> int:
        return self.config.num_heads

    # -- diffusers --------------------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, model: nn.Module, **overrides) -> LatteDiT:
        """A LatteDiT with the architecture and weights of a diffusers ``LatteTransformer3DModel``.

        Same outputs on the same inputs (up to float rounding), for ``norm_type="ada_norm_single"`` (Latte-1 and
        every Latte checkpoint in diffusers) with activation ``gelu-approximate``, ``gelu`` or ``geglu``.
        ``overrides`` set config fields that do not touch the weights (``max_frames``, ``attention_backend``).

        Raises:
            ValueError: a configuration this class does not express.
        """
        config = config_from_diffusers(model.config, **overrides)
        out = cls(config)
        ref = next(model.parameters())
        out.to(device=ref.device, dtype=ref.dtype)
        out.load_state_dict(state_dict_from_diffusers(model.state_dict(), config), strict=True)
        return out

    def num_parameters(self) -> int:
        """Number of parameters (frozen tables are buffers and not counted)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.config
        return (f"depth={c.depth}, hidden_size={c.hidden_size}, heads={c.num_heads}, "
                f"conditioning={c.conditioning!r}, text_dim={c.text_dim}, frames={c.num_frames}/{c.frame_limit}")
