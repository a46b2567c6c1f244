"""LatteDiT: parity with diffusers' LatteTransformer3DModel on the same weights (with and without text padding),
padded frames / text change nothing for the valid part, init behaviour, the temporal table, dtypes."""

import pytest
import torch
from diffusers import LatteTransformer3DModel
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid

from veil.models import LatteConfig, LatteDiT
from veil.models.latte_diffusers import config_from_diffusers, state_dict_from_diffusers

D = 32  # tiny width used by the own-model tests


def _diffusers_latte(activation_fn="geglu", cross_attention_dim=16, seed=0):
    torch.manual_seed(seed)
    model = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=cross_attention_dim, attention_bias=True, sample_size=8, patch_size=2,
        activation_fn=activation_fn, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=16, video_length=4,
    ).eval()
    with torch.no_grad():  # the zero / small inits would hide mistakes: move every weight
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _randomized(config: LatteConfig, seed=0) -> LatteDiT:
    torch.manual_seed(seed)
    model = LatteDiT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _tiny(**kw) -> LatteConfig:
    base = dict(input_size=8, patch_size=2, hidden_size=D, depth=4, num_heads=2, num_frames=4, max_frames=8,
                num_classes=10, text_dim=12)
    return LatteConfig(**{**base, **kw})


@pytest.mark.parametrize("activation_fn", ["geglu", "gelu-approximate"])
@pytest.mark.parametrize("temporal", [True, False])
def test_matches_diffusers(activation_fn, temporal):
    ref = _diffusers_latte(activation_fn)
    ours = LatteDiT.from_diffusers(ref).eval()
    x, t, text = torch.randn(2, 4, 4, 8, 8), torch.tensor([10.0, 700.0]), torch.randn(2, 5, 16)
    with torch.no_grad():
        want = ref(x, timestep=t, encoder_hidden_states=text, enable_temporal_attentions=temporal).sample
        got = ours(x, t, encoder_hidden_states=text, temporal_attention=temporal)
    assert got.shape == want.shape == (2, 8, 4, 8, 8)
    assert (got - want).abs().max() <= 1e-4


def test_matches_diffusers_on_another_latent_size():
    ref = _diffusers_latte()
    ours = LatteDiT.from_diffusers(ref).eval()
    x, t, text = torch.randn(1, 4, 4, 12, 8), torch.tensor([250.0]), torch.randn(1, 3, 16)  # trained on 8 x 8
    with torch.no_grad():
        want = ref(x, timestep=t, encoder_hidden_states=text).sample
        got = ours(x, t, encoder_hidden_states=text)
    assert (got - want).abs().max() <= 1e-4
    # diffusers' temporal table is fixed to video_length; ours is that table at 4 frames and goes to max_frames
    longer = LatteDiT.from_diffusers(ref, max_frames=8).eval()
    torch.testing.assert_close(longer.temporal_table(torch.ones(1, 4, dtype=torch.bool)), ref.temp_pos_embed,
                               rtol=0, atol=0)
    with torch.no_grad():
        out = longer(torch.randn(1, 4, 6, 8, 8), t, encoder_hidden_states=text)
    assert out.shape == (1, 8, 6, 8, 8) and torch.isfinite(out).all()


def test_matches_diffusers_without_cross_attention():
    ref = _diffusers_latte(cross_attention_dim=None)
    ours = LatteDiT.from_diffusers(ref).eval()
    assert ours.config.text_dim is None
    x, t = torch.randn(1, 4, 4, 8, 8), torch.tensor([300.0])
    with torch.no_grad():
        want = ref(x, timestep=t, encoder_hidden_states=torch.randn(1, 3, 16)).sample  # projected, then unused
        got = ours(x, t)
    assert (got - want).abs().max() <= 1e-4


def test_matches_diffusers_with_text_padding():
    ref = _diffusers_latte()
    ours = LatteDiT.from_diffusers(ref).eval()
    b, frames = 2, 4
    x, t, text = torch.randn(b, 4, frames, 8, 8), torch.tensor([10.0, 700.0]), torch.randn(b, 6, 16)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    # diffusers passes encoder_attention_mask to the spatial blocks as is: its documented [B, L] 0/1 mask
    # crashes there; an additive bias [B*T, 1, L] (one row per frame) is what works
    bias = ((1 - keep.float()) * -10000.0)[:, None].repeat_interleave(frames, dim=0)
    with torch.no_grad():
        want = ref(x, timestep=t, encoder_hidden_states=text, encoder_attention_mask=bias).sample
        got = ours(x, t, encoder_hidden_states=text, encoder_attention_mask=keep)
        unmasked = ours(x, t, encoder_hidden_states=text)
    assert (got - want).abs().max() <= 1e-4
    assert (got[1] - unmasked[1]).abs().max() > 1e-2  # the padding mattered
    assert (got[0] - unmasked[0]).abs().max() <= 1e-5


def test_padded_text_changes_nothing():
    model = _randomized(_tiny())
    x, t, y = torch.randn(2, 4, 4, 8, 8), torch.tensor([5.0, 900.0]), torch.tensor([3, 7])
    text = torch.randn(2, 3, 12)
    padded = torch.cat([text, 100 * torch.randn(2, 4, 12)], dim=1)  # junk after the real tokens
    keep = torch.tensor([[True] * 3 + [False] * 4] * 2)
    keep[0, 5] = True  # sample 0 also keeps a token in the middle of the padding
    with torch.no_grad():
        alone = model(x, t, y, text)
        got = model(x, t, y, padded, encoder_attention_mask=keep)
        with_extra = model(x[:1], t[:1], y[:1], torch.cat([text[:1], padded[:1, 5:6]], dim=1))
    torch.testing.assert_close(got[1], alone[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[0], with_extra[0], rtol=0, atol=1e-5)
    # 0/1 integer masks mean the same; an additive bias is refused
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y, padded, encoder_attention_mask=keep.long()), got, rtol=0, atol=0)
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        model(x, t, y, padded, encoder_attention_mask=(~keep).float() * -10000.0)


def test_padded_frames_change_nothing():
    model = _randomized(_tiny())
    torch.manual_seed(1)
    x, t, y, text = torch.randn(2, 4, 4, 8, 8), torch.tensor([5.0, 900.0]), torch.tensor([3, 7]), torch.randn(2, 3, 12)
    valid = torch.tensor([[True, True, True, True], [True, False, True, False]])  # sample 1: frames 0 and 2
    junk = x.clone()
    junk[1, :, 1] = 50 * torch.randn(4, 8, 8)
    junk[1, :, 3] = -50 * torch.randn(4, 8, 8)
    with torch.no_grad():
        got = model(x, t, y, text, attention_mask=valid)
        got_junk = model(junk, t, y, text, attention_mask=valid)
        full0 = model(x[:1], t[:1], y[:1], text[:1])
        alone1 = model(x[1:, :, [0, 2]], t[1:], y[1:], text[1:])  # the two real frames of sample 1 alone
    torch.testing.assert_close(got[0], full0[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1][:, [0, 2]], alone1[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got_junk, got, rtol=0, atol=1e-5)
    assert got[1][:, [1, 3]].abs().max() == 0  # padded frames output 0
    with torch.no_grad():  # without the mask the junk frames do leak into the real ones
        leaky = model(junk, t, y, text)
    assert (leaky[1][:, [0, 2]] - alone1[0]).abs().max() > 1e-2


def test_fresh_adaln_zero_model_is_identity_and_outputs_zero():
    model = LatteDiT(_tiny(num_classes=10, text_dim=12)).eval()
    x, t, y, text = torch.randn(2, 4, 4, 8, 8), torch.tensor([5.0, 900.0]), torch.tensor([1, 2]), torch.randn(2, 3, 12)
    with torch.no_grad():
        tokens, grid = model.embed(x)
        c, _ = model.condition(t, 2, y)
        text_d, _ = model._text(text, None, 2)
        out = model.forward_blocks(tokens, grid, c, None, text_d)
        table = model.temporal_table(torch.ones(2, 4, dtype=torch.bool))  # (B, T, D)
        want = (tokens.view(2, 4, 16, D) + table[:, :, None]).view(2, 64, D)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
        assert model(x, t, y, text).abs().max() == 0
        # the same model with its gates opened is no longer the identity
        model.blocks[1].adaln.bias.data.fill_(0.5)
        assert (model.forward_blocks(tokens, grid, c, None, text_d) - want).abs().max() > 1e-2


def test_fresh_adaln_single_model_outputs_zero():
    model = LatteDiT(_tiny(conditioning="adaln_single", num_classes=0)).eval()
    x, t = torch.randn(1, 4, 4, 8, 8), torch.tensor([5.0])
    with torch.no_grad():
        assert model(x, t, encoder_hidden_states=torch.randn(1, 3, 12)).abs().max() == 0
        tokens, grid = model.embed(x)
        c, _ = model.condition(t, 1)
        out = model.forward_blocks(tokens, grid, c, None, model._text(torch.randn(1, 3, 12), None, 1)[0])
    assert (out - tokens).abs().max() > 1e-2  # PixArt's blocks are not zero-gated at init


def test_temporal_table_is_the_trained_one_and_interpolates():
    model = LatteDiT(_tiny())
    trained = get_1d_sincos_pos_embed_from_grid(D, torch.arange(4), output_type="pt").float()  # diffusers' table
    ones = lambda n: torch.ones(1, n, dtype=torch.bool)  # noqa: E731
    torch.testing.assert_close(model.temporal_table(ones(4))[0], trained, rtol=0, atol=0)
    torch.testing.assert_close(model.temporal_table(ones(2))[0], trained[[0, 2]], rtol=0, atol=1e-6)
    eight = model.temporal_table(ones(8))[0]  # positions 0, 0.5, 1, ... 3.5
    torch.testing.assert_close(eight[0::2], trained, rtol=0, atol=1e-6)
    assert (eight[1] - trained[0]).abs().max() > 1e-3
    assert model.temporal_table(ones(1)).abs().max() == 0  # Latte adds no temporal table to a single frame
    model = _randomized(_tiny())
    with torch.no_grad():
        for n in (1, 2, 8):
            out = model(torch.randn(1, 4, n, 8, 8), torch.tensor([3.0]), torch.tensor([1]), torch.randn(1, 2, 12))
            assert out.shape == (1, 8, n, 8, 8) and torch.isfinite(out).all()


def test_too_many_frames_raise():
    model = LatteDiT(_tiny())
    x, t, y, text = torch.randn(1, 4, 9, 8, 8), torch.tensor([3.0]), torch.tensor([1]), torch.randn(1, 2, 12)
    with pytest.raises(ValueError, match=r"9 frames exceed max_frames=8"):
        model(x, t, y, text)
    with torch.no_grad():  # 9 frames of which 8 are real is fine
        valid = torch.ones(1, 9, dtype=torch.bool)
        valid[0, 4] = False
        assert model(x, t, y, text, attention_mask=valid).shape == (1, 8, 9, 8, 8)
    with pytest.raises(ValueError, match="max_frames"):
        LatteDiT(LatteConfig(**{**_tiny().__dict__, "max_frames": None}))(x[:, :, :5], t, y, text)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_backward_finite(dtype):
    model = _randomized(_tiny())
    torch.manual_seed(2)
    x, t, y, text = torch.randn(2, 4, 4, 8, 8), torch.tensor([5.0, 900.0]), torch.tensor([3, 7]), torch.randn(2, 3, 12)
    keep = torch.tensor([[True, True, True], [True, False, False]])
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    with torch.no_grad():
        fp32 = model(x, t, y, text, attention_mask=valid, encoder_attention_mask=keep)
    model = model.to(dtype)
    out = model(x.to(dtype), t, y, text.to(dtype), attention_mask=valid, encoder_attention_mask=keep)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    scale = fp32.abs().max()
    assert ((out.detach().float() - fp32).abs().max() / scale) < (1e-5 if dtype == torch.float32 else 0.1)


def test_label_dropout_uses_the_null_class():
    model = _randomized(_tiny(class_dropout_prob=0.999999))
    x, t, text = torch.randn(2, 4, 4, 8, 8), torch.tensor([5.0, 900.0]), torch.randn(2, 3, 12)
    y = torch.tensor([3, 7])
    with torch.no_grad():
        null = model.eval()(x, t, torch.tensor([10, 10]), text)
        forced = model(x, t, y, text, drop_labels=torch.tensor([True, True]))
        conditional = model(x, t, y, text)
        torch.manual_seed(0)
        dropped = model.train()(x, t, y, text)
    torch.testing.assert_close(forced, null, rtol=0, atol=0)
    torch.testing.assert_close(dropped, null, rtol=0, atol=0)
    assert (conditional - null).abs().max() > 1e-3
    with pytest.raises(ValueError, match="class_labels"):
        model(x, t, torch.tensor([3, 11]), text)


def test_pooled_text_condition():
    model = _randomized(_tiny(num_classes=0, text_dim=None, pooled_text_dim=6))
    t, pooled = torch.tensor([5.0, 900.0]), torch.randn(2, 6)
    with torch.no_grad():
        c, c_final = model.condition(t, 2, pooled_text=pooled)
        want = model.t_embedder(t) + model.pooled_text_proj(torch.nn.functional.silu(pooled))
        torch.testing.assert_close(c, want, rtol=0, atol=0)
        x = torch.randn(2, 4, 4, 8, 8)
        a, b = model(x, t, pooled_text=pooled), model(x, t, pooled_text=torch.randn(2, 6))
    assert (a - b).abs().max() > 1e-3 and c_final is c
    with pytest.raises(ValueError, match="pooled_text"):
        model(x, t)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(x, t, encoder_hidden_states=torch.randn(2, 3, 12), pooled_text=pooled)


def test_image_mode_has_no_frame_limit():
    model = _randomized(_tiny())
    x, t, y, text = torch.randn(1, 4, 12, 8, 8), torch.tensor([3.0]), torch.tensor([1]), torch.randn(1, 2, 12)
    with torch.no_grad():
        out = model(x, t, y, text, temporal_attention=False)
        one = model(x[:, :, 5:6], t, y, text, temporal_attention=False)
    torch.testing.assert_close(out[:, :, 5:6], one, rtol=0, atol=1e-5)  # frames are independent images


def test_presets_and_config_validation():
    # the Latte paper's Latte-XL: 673.7M parameters (without a label table; the frozen tables are buffers)
    with torch.device("meta"):
        xl = LatteDiT(LatteConfig.preset("Latte-XL/2", num_classes=0))
    assert round(xl.num_parameters() / 1e6, 1) == 673.7
    assert len(xl.blocks) == 28 and xl.config.hidden_size == 1152 and xl.blocks[0].attn.heads == 16
    with pytest.raises(ValueError, match="depth"):
        LatteConfig(depth=3)
    with pytest.raises(ValueError, match="max_frames"):
        LatteConfig(num_frames=16, max_frames=8)
    with pytest.raises(ValueError, match="conditioning"):
        LatteConfig(conditioning="adaln_single", num_classes=10)
    with pytest.raises(ValueError, match="name"):
        LatteConfig.preset("Latte-XXL")


def test_latte_1_preset_is_the_diffusers_checkpoint_architecture():
    # maxin-cn/Latte-1 transformer/config.json, built on the meta device (no weights)
    kw = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
              cross_attention_dim=1152, attention_bias=True, sample_size=64, patch_size=2,
              activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
              norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096, video_length=16)
    with torch.device("meta"):
        ref = LatteTransformer3DModel(**kw)
        ours = LatteDiT(LatteConfig.preset("Latte-1"))
    assert config_from_diffusers(ref.config) == ours.config
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters()) == 1_057_246_880
    converted = state_dict_from_diffusers(ref.state_dict(), ours.config)
    own = ours.state_dict()
    assert converted.keys() == own.keys()
    assert all(converted[k].shape == own[k].shape for k in own)
    with pytest.raises(ValueError, match="norm_type"):
        config_from_diffusers({**ref.config, "norm_type": "layer_norm"})
