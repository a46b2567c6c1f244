"""``veil bench lm`` run tiny: the logits check holds, the local layers' caches stay flat while the global ones grow
with the context (both implementations), and the CLI writes its section."""

import pytest
import torch

from veil.bench import lm
from veil.cli.main import main

TINY = dict(context=96, window=16, decode_tokens=3, repeats=1, check_tokens=40, memory_contexts=(32, 96, 192),
            chunk=64)


def test_tiny_run_checks_logits_and_shows_flat_local_caches():
    cfg = lm.quick(**TINY, threads=1)
    before = torch.get_num_threads()
    res = lm.run(cfg, log=lambda line: None)
    assert torch.get_num_threads() == before  # the run's thread setting does not leak
    assert len(res.check) == 3 and all(d <= 1e-4 for d in res.check.values()), res.check
    assert res.logit_scale > 0.05  # the check compares logits that are not all ~0
    assert [r.impl for r in res.speed] == ["veil", "hf"]
    assert all(r.prefill_tok_s > 0 and r.decode_tok_s > 0 and r.prefill_peak_mib > 0 for r in res.speed)
    kv_bytes = 2 * cfg.kv_heads * cfg.head_dim * 4  # k and v of one token, fp32
    for impl in lm.IMPLS:
        rows = [r for r in res.cache if r.impl == impl]
        assert [r.context for r in rows] == [32, 96, 192]
        assert rows[0].global_bytes == 32 * kv_bytes and rows[2].global_bytes == 192 * kv_bytes  # grows
        assert len({r.local_bytes for r in rows[1:]}) == 1  # flat once past the window
    veil_local = [r.local_bytes for r in res.cache if r.impl == "veil"]
    assert veil_local == [16 * kv_bytes] * 3  # window slots, allocated up front
    text = lm.tables(res)
    assert "| veil / hf |" in text and "| hf | 192 |" in text


def test_config_is_checked():
    with pytest.raises(ValueError, match="window: expected a positive int, got 0"):
        lm.Config(window=0)
    with pytest.raises(ValueError, match="threads: expected a positive int or None"):
        lm.Config(threads=0)
    with pytest.raises(ValueError, match="clock: expected .cpu. or .wall., got .gpu."):
        lm.Config(clock="gpu")
    assert lm.Config(layers=6, global_every=3).layer_types == ["sliding_attention", "sliding_attention",
                                                               "full_attention"] * 2


def test_cli_writes_its_section(tmp_path, capsys):
    doc = tmp_path / "bench.md"
    argv = ["bench", "lm", "--quick", "--context", "64", "--window", "16", "--decode-tokens", "2", "--repeats", "1",
            "--memory-contexts", "32", "64", "--chunk", "32", "--output", str(doc)]
    assert main(argv) == 0
    text = doc.read_text()
    assert text.count("<!-- veil bench lm-quick -->") == 1
    assert "Command: `veil bench lm --quick --context 64" in text and "1 torch threads" in text
    assert "CPU time of the process" in text
    assert "| veil | 64 |" in text
    assert "replaced the section 'lm --quick'" in capsys.readouterr().out
