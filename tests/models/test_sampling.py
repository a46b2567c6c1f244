"""Next-token processors against literal distributions and Hugging Face's logits warpers."""

import math

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from veil.models import filter_logits, next_token

NEG = float("-inf")


def test_top_k_and_top_p_on_a_literal_distribution():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]])
    assert torch.equal(torch.isfinite(filter_logits(logits, top_k=2)), torch.tensor([[True, True, False, False]]))
    # top_p=0.7: 0.5 alone is short of 0.7, 0.5 + 0.3 reaches it: two tokens kept
    assert torch.equal(torch.isfinite(filter_logits(logits, top_p=0.7)), torch.tensor([[True, True, False, False]]))
    # top_p=0.9: 0.95 with three tokens
    assert torch.equal(torch.isfinite(filter_logits(logits, top_p=0.9)), torch.tensor([[True, True, True, False]]))
    # top_p smaller than the largest probability still keeps one token
    assert torch.equal(torch.isfinite(filter_logits(logits, top_p=0.1)), torch.tensor([[True, False, False, False]]))
    # the order of the tokens does not matter
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(torch.isfinite(filter_logits(logits[:, perm], top_p=0.7)),
                       torch.tensor([[False, True, False, True]]))
    out = filter_logits(logits, temperature=2.0)
    torch.testing.assert_close(out, logits / 2.0)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 5, None), (1.3, None, 0.8), (1.0, 10, 0.6)])
def test_matches_hf_warpers(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 64, generator=g) * 3
    want = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k is not None:
        want = TopKLogitsWarper(top_k)(None, want)
    if top_p is not None:
        want = TopPLogitsWarper(top_p)(None, want)
    got = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    torch.testing.assert_close(got[torch.isfinite(got)], want[torch.isfinite(want)])


def test_next_token_greedy_and_sampling():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert next_token(logits).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([next_token(logits, do_sample=True, top_k=2, generator=g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 3}  # both of the top 2, never another
    assert set(draws[:, 1].tolist()) <= {0, 1, 2, 3} and (draws[:, 1] == 0).float().mean() > 0.9
    # seeded draws repeat
    a = next_token(logits, do_sample=True, generator=torch.Generator().manual_seed(3))
    b = next_token(logits, do_sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature: expected a float > 0, got 0.0"),
    ({"top_k": 0}, "top_k: expected None or an int >= 1, got 0"),
    ({"top_p": 1.5}, "top_p: expected None or a float in"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        filter_logits(torch.zeros(1, 4), **kwargs)
    with pytest.raises(ValueError, match="logits"):
        next_token(torch.zeros(4))
