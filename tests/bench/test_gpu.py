"""``veil bench gpu`` on a machine without CUDA: a one-line error; its section format; the flash-attn check."""

import subprocess
import sys
import types

import torch

from veil.attention.backends import varlen
from veil.bench import attention, gpu


def test_without_cuda_it_says_so_in_one_line():
    if torch.cuda.is_available():  # pragma: no cover - GPU machines run the real thing
        return
    proc = subprocess.run([sys.executable, "-m", "veil.cli.main", "bench", "gpu", "--no-write"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr


def test_section_names_the_device_tests_and_tables():
    row = attention.Row("causal", "1024", "sdpa", 0.5, ms=1.0, speedup=2.0)
    result = gpu.Result("NVIDIA H200", "12 passed in 30s", True, "not installed", [("forward", [row])], 42.0)
    text = gpu.section(result, "veil bench gpu")
    assert text.startswith("<!-- veil bench gpu -->") and text.endswith("<!-- /veil bench gpu -->")
    assert "NVIDIA H200" in text.splitlines()[1] and "12 passed" in text and "| causal | 1024 | sdpa |" in text


def test_flash_attn_version_check(monkeypatch):
    monkeypatch.setattr(varlen, "flash_attn", types.SimpleNamespace(__version__="2.7.4.post1"))
    assert varlen.flash_attn_status().startswith("installed 2.7.4.post1, used")
    monkeypatch.setattr(varlen, "flash_attn", types.SimpleNamespace(__version__="2.5.0"))
    assert "not used" in varlen.flash_attn_status()
    monkeypatch.setattr(varlen, "flash_attn", None)
    assert varlen.flash_attn_status().startswith("not installed")
