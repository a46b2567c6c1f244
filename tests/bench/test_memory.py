"""The CPU peak-memory measure sees an N x N tensor, and counts what is live at once, not every allocation."""

import torch

from veil.bench.memory import peak_bytes

MIB = 2**20


def test_peak_sees_an_n_by_n_tensor():
    x = torch.randn(512, 64)
    peak = peak_bytes(lambda: (x @ x.T).sum(), "cpu")  # a 512 x 512 fp32 score matrix = 1 MiB
    assert MIB <= peak < MIB + 4096


def test_peak_is_the_most_held_at_once():
    def two_in_turn():
        a = torch.ones(512, 512)
        del a
        return torch.ones(512, 512)

    def two_together():
        a = torch.ones(512, 512)
        return a + 1

    assert MIB <= peak_bytes(two_in_turn, "cpu") < 1.5 * MIB
    assert 2 * MIB <= peak_bytes(two_together, "cpu") < 2.5 * MIB
