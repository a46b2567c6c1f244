import os

import pytest
import torch

from veil.text import CachedTextEncoder, pad_embeddings


class CountingEncoder:
    """Embeds prompt i as rows (len(word), word index, id) per word: easy to check, counts every prompt it sees."""

    id = "counting-v1"
    dim = 3

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, prompts):
        self.calls.append(list(prompts))
        rows = [torch.tensor([[float(len(w)), float(j), 7.0] for j, w in enumerate(p.split() or ["."])])
                for p in prompts]
        return pad_embeddings(rows)


def test_repeated_prompts_are_not_re_encoded(tmp_path):
    inner = CountingEncoder()
    cache = CachedTextEncoder(inner, tmp_path)
    emb, lengths = cache.encode(["a red ball", "hi", "a red ball"])
    assert inner.calls == [["a red ball", "hi"]]  # the duplicate is encoded once
    ref, ref_len = inner.encode(["a red ball", "hi", "a red ball"])
    assert torch.equal(emb, ref) and torch.equal(lengths, ref_len)
    emb2, lengths2 = cache.encode(["hi", "new words here too"])
    assert inner.calls[-2] == ["a red ball", "hi", "a red ball"] and inner.calls[-1] == ["new words here too"]
    assert lengths2.tolist() == [1, 4] and torch.all(emb2[0, 1:] == 0)
    assert (cache.hits, cache.misses) == (1, 3)
    # a new cache object on the same directory (a new process) hits the files
    again = CachedTextEncoder(CountingEncoder(), tmp_path)
    e3, _ = again.encode(["a red ball", "new words here too"])
    assert again.encoder.calls == [] and again.hits == 2
    assert torch.equal(e3[0, :3], ref[0, :3])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temporary file left behind


def test_keyed_by_encoder_id_and_corrupt_files_are_rewritten(tmp_path):
    a = CachedTextEncoder(CountingEncoder(), tmp_path)
    a.encode(["a ball"])
    other = CountingEncoder()
    other.id = "counting-v2"
    b = CachedTextEncoder(other, tmp_path)
    b.encode(["a ball"])
    assert other.calls == [["a ball"]] and a.path("a ball") != b.path("a ball")
    a.path("a ball").write_bytes(b"not a safetensors file")
    fresh = CachedTextEncoder(CountingEncoder(), tmp_path)
    emb, _ = fresh.encode(["a ball"])
    assert fresh.encoder.calls == [["a ball"]] and emb[0, 1].tolist() == [4.0, 1.0, 7.0]
    assert CachedTextEncoder(CountingEncoder(), tmp_path).encode(["a ball"])[0].shape == (1, 2, 3)


def test_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = CachedTextEncoder(CountingEncoder(), tmp_path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.encode(["x"])
    assert os.listdir(tmp_path) == []


def test_rejects_a_non_encoder(tmp_path):
    with pytest.raises(TypeError, match="encoder"):
        CachedTextEncoder(object(), tmp_path)
