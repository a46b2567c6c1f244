"""Conditioning: diffusers' timestep sinusoid and embedding, adaLN-Zero identity at init, in-attention placements."""

import pytest
import torch
from diffusers.models.embeddings import TimestepEmbedding as DiffusersTimestepEmbedding
from diffusers.models.embeddings import get_timestep_embedding

from veil.layers import (
    AdaLNZero,
    Attention,
    InAttentionCondition,
    LayerNorm,
    TimestepEmbedding,
    gate,
    modulate,
    timestep_sinusoid,
)


@pytest.mark.parametrize("flip,shift,dim", [(True, 0.0, 256), (False, 1.0, 32), (True, 1.0, 33), (False, 0.0, 7)])
def test_sinusoid_matches_diffusers(flip, shift, dim):
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    want = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    torch.testing.assert_close(timestep_sinusoid(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift), want,
                               rtol=0, atol=0)


def test_timestep_embedding_matches_diffusers_on_same_weights():
    torch.manual_seed(0)
    theirs = DiffusersTimestepEmbedding(64, 32)
    ours = TimestepEmbedding(32, freq_dim=64)
    ours.load_state_dict(theirs.state_dict())  # linear_1, linear_2
    t = torch.tensor([3.0, 500.0])
    want = theirs(get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0))
    torch.testing.assert_close(ours(t), want, rtol=0, atol=1e-6)


def test_modulate_and_gate_by_hand():
    x = torch.randn(2, 3, 4).to(torch.bfloat16)
    shift, scale, g = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    want = (x.float() * (1 + scale[:, None]) + shift[:, None]).to(torch.bfloat16)
    torch.testing.assert_close(modulate(x, shift, scale), want, rtol=0, atol=0)
    branch = torch.randn(2, 3, 4)
    torch.testing.assert_close(gate(x, branch, g), (x.float() + branch * g[:, None]).to(torch.bfloat16), rtol=0, atol=0)
    per_token = torch.randn(2, 3, 4)  # Wan 2.2 per-token modulation
    torch.testing.assert_close(modulate(x, per_token, per_token),
                               (x.float() * (1 + per_token) + per_token).to(torch.bfloat16), rtol=0, atol=0)
    with pytest.raises(ValueError, match="shift"):
        modulate(x, torch.randn(2, 5), scale)


def _dit_block(x, c, ada, norm1, attn, norm2, mlp):
    (s1, sc1, g1), (s2, sc2, g2) = ada(c)
    x = gate(x, attn(modulate(norm1(x), s1, sc1)), g1)
    return gate(x, mlp(modulate(norm2(x), s2, sc2)), g2)


def test_adaln_zero_fresh_block_is_identity():
    torch.manual_seed(0)
    dim, cond = 16, 8
    ada = AdaLNZero(dim, cond)
    norm1, norm2 = LayerNorm(dim, affine=False), LayerNorm(dim, affine=False)
    attn = Attention(dim, heads=2, bias=True)
    mlp = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.GELU(), torch.nn.Linear(32, dim))
    x, c = torch.randn(2, 6, dim), torch.randn(2, cond)
    mods = ada(c)
    assert len(mods) == 2 and all(t.shape == (2, dim) and not t.any() for m in mods for t in m)
    torch.testing.assert_close(_dit_block(x, c, ada, norm1, attn, norm2, mlp), x, rtol=0, atol=0)
    # once trained (non-zero weights) the block is no longer the identity, and the chunks are in DiT's order
    with torch.no_grad():
        ada.linear.bias.copy_(torch.arange(6 * dim, dtype=torch.float32))
    (s1, sc1, g1), (s2, sc2, g2) = ada(c)
    assert s1[0, 0] == 0 and sc1[0, 0] == dim and g1[0, 0] == 2 * dim and g2[0, -1] == 6 * dim - 1
    assert not torch.allclose(_dit_block(x, c, ada, norm1, attn, norm2, mlp), x)


def test_in_attention_condition_placements():
    torch.manual_seed(0)
    x, z = torch.randn(2, 5, 8), torch.randn(2, 3)
    norm = LayerNorm(8, affine=False)
    post = InAttentionCondition(8, 3, "post_norm")
    pre = InAttentionCondition(8, 3, "pre_norm")
    pre.load_state_dict(post.state_dict())
    c = post.project(z)
    assert c.shape == (2, 1, 8)
    proj = z @ post.proj.weight.T + post.proj.bias
    torch.testing.assert_close(post(x, c, norm), norm(x) + proj[:, None])
    torch.testing.assert_close(pre(x, c, norm), norm(x + proj[:, None]))
    assert not torch.allclose(post(x, c, norm), pre(x, c, norm))
    # no projection when the widths agree
    same = InAttentionCondition(8)
    assert isinstance(same.proj, torch.nn.Identity)
    z8 = torch.randn(2, 8)
    torch.testing.assert_close(same(x, same.project(z8), norm), norm(x) + z8[:, None])
    with pytest.raises(ValueError, match="placement"):
        InAttentionCondition(8, placement="after")
    with pytest.raises(ValueError, match="z: expected"):
        post.project(torch.randn(2, 8))
