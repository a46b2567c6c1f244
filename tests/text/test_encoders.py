import pytest
import torch

from veil.text import HFTextEncoder, TextEncoder, encode_pair


@pytest.fixture(scope="module")
def encoder(tiny_t5, bert_tokenizer):
    return HFTextEncoder(model=tiny_t5, tokenizer=bert_tokenizer, id="tiny-t5")


def _alone(encoder, text):
    """The model run on one prompt with no padding: the oracle for every batched row."""
    ids = encoder.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return encoder.model(input_ids=ids).last_hidden_state[0]


def test_batch_rows_equal_each_prompt_alone(encoder):
    prompts = ["a red circle moving left", "hi", "a crimson disc slides leftward on a dark background"]
    emb, lengths = encoder.encode(prompts)
    assert isinstance(encoder, TextEncoder) and encoder.dim == 16
    assert emb.shape == (3, int(lengths.max()), 16) and lengths.dtype == torch.long
    for i, p in enumerate(prompts):
        alone = _alone(encoder, p)
        assert int(lengths[i]) == alone.shape[0]
        torch.testing.assert_close(emb[i, : lengths[i]], alone, atol=1e-5, rtol=1e-5)
        assert torch.all(emb[i, lengths[i]:] == 0)


def test_weighting_scales_only_the_weighted_tokens(encoder):
    plain, n = encoder.encode(["a red ball and a reddish square"])
    weighted, m = encoder.encode(["a (red ball:1.5) and a (reddish:0.5) square"])
    assert torch.equal(n, m)
    tokens = encoder.tokenizer.convert_ids_to_tokens(encoder.tokenizer("a red ball and a reddish square")["input_ids"])
    assert tokens == ["[CLS]", "a", "red", "ball", "and", "a", "reddish", "square", "[SEP]"]
    expected = torch.tensor([1, 1, 1.5, 1.5, 1, 1, 0.5, 1, 1])
    torch.testing.assert_close(weighted[0], plain[0] * expected[:, None], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(weighted[0, 2], plain[0, 2])


def test_encode_pair_unequal_lengths(encoder):
    emb, lengths = encode_pair(encoder, ["a red circle moving left", "a ball"], "blurry")
    assert emb.shape[0] == 4 and lengths.tolist() == [7, 4, 4, 4]  # "blurry" is "blur" "##ry"
    for i, p in enumerate(["a red circle moving left", "a ball", "blurry", "blurry"]):
        torch.testing.assert_close(emb[i, : lengths[i]], _alone(encoder, p), atol=1e-5, rtol=1e-5)
        assert torch.all(emb[i, lengths[i]:] == 0)
    e2, l2 = encoder.encode_pair(["x"])  # no negative: the empty prompt
    assert l2.tolist() == [3, 2]
    with pytest.raises(ValueError, match="negative_prompts"):
        encode_pair(encoder, ["a", "b"], ["c"])


def test_load_by_name_from_a_local_directory(tmp_path, tiny_t5, bert_tokenizer):
    # the Hub code path (AutoTokenizer + AutoModelForTextEncoding), on files saved here: no download
    tiny_t5.save_pretrained(tmp_path)
    bert_tokenizer.save_pretrained(tmp_path)
    enc = HFTextEncoder(str(tmp_path), local_files_only=True, max_length=5)
    assert type(enc.model).__name__ == "T5EncoderModel" and enc.id == f"hf:{tmp_path}:5"
    emb, lengths = enc.encode(["a red circle moving left", "a"])
    assert lengths.tolist() == [5, 3]  # truncated to max_length
    ref, _ = HFTextEncoder(model=tiny_t5, tokenizer=bert_tokenizer, id="x").encode(["a"])
    torch.testing.assert_close(emb[1, :3], ref[0], atol=1e-6, rtol=1e-6)


def test_bad_arguments(tiny_t5, bert_tokenizer):
    with pytest.raises(ValueError, match="name / model"):
        HFTextEncoder()
    with pytest.raises(ValueError, match="id"):
        HFTextEncoder(model=tiny_t5, tokenizer=bert_tokenizer)
    enc = HFTextEncoder(model=tiny_t5, tokenizer=bert_tokenizer, id="t")
    with pytest.raises(ValueError, match="prompts"):
        enc.encode([])
    with pytest.raises(TypeError, match="prompts"):
        enc.encode([1, 2])
