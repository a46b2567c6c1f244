"""Feed-forward blocks against diffusers' FeedForward (Wan / Latte) and HF Gemma 3's MLP on the same weights."""

import pytest
import torch
from diffusers.models.attention import FeedForward
from transformers import Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP

from veil.layers import GEGLU, MLP, GatedMLP, SwiGLU


def test_gelu_mlp_matches_diffusers_feedforward():
    torch.manual_seed(0)
    theirs = FeedForward(16, inner_dim=40, activation_fn="gelu-approximate")
    ours = MLP(16, 40)
    with torch.no_grad():
        ours.fc1.weight.copy_(theirs.net[0].proj.weight)
        ours.fc1.bias.copy_(theirs.net[0].proj.bias)
        ours.fc2.weight.copy_(theirs.net[2].weight)
        ours.fc2.bias.copy_(theirs.net[2].bias)
    x = torch.randn(2, 5, 16) * 3
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    # the tanh approximation is what is used: exact GELU differs at this scale
    exact = MLP(16, 40, activation="gelu")
    exact.load_state_dict(ours.state_dict())
    assert not torch.allclose(exact(x), ours(x), atol=1e-5)


def test_geglu_matches_hf_gemma3_mlp():
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=16, intermediate_size=24, hidden_activation="gelu_pytorch_tanh")
    theirs = Gemma3MLP(cfg)
    ours = GEGLU(16, 24)
    ours.load_state_dict(theirs.state_dict())  # same names: gate_proj, up_proj, down_proj
    x = torch.randn(2, 5, 16) * 3
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_swiglu_by_hand():
    torch.manual_seed(0)
    m = SwiGLU(8, 12)
    x = torch.randn(3, 8)
    g, u = x @ m.gate_proj.weight.T, x @ m.up_proj.weight.T
    want = (g * torch.sigmoid(g) * u) @ m.down_proj.weight.T
    torch.testing.assert_close(m(x), want)
    assert m.gate_proj.bias is None


def test_bad_activation():
    with pytest.raises(ValueError, match="activation"):
        GatedMLP(4, 4, activation="swish")
    with pytest.raises(ValueError, match="hidden"):
        MLP(4, 0)
