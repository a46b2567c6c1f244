"""EMA with hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from veil.training import EMA


def _model(w: float, b: float) -> nn.Module:
    m = nn.Linear(1, 1)
    m.register_buffer("count", torch.tensor(0.0))
    with torch.no_grad():
        m.weight.fill_(w)
        m.bias.fill_(b)
    return m


def _set(m: nn.Module, w: float, b: float, count: float = 0.0) -> None:
    with torch.no_grad():
        m.weight.fill_(w)
        m.bias.fill_(b)
        m.count.fill_(count)


def test_first_update_copies_then_decays():
    m = _model(5.0, -1.0)
    ema = EMA(m, decay=0.5)
    _set(m, 1.0, 2.0, 7.0)
    assert ema.current_decay() == 0.0
    ema.update(m)  # copy: 1, 2 (not an average with the init 5, -1)
    assert ema.shadow["weight"].item() == 1.0 and ema.shadow["bias"].item() == 2.0
    assert ema.buffers["count"].item() == 7.0
    _set(m, 3.0, 4.0, 8.0)
    ema.update(m)  # 0.5 * 1 + 0.5 * 3 = 2; 0.5 * 2 + 0.5 * 4 = 3
    assert ema.shadow["weight"].item() == 2.0 and ema.shadow["bias"].item() == 3.0
    assert ema.buffers["count"].item() == 8.0  # buffers are copied, not averaged
    _set(m, 6.0, 0.0)
    ema.update(m)  # 0.5 * 2 + 0.5 * 6 = 4; 0.5 * 3 + 0 = 1.5
    assert ema.shadow["weight"].item() == 4.0 and ema.shadow["bias"].item() == 1.5
    assert ema.num_updates == 3


def test_default_decay_and_warmup():
    m = _model(0.0, 0.0)
    ema = EMA(m)
    assert ema.decay == 0.9999
    ema.update(m)
    _set(m, 1.0, 1.0)
    ema.update(m)
    assert ema.shadow["weight"].item() == pytest.approx(1e-4, rel=1e-4)  # 0.9999 * 0 + 0.0001 * 1
    w = EMA(m, decay=0.9, warmup=True)
    w.update(m)  # copy
    assert w.current_decay() == pytest.approx(2 / 11)  # (1 + 1) / (10 + 1)
    _set(m, 12.0, 0.0)
    w.update(m)  # 2/11 * 1 + 9/11 * 12 = 110 / 11 = 10
    assert w.shadow["weight"].item() == pytest.approx(10.0)
    w.num_updates = 1000
    assert w.current_decay() == 0.9  # the cap


def test_copy_to_average_parameters_and_state_roundtrip():
    m = _model(1.0, 1.0)
    ema = EMA(m, decay=0.5)
    ema.update(m)
    _set(m, 3.0, 5.0)
    ema.update(m)  # 2, 3
    with ema.average_parameters(m):
        assert m.weight.item() == 2.0 and m.bias.item() == 3.0
    assert m.weight.item() == 3.0 and m.bias.item() == 5.0
    other = EMA(_model(0.0, 0.0), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 2 and other.shadow["weight"].item() == 2.0
    bf = _model(0.0, 0.0).to(torch.bfloat16)
    ema.copy_to(bf)
    assert bf.weight.dtype == torch.bfloat16 and bf.weight.item() == 2.0


def test_errors():
    with pytest.raises(ValueError, match="decay"):
        EMA(_model(0, 0), decay=1.0)
    ema = EMA(_model(0, 0))
    with pytest.raises(ValueError, match="model"):
        ema.update(nn.Linear(2, 2, bias=False))
    with pytest.raises(ValueError, match="ema state"):
        ema.load_state_dict(EMA(nn.Linear(1, 1, bias=False)).state_dict())
