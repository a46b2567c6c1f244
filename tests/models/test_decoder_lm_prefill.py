"""Chunked prefill of DecoderLM: feeding the prompt a chunk at a time through the cache gives Hugging Face's
logits (one full forward), for chunks shorter and longer than the sliding window, with left padding too."""

import pytest
import torch

from tests.models.test_decoder_lm import MODELS, N, V, W, _left_padded
from veil.models import DecoderLM

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
@pytest.mark.parametrize("family", MODELS)
@pytest.mark.parametrize("chunk", [3, W + 3])  # shorter and longer than the window; 19 = 6 * 3 + 1 ragged tail
def test_chunked_prefill_then_decoding_matches_hf(family, chunk):
    hf = MODELS[family]()
    ours = DecoderLM.from_transformers(hf)
    ids = torch.randint(0, V, (2, N), generator=torch.Generator().manual_seed(7))
    want = hf(ids).logits  # (2, N, V)
    prompt = 19
    cache = ours.new_cache(2, N)
    last = ours.prefill(ids[:, :prompt], None, cache, chunk_size=chunk)
    assert cache.length == prompt and torch.equal(cache.next_position, torch.full((2,), prompt))
    got = [last[:, None]] + [ours.decode_step(ids[:, t], cache)[:, None] for t in range(prompt, N)]
    assert (torch.cat(got, dim=1) - want[:, prompt - 1:]).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("family", MODELS)
def test_chunked_prefill_with_left_padding_matches_hf(family):
    hf = MODELS[family]()
    ours = DecoderLM.from_transformers(hf)
    ids, mask = _left_padded([N, 17, 6], N)  # sample 2's first chunks are all padding
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    want = hf(ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    cache = ours.new_cache(3, N)
    got = ours.prefill(ids, mask, cache, chunk_size=5)
    assert (got - want).abs().max() <= 1e-4
    assert torch.equal(cache.next_position, torch.tensor([N, 17, 6]))


def test_chunk_size_is_checked():
    ours = DecoderLM.from_transformers(MODELS["gemma2"](layers=2))
    cache = ours.new_cache(1, 8)
    with pytest.raises(ValueError, match="chunk_size: expected a positive int, got 0"):
        ours.prefill(torch.zeros(1, 4, dtype=torch.long), None, cache, chunk_size=0)
    assert cache.length == 0
