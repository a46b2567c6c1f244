import pytest
import torch

from veil.text.weighting import parse_weights, token_weights


def test_parse_weights():
    assert parse_weights("a (red:1.3) ball") == ("a red ball", [(2, 5, 1.3)])
    assert parse_weights("(big red:2) (ball: .5)!") == ("big red ball!", [(0, 7, 2.0), (8, 12, 0.5)])
    assert parse_weights("plain (not a weight) text") == ("plain (not a weight) text", [])
    assert parse_weights("") == ("", [])


@pytest.mark.parametrize("prompt, word", [("(red:-1)", "weight"), ("((red:1.2):1.1)", "nested")])
def test_parse_weights_errors(prompt, word):
    with pytest.raises(ValueError, match=word):
        parse_weights(prompt)


def test_token_weights():
    # tokens: [CLS] "a" "red" "##dish" "ball" [SEP] [PAD]
    offsets = torch.tensor([[0, 0], [0, 1], [2, 5], [5, 9], [10, 14], [0, 0], [0, 0]])
    w = token_weights(offsets, [(2, 9, 1.5)])
    assert w.tolist() == [1.0, 1.0, 1.5, 1.5, 1.0, 1.0, 1.0]
