"""WanDiT against diffusers' WanTransformer3DModel on the same weights, and the patterns, padding, experts, dtypes.

Oracles: diffusers (parity), the same model run on each sample / frame / column alone (masking and factorised
patterns), the raster-order tile_window mask (tile permutation), each expert run alone (routing).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import WanTransformer3DModel

import veil
from veil.models import AttentionPattern, TimestepExperts, WanConfig, WanDiT, WanMoE
from veil.models.wan import _rename

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, eps=1e-6, rope_max_seq_len=32)


def _diffusers(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    theirs = WanTransformer3DModel(**TINY).eval()
    with torch.no_grad():  # norms start at 1 / 0: randomise them so that a misplaced weight shows
        for name, p in theirs.named_parameters():
            if "norm" in name:
                p.add_(0.5 * torch.randn_like(p))
    return theirs


def _inputs(bsz: int = 2, frames: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, 4, frames, 8, 8, generator=g)
    t = torch.tensor([999.0, 37.0, 500.0, 875.0][:bsz])
    context = torch.randn(bsz, 7, 16, generator=g)
    lengths = torch.tensor([7, 4, 2, 5][:bsz])
    for b in range(bsz):  # Wan's text encoder pads with zeros
        context[b, lengths[b]:] = 0
    return x, t, context, lengths


def _variant(model: WanDiT, **changes) -> WanDiT:
    """The same weights under another config (patterns, masking: nothing that changes a weight)."""
    other = WanDiT(dataclasses.replace(model.config, **changes)).eval()
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_matches_diffusers_with_wan_text_padding(backend):
    theirs = _diffusers()
    ours = WanDiT.from_diffusers(theirs, mask_text_padding=False, backend=backend).eval()
    x, t, context, lengths = _inputs()
    with torch.no_grad():
        want = theirs(x, t, context, return_dict=False)[0]
        got = ours(x, t, context, lengths)  # lengths are ignored without masking: Wan attends its zero padding
    assert got.shape == want.shape == x.shape
    assert (got - want).abs().max() <= 1e-4
    # masking the padding is a different computation: it must show on the padded sample only
    masked = _variant(ours, mask_text_padding=True)
    with torch.no_grad():
        diff = (masked(x, t, context, lengths) - want).abs().amax(dim=(1, 2, 3, 4))
    assert diff[0] <= 1e-4 and diff[1] > 1e-3


def test_matches_diffusers_per_token_timesteps():
    theirs = _diffusers(seed=3)
    ours = WanDiT.from_diffusers(theirs, mask_text_padding=False).eval()
    x, _, context, _ = _inputs()
    t = torch.rand(2, 3 * 4 * 4) * 1000  # Wan 2.2 TI2V: one timestep per patch, raster order
    with torch.no_grad():
        want = theirs(x, t, context, return_dict=False)[0]
        got = ours(x, t, context)
        tiled = _variant(ours, attention=AttentionPattern(kind="tile_window", tile=(1, 2, 2), window=(3, 2, 2)))(
            x, t, context)
        full_window = _variant(ours, attention=AttentionPattern(kind="window_3d", window=(5, 7, 7)))(x, t, context)
    assert (got - want).abs().max() <= 1e-4
    # a window covering the whole grid is full attention, whatever the token order
    assert (tiled - want).abs().max() <= 1e-4
    assert (full_window - want).abs().max() <= 1e-4


def test_per_frame_timesteps_are_per_token_timesteps_of_each_temporal_patch():
    cfg = WanConfig(in_channels=4, out_channels=4, patch_size=(2, 2, 2), dim=24, heads=2, num_layers=2, ffn_dim=32,
                    text_dim=16, freq_dim=16, pooled_text=True)
    model = WanDiT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, context = torch.randn(2, 4, 6, 8, 8), torch.randn(2, 5, 16)
    per_frame = torch.tensor([[0.0, 0.0, 400.0, 400.0, 400.0, 400.0], [900.0] * 6])
    per_token = per_frame[:, ::2].repeat_interleave(4 * 4, dim=1)  # (B, 3 * 4 * 4) raster order
    with torch.no_grad():
        a, b = model(x, per_frame, context), model(x, per_token, context)
        c = model(x, torch.tensor([900.0, 900.0]), context)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a[1], c[1], atol=1e-5)


def test_from_diffusers_shares_or_copies_weights():
    theirs = _diffusers()
    shared = WanDiT.from_diffusers(theirs, copy=False)
    copied = WanDiT.from_diffusers(theirs)
    w = theirs.blocks[1].attn2.norm_k.weight
    assert shared.blocks[1].cross_attn.qk_norm.k.weight.data_ptr() == w.data_ptr()
    assert copied.blocks[1].cross_attn.qk_norm.k.weight.data_ptr() != w.data_ptr()
    assert torch.equal(copied.blocks[1].cross_attn.qk_norm.k.weight, w)
    with pytest.raises(TypeError, match="overrides"):
        WanDiT.from_diffusers(theirs, ffn_dim=32)
    with pytest.raises(TypeError, match="model"):
        WanDiT.from_diffusers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="image-to-video"):
        WanDiT.from_diffusers(WanTransformer3DModel(**TINY, image_dim=8, added_kv_proj_dim=8))


def test_masked_text_padding_equals_each_sample_unpadded():
    model = WanDiT.from_diffusers(_diffusers()).eval()
    x, t, context, lengths = _inputs(bsz=3)
    context[1, 4:] = 1e3  # garbage in the padding must not leak
    with torch.no_grad():
        out = model(x, t, context, lengths)
        mask_out = model(x, t, context, context_mask=torch.arange(7) < lengths[:, None])
        for b in range(3):
            alone = model(x[b:b + 1], t[b:b + 1], context[b:b + 1, : lengths[b]])
            assert (out[b:b + 1] - alone).abs().max() <= 1e-5
    assert (mask_out - out).abs().max() <= 1e-5


def test_empty_text_rows_give_no_nan_and_ignore_their_context():
    model = WanDiT.from_diffusers(_diffusers())
    x, t, context, _ = _inputs()
    lengths = torch.tensor([0, 3])
    x.requires_grad_(True)
    out = model(x, t, context, lengths)
    out.square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():  # the empty row's text is never read
        other = context.clone()
        other[0] = torch.randn(7, 16)
        assert torch.equal(model(x, t, other, lengths)[0], out[0].detach())


@pytest.mark.parametrize("pattern", ["tile_window", "tile_window+spatial"])
def test_tile_window_in_tile_order_equals_raster_order_mask(pattern):
    # tiles of (1, 2, 2) patches on a (4, 4, 4) grid; a window of (1, 1, 2) tiles is much less than full
    tw = AttentionPattern(kind="tile_window", tile=(1, 2, 2), window=(1, 1, 2))
    attention = (tw, tw) if pattern == "tile_window" else (tw, "spatial")
    model = WanDiT.from_diffusers(_diffusers(), attention=attention)
    raster = _variant(model, tile_permute=False)
    x, t, context, lengths = _inputs(frames=4)
    x = torch.randn(2, 4, 4, 8, 8)
    got = model(x, t, context, lengths)
    want = raster(x, t, context, lengths)
    assert (got - want).abs().max() <= 1e-5
    assert model.config.tile() == (1, 2, 2) and raster.config.tile() is None
    with torch.no_grad():
        full = _variant(model, attention="full")(x, t, context, lengths)
    assert (full - got).abs().max() > 1e-3  # the window matters
    got.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_factorised_and_causal_patterns_against_smaller_videos():
    full = WanDiT.from_diffusers(_diffusers()).eval()
    x, t, context, lengths = _inputs(frames=3)
    with torch.no_grad():
        # spatial: each frame alone (RoPE is relative: the frame's own t-angle cancels within the frame)
        spatial = _variant(full, attention="spatial")(x, t, context, lengths)
        for f in range(3):
            alone = full(x[:, :, f:f + 1], t, context, lengths)
            assert (spatial[:, :, f:f + 1] - alone).abs().max() <= 1e-5
        # temporal: each (h, w) patch column alone
        temporal = _variant(full, attention="temporal")(x, t, context, lengths)
        for i, j in [(0, 0), (1, 3), (3, 2)]:
            sl = (slice(None), slice(None), slice(None), slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2))
            assert (temporal[sl] - full(x[sl], t, context, lengths)).abs().max() <= 1e-5
        # frame_causal: the first f frames do not see the future; the first frame sees only itself
        causal_model = _variant(full, attention="frame_causal")
        causal = causal_model(x, t, context, lengths)
        for f in (1, 2):
            assert (causal[:, :, :f] - causal_model(x[:, :, :f], t, context, lengths)).abs().max() <= 1e-5
        assert (causal[:, :, :1] - full(x[:, :, :1], t, context, lengths)).abs().max() <= 1e-5
        assert (causal[:, :, 1:] - full(x, t, context, lengths)[:, :, 1:]).abs().max() > 1e-3
        # the article's local temporal window: one frame is spatial, five frames (of three) are full
        one = AttentionPattern.temporal_window(1)
        assert (_variant(full, attention=one)(x, t, context, lengths) - spatial).abs().max() <= 1e-5
        dense = full(x, t, context, lengths)
        five = AttentionPattern.temporal_window(5)
        assert (_variant(full, attention=five)(x, t, context, lengths) - dense).abs().max() <= 1e-5
        three = _variant(full, attention=AttentionPattern.temporal_window(3))(x, t, context, lengths)
        # frame 0 sees frames 0-1 only: equal to neither full nor spatial
        assert (three - spatial).abs().max() > 1e-3 and (three - dense).abs().max() > 1e-3
        # mixed per layer
        mixed = _variant(full, attention=("spatial", "temporal"))(x, t, context, lengths)
    assert (mixed - spatial).abs().max() > 1e-3 and (mixed - temporal).abs().max() > 1e-3


def test_timestep_experts_route_per_sample_at_the_boundary():
    high = WanDiT.from_diffusers(_diffusers(seed=0)).eval()
    low = WanDiT.from_diffusers(_diffusers(seed=5)).eval()
    experts = TimestepExperts(high, low, boundary=0.875)
    x, _, context, lengths = _inputs(bsz=4)
    t = torch.tensor([874.9, 875.0, 0.0, 999.0])
    assert experts.route(t, 4).tolist() == [False, True, False, True]
    with torch.no_grad():
        out = experts(x, t, context, lengths)
        for b, model in enumerate([low, high, low, high]):
            alone = model(x[b:b + 1], t[b:b + 1], context[b:b + 1], lengths[b:b + 1])
            assert torch.allclose(out[b:b + 1], alone, atol=1e-5, rtol=0)
        # one side only: no split; a scalar timestep is shared by the batch
        assert torch.allclose(experts(x, torch.tensor(900.0), context, lengths),
                              high(x, torch.full((4,), 900.0), context, lengths), atol=1e-6, rtol=0)
        assert (experts(x, 100.0, context, lengths) - high(x, 100.0, context, lengths)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="timestep"):
        experts(x, torch.zeros(3, 4), context)
    with pytest.raises(ValueError, match="boundary"):
        TimestepExperts(high, low, boundary=1.5)
    with pytest.raises(ValueError, match="offload_device"):
        TimestepExperts(high, low, keep_active_only=True, offload_device="meta")


def test_timestep_experts_route_per_token_timesteps_by_the_noisiest_token():
    high = WanDiT.from_diffusers(_diffusers(seed=0)).eval()
    low = WanDiT.from_diffusers(_diffusers(seed=5)).eval()
    experts = TimestepExperts(high, low, boundary=0.875)
    x, _, context, lengths = _inputs(bsz=3)
    tokens = 3 * 4 * 4  # 3 frames of 8x8 in 1x2x2 patches
    clean = torch.arange(tokens) < 16  # the first frame's tokens: a clean context frame at timestep 0
    t = torch.stack([torch.where(clean, 0.0, 900.0), torch.where(clean, 0.0, 600.0), torch.full((tokens,), 875.0)])
    assert experts.route(t, 3).tolist() == [True, False, True]
    assert experts.route(t.reshape(3, 3, 16), 3).tolist() == [True, False, True]  # per frame and token alike
    with torch.no_grad():
        out = experts(x, t, context, lengths)
        for b, model in enumerate([high, low, high]):
            alone = model(x[b:b + 1], t[b:b + 1], context[b:b + 1], lengths[b:b + 1])
            assert torch.allclose(out[b:b + 1], alone, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"timestep: expected a scalar, \[B\] = \[3\]"):
        experts.route(torch.zeros(2, tokens), 3)


def test_timestep_experts_keep_only_the_active_expert():
    high = WanDiT(WanConfig.preset("tiny")).eval()
    low = WanDiT(WanConfig.preset("tiny")).eval()
    experts = TimestepExperts(high, low, keep_active_only=True)
    moves: list[tuple[str, str]] = []

    def spy(name, model):  # record every move (CPU -> CPU on this machine)
        orig = model.to

        def to(device):
            moves.append((name, str(device)))
            return orig(device)
        model.to = to

    spy("high", high)
    spy("low", low)
    x, _, context, _ = _inputs(bsz=2)
    with torch.no_grad():
        for step_t in (990.0, 950.0, 800.0, 100.0):  # a sampler: high, high, low, low
            experts(x, torch.full((2,), step_t), context)
    assert experts.swaps == 2 and experts.resident == "low"
    assert moves == [("low", "cpu"), ("high", "cpu"), ("high", "cpu"), ("low", "cpu")]
    with torch.no_grad():  # mixed batch: the resident (low) expert runs first, then one swap
        experts(x, torch.tensor([990.0, 10.0]), context)
    assert experts.swaps == 3 and experts.resident == "high"
    assert experts.config is high.config  # samplers read the architecture from the denoiser


def test_moe_layers_surface_aux_losses():
    cfg = WanConfig.preset("tiny", feed_forward=("moe", "dense"), moe=WanMoE(num_experts=4, top_k=2))
    model = WanDiT(cfg)
    x, t, context, lengths = _inputs()
    out, aux = model(x, t, context, lengths, return_aux=True)
    assert len(aux) == 1 and aux[0].tokens_per_expert.sum() == 2 * 2 * 48  # B * k * L assignments
    loss = out.square().mean() + 0.01 * aux[0].load_balancing_loss + 1e-3 * aux[0].z_loss
    loss.backward()
    assert model.blocks[0].ffn.router.weight.grad.abs().sum() > 0
    assert torch.equal(out, model(x, t, context, lengths))  # without return_aux: the output alone
    with pytest.raises(ValueError, match="moe"):
        WanConfig.preset("tiny", feed_forward="moe")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_backward_finite_in_every_dtype(dtype):
    torch.manual_seed(0)
    model = WanDiT(WanConfig.preset("tiny", attention=("full", "spatial"))).to(dtype)
    x, t, context, _ = _inputs()
    lengths = torch.tensor([0, 5])  # an empty text row too
    x = x.to(dtype).requires_grad_(True)
    out = model(x, t, context.to(dtype), lengths)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if dtype != torch.float32:  # close to the float32 model on the same weights
        ref = WanDiT(model.config)
        ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        with torch.no_grad():
            want = ref(x.detach().float(), t, context, lengths)
        assert (out.float() - want).abs().max() <= 0.1 * want.abs().max()


def test_presets_have_the_released_shapes():
    # the preset's parameters have exactly the shapes of the diffusers model of that config (built on meta)
    for name, heads in (("wan2.1-t2v-1.3b", 12), ("wan2.1-t2v-14b", 40), ("wan2.2-ti2v-5b", 24)):
        cfg = WanConfig.preset(name)
        with torch.device("meta"):
            ours = WanDiT(cfg)
            theirs = WanTransformer3DModel(
                patch_size=cfg.patch_size, num_attention_heads=heads, attention_head_dim=cfg.dim // heads,
                in_channels=cfg.in_channels, out_channels=cfg.out_channels, text_dim=cfg.text_dim,
                freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers)
        want = {_rename(k): tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
        if name == "wan2.1-t2v-1.3b":
            assert 1.3e9 < sum(p.numel() for p in ours.parameters()) < 1.5e9


def test_sparse_video_patterns_of_2025():
    full = WanDiT.from_diffusers(_diffusers()).eval()  # TINY: 2 heads
    x, t, context, lengths = _inputs(frames=4)
    with torch.no_grad():
        spatial = _variant(full, attention="spatial")(x, t, context, lengths)
        temporal = _variant(full, attention="temporal")(x, t, context, lengths)
        # per_head: head 0 spatial, head 1 temporal (Sparse VideoGen). The auto (tiles) result equals the
        # reference backend's, and differs from both single patterns
        svg = _variant(full, attention=AttentionPattern(kind="per_head", heads=("spatial", "temporal")))
        got = svg(x, t, context, lengths)
        with veil.use_backend("reference"):
            want = svg(x, t, context, lengths)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (got - spatial).abs().max() > 1e-3 and (got - temporal).abs().max() > 1e-3
        # a shifted 3D window as large as the grid is full attention; a radial mask whose band covers every frame too
        dense = full(x, t, context, lengths)
        whole = AttentionPattern(kind="window_3d", window=(5, 5, 5), border="shift")
        assert (_variant(full, attention=whole)(x, t, context, lengths) - dense).abs().max() <= 1e-5
        radial = AttentionPattern(kind="radial", radial={"dense_distance": 3})
        assert (_variant(full, attention=radial)(x, t, context, lengths) - dense).abs().max() <= 1e-5
        thin = _variant(full, attention=AttentionPattern(kind="radial", radial={"min_width": 4, "sink_frames": 1}))
        got = thin(x, t, context, lengths)
        with veil.use_backend("reference"):
            want = thin(x, t, context, lengths)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (got - dense).abs().max() > 1e-3
    with pytest.raises(ValueError, match="per_head"):
        WanConfig.preset("tiny", heads=2, attention=AttentionPattern(kind="per_head", heads=("spatial",) * 3))
    with pytest.raises(TypeError, match="bogus"):
        AttentionPattern(kind="radial", radial={"bogus": 1})
    with pytest.raises(ValueError, match="dilation/border"):
        AttentionPattern(kind="spatial", border="shift")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="heads"):
        WanConfig.preset("tiny", heads=5)
    with pytest.raises(ValueError, match="heads"):
        WanConfig.preset("tiny", dim=8, heads=2)  # head dim 4: RoPE split (4, 0, 0)
    with pytest.raises(ValueError, match="window"):
        AttentionPattern(kind="window_3d", window=(2, 3, 3))
    with pytest.raises(ValueError, match="window_3d"):
        WanConfig.preset("tiny", attention="window_3d")
    with pytest.raises(ValueError, match="attention"):
        WanConfig.preset("tiny", attention=("full",))
    tw = [AttentionPattern(kind="tile_window", tile=t, window=(1, 1, 1)) for t in ((1, 2, 2), (1, 1, 1))]
    with pytest.raises(ValueError, match="share one tile"):
        WanConfig.preset("tiny", attention=tuple(tw))
    WanConfig.preset("tiny", attention=tuple(tw), tile_permute=False)  # raster order: any tiles
    with pytest.raises(ValueError, match="name"):
        WanConfig.preset("wan9")
    model = WanDiT(WanConfig.preset("tiny"))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 4, 2, 7, 8), torch.tensor([1.0]), torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="context"):
        model(torch.randn(1, 4, 2, 8, 8), torch.tensor([1.0]), torch.randn(1, 3, 12))
    with pytest.raises(ValueError, match="timestep"):
        model(torch.randn(1, 4, 2, 8, 8), torch.tensor([1.0, 2.0]), torch.randn(1, 3, 16))
    tiled = WanDiT(WanConfig.preset("tiny", attention=tw[0]))
    with pytest.raises(ValueError, match="tile"):
        tiled(torch.randn(1, 4, 2, 6, 8), torch.tensor([1.0]), torch.randn(1, 3, 16))


def test_pooled_text_adds_the_mean_valid_token_to_the_time_embedding():
    ours = WanDiT.from_diffusers(_diffusers())
    cfg = dataclasses.replace(ours.config, pooled_text=True)
    pooled = WanDiT(cfg)
    missing, unexpected = pooled.load_state_dict(ours.state_dict(), strict=False)
    assert sorted(missing) == [f"pooled_text_embedding.linear_{i}.{w}" for i in (1, 2) for w in ("bias", "weight")]
    assert not unexpected
    x, t, context, lengths = _inputs()
    proj = pooled.pooled_text_embedding
    with torch.no_grad():
        # hand-made: masked mean -> Linear -> GELU(tanh) -> Linear, added to the timestep embedding
        mean = torch.stack([context[b, : lengths[b]].mean(0) for b in range(2)])
        cond = proj.linear_2(torch.nn.functional.gelu(proj.linear_1(mean), approximate="tanh"))
        torch.testing.assert_close(pooled.pool_text(context, lengths, None), cond)
        emb, _ = ours.embed_time(t, 2, 1)
        emb_p, _ = pooled.embed_time(t, 2, 1, cond)
        torch.testing.assert_close(emb_p, emb + cond)
        # zero weights in the pooled path: the model without it, exactly
        for p in proj.parameters():
            p.zero_()
        torch.testing.assert_close(pooled(x, t, context, lengths), ours(x, t, context, lengths), rtol=0, atol=0)
        torch.manual_seed(3)
        for p in proj.parameters():
            p.normal_(0, 0.5)
        out = pooled(x, t, context, lengths)
        assert (out - ours(x, t, context, lengths)).abs().max() > 1e-3  # the path is live
        # padding past the lengths is never seen, and a null prompt (length 0) pools to zeros
        noisy = context.clone()
        noisy[0, lengths[0]:] = 5.0
        noisy[1, lengths[1]:] = 5.0
        torch.testing.assert_close(pooled(x, t, noisy, lengths), out)
        zero = pooled.pool_text(context, torch.tensor([0, 3]), None)[0]
        gelu = torch.nn.functional.gelu
        torch.testing.assert_close(zero, proj.linear_2(gelu(proj.linear_1.bias, approximate="tanh")))


def test_abs_pos_adds_the_3d_sincos_table_to_the_patch_tokens():
    ours = WanDiT.from_diffusers(_diffusers())
    cfg = dataclasses.replace(ours.config, abs_pos=True)
    absolute = WanDiT(cfg)
    absolute.load_state_dict(ours.state_dict())  # no parameters of its own
    x, t, context, lengths = _inputs()
    grid = (x.shape[2] // cfg.patch_size[0], x.shape[3] // cfg.patch_size[1], x.shape[4] // cfg.patch_size[2])
    table = veil.layers.sincos_3d(cfg.dim, grid)  # (T H W, E) raster order

    def add_table(module, args, out):  # the oracle: the table added to the patch embedding's output (B, E, T, H, W)
        return out + table.T.reshape(1, cfg.dim, *grid)
    handle = ours.patch_embedding.register_forward_hook(add_table)
    with torch.no_grad():
        want = ours(x, t, context, lengths)
        handle.remove()
        got = absolute(x, t, context, lengths)
        plain = ours(x, t, context, lengths)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="abs_pos"):
        WanConfig(dim=4, heads=1, abs_pos=True)  # split (4, 0, 0)
