"""Positions against HF Gemma 3's rotary embedding, diffusers' Wan 3D RoPE and diffusers' sin-cos tables."""

import math

import pytest
import torch
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid, get_2d_sincos_pos_embed
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from transformers import Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding, apply_rotary_pos_emb

from veil.layers import Rope3D, RotaryEmbedding, sincos_1d, sincos_2d, sincos_3d, wan_rope_split


def _hf_rope(head_dim, base, positions, dtype):
    cfg = Gemma3TextConfig(head_dim=head_dim, num_attention_heads=2, hidden_size=32, num_hidden_layers=2,
                           layer_types=["sliding_attention", "full_attention"],
                           rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                            "full_attention": {"rope_type": "default", "rope_theta": base}})
    emb = Gemma3RotaryEmbedding(cfg)
    return emb(torch.zeros(1, dtype=dtype), positions, "full_attention")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_1d_matches_hf_gemma3_with_left_padding_positions(dtype):
    torch.manual_seed(0)
    base = 1_000_000.0
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])  # second sample left-padded
    cos, sin = _hf_rope(8, base, positions, dtype)
    table = RotaryEmbedding(8, base=base)(positions, dtype=dtype)
    torch.testing.assert_close(table.cos, cos, rtol=0, atol=0)
    torch.testing.assert_close(table.sin, sin, rtol=0, atol=0)
    q, k = torch.randn(2, 3, 6, 8).to(dtype), torch.randn(2, 1, 6, 8).to(dtype)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(table.apply(q), q_hf, rtol=0, atol=0)
    torch.testing.assert_close(table.apply(k), k_hf, rtol=0, atol=0)


def test_rope_1d_scores_depend_only_on_offset():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, base=500.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        tq = rope(torch.tensor([pq]))
        tk = rope(torch.tensor([pk]))
        return (tq.apply(q) * tk.apply(k)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 5), atol=1e-3)


def test_wan_split():
    assert wan_rope_split(128) == (44, 42, 42)
    assert wan_rope_split(24) == (8, 8, 8)
    assert wan_rope_split(12) == (4, 4, 4)


@pytest.mark.parametrize("grid", [(2, 3, 4), (3, 2, 2)])
def test_rope_3d_matches_diffusers_wan(grid):
    torch.manual_seed(0)
    head_dim = 24
    theirs = WanRotaryPosEmbed(head_dim, patch_size=(1, 2, 2), max_seq_len=16)
    t, h, w = grid
    cos_ref, sin_ref = theirs(torch.zeros(1, 4, t, 2 * h, 2 * w))  # (1, L, 1, D)
    table = Rope3D(head_dim)(grid)
    assert table.cos.dtype == torch.float32 and table.cos.shape == (1, t * h * w, head_dim)
    torch.testing.assert_close(table.cos, cos_ref[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(table.sin, sin_ref[:, :, 0], rtol=0, atol=0)
    # Wan's application (interleaved complex pairs), copied from WanAttnProcessor
    x = torch.randn(2, t * h * w, 3, head_dim)  # (B, L, N, D) as Wan
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos_ref[..., 0::2], sin_ref[..., 1::2]
    want = torch.empty_like(x)
    want[..., 0::2] = x1 * c - x2 * s
    want[..., 1::2] = x1 * s + x2 * c
    got = table.apply(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # float32 tables differ from float64 ones only by rounding
    t32 = Rope3D(head_dim, table_dtype=torch.float32)(grid)
    torch.testing.assert_close(t32.cos, table.cos, rtol=0, atol=1e-5)


def test_rope_3d_each_part_rotates_with_its_own_axis():
    table = Rope3D(12)((2, 3, 4))  # split (4, 4, 4)
    cos = table.cos[0].view(2, 3, 4, 12)
    # the t part is constant over (h, w), the h part over (t, w), the w part over (t, h)
    assert torch.equal(cos[:, :, :, :4], cos[:, :1, :1, :4].expand(2, 3, 4, 4))
    assert torch.equal(cos[:, :, :, 4:8], cos[:1, :, :1, 4:8].expand(2, 3, 4, 4))
    assert torch.equal(cos[:, :, :, 8:], cos[:1, :1, :, 8:].expand(2, 3, 4, 4))
    assert not torch.equal(cos[0, 0, 0], cos[0, 0, 1])


def test_sincos_1d_matches_diffusers_latte_temporal():
    want = get_1d_sincos_pos_embed_from_grid(32, torch.arange(0, 6).unsqueeze(1), output_type="pt").float()
    torch.testing.assert_close(sincos_1d(32, 6), want, rtol=0, atol=0)
    # interpolation: 12 positions spread over the trained 6
    interp = sincos_1d(32, 12, base_length=6)
    torch.testing.assert_close(interp[::2], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("grid,base,scale", [((4, 4), None, 1.0), ((3, 5), None, 1.0), ((8, 8), 4, 1.0),
                                             ((6, 4), 4, 2.0)])
def test_sincos_2d_matches_diffusers(grid, base, scale):
    want = get_2d_sincos_pos_embed(16, grid, base_size=grid[0] if base is None else base,
                                   interpolation_scale=scale, output_type="pt").float()
    got = sincos_2d(16, grid, base_size=base, interpolation_scale=scale)
    assert got.shape == (grid[0] * grid[1], 16)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_sincos_2d_layout_columns_first_then_rows():
    table = sincos_2d(8, (2, 3))  # raster (h, w)
    col = sincos_1d(4, 3, base_length=2)  # w positions are rescaled to the base size (= H)
    row = sincos_1d(4, 2)
    torch.testing.assert_close(table[:3, :4], col, rtol=0, atol=1e-6)  # first row: columns vary
    torch.testing.assert_close(table[::3, 4:], row, rtol=0, atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="positions"):
        RotaryEmbedding(8)(torch.zeros(3))
    with pytest.raises(ValueError, match="grid"):
        Rope3D(24)((2, 3))
    with pytest.raises(ValueError, match="x: expected"):
        RotaryEmbedding(8)(torch.arange(3)).apply(torch.randn(1, 1, 4, 8))


def test_sincos_3d_is_the_literal_table_of_frame_row_and_column():
    # dim 12 splits (4, 4, 4); each part is [sin(p), sin(p / 100), cos(p), cos(p / 100)] (omega = 10000^(-i/2))
    table = sincos_3d(12, (2, 3, 4))
    assert table.shape == (24, 12)

    def part(p):
        return [math.sin(p), math.sin(p / 100), math.cos(p), math.cos(p / 100)]
    for t in range(2):
        for h in range(3):
            for w in range(4):
                want = torch.tensor(part(t) + part(h) + part(w))
                torch.testing.assert_close(table[(t * 3 + h) * 4 + w], want, rtol=0, atol=1e-6)
    for dim in (15, 4):  # splits (7, 4, 4) and (4, 0, 0)
        with pytest.raises(ValueError, match="dim"):
            sincos_3d(dim, (2, 3, 4))
    with pytest.raises(ValueError, match="grid"):
        sincos_3d(12, (2, 3))
