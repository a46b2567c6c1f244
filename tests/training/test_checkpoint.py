"""safetensors checkpoints: round trips, atomic writes, auto resume, clear errors."""

from __future__ import annotations

import json
import os
import random
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.diffusion.nets import TinyDenoiser
from veil.training import EMA, find_latest, load_checkpoint, save_checkpoint
from veil.training.checkpoint import checkpoint_path, prune_checkpoints, resolve_resume


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyDenoiser(dropout=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    ema = EMA(model, decay=0.9)
    for _ in range(2):
        x = torch.randn(2, 4, 2, 3, 3)
        loss = model(x, torch.tensor([10.0, 500.0]), torch.randn(2, 3, 8), torch.tensor([3, 1])).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
    return model, opt, ema


def test_round_trip_restores_everything(tmp_path):
    model, opt, ema = _trained()
    gen = torch.Generator().manual_seed(123)
    gen.manual_seed(123)
    torch.rand(3, generator=gen)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    path = save_checkpoint(tmp_path / "ck" / "a.safetensors", step=7, model=model, ema=ema, optimizer=opt,
                           scaler=scaler, generators={"noise": gen}, config={"lr": 0.01, "betas": (0.8, 0.95)},
                           extra={"sampler": {"epoch": 2, "position": 5}})
    after = (torch.rand(4), np.random.rand(3), random.random(), torch.rand(2, generator=gen))

    model2, opt2, ema2 = _trained(seed=1)
    gen2, scaler2 = torch.Generator().manual_seed(0), torch.amp.GradScaler("cpu")
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    ck = load_checkpoint(path, model=model2, ema=ema2, optimizer=opt2, scaler=scaler2, generators={"noise": gen2})
    assert ck.step == 7 and ck.config == {"lr": 0.01, "betas": (0.8, 0.95)}
    assert ck.extra == {"sampler": {"epoch": 2, "position": 5}}
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert all(torch.equal(ema.shadow[k], ema2.shadow[k]) for k in ema.shadow) and ema2.num_updates == 2
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"] and s2["param_groups"][0]["betas"] == (0.8, 0.95)
    for pid in s1["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(s1["state"][pid][key], s2["state"][pid][key])
    assert scaler2.get_scale() == 1024.0
    # the RNG streams continue where they were at save time
    assert torch.equal(torch.rand(4), after[0])
    assert np.array_equal(np.random.rand(3), after[1])
    assert random.random() == after[2]
    assert torch.equal(torch.rand(2, generator=gen2), after[3])


def test_file_is_plain_safetensors_written_atomically(tmp_path, monkeypatch):
    model, opt, ema = _trained()
    path = save_checkpoint(tmp_path / "step-00000001.safetensors", step=1, model=model, optimizer=opt, ema=ema)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])  # no pickle anywhere: a JSON header and raw tensor bytes
    assert header["__metadata__"]["veil_checkpoint"] == "1" and header["__metadata__"]["step"] == "1"
    with safe_open(str(path), "pt") as f:
        assert "model.inp.weight" in f.keys() and "optim.0.exp_avg" in f.keys() and "rng.torch" in f.keys()
        assert f.get_tensor("rng.torch").dtype == torch.uint8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001.safetensors"]

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, step=2, model=model)
    # the old file is intact and no temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001.safetensors"]
    assert load_checkpoint(path, model=model, restore_rng=False).step == 1


def test_corrupt_and_foreign_files_raise_clear_errors(tmp_path):
    model, _, _ = _trained()
    good = save_checkpoint(tmp_path / "good.safetensors", step=3, model=model)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"truncated\.safetensors.*not a readable safetensors"):
        load_checkpoint(truncated, model=model)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04not a checkpoint at all")
    with pytest.raises(ValueError, match=r"garbage\.safetensors.*not a readable safetensors"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match=r"foreign\.safetensors.*not a veil checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(ValueError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_mismatched_model_or_optimizer_names_the_file_and_the_problem(tmp_path):
    model, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "m.safetensors", step=3, model=model, optimizer=opt)
    wider = TinyDenoiser(hidden=24)
    with pytest.raises(ValueError, match=r"m\.safetensors.*does not fit the model.*shape mismatches.*inp\.weight"):
        load_checkpoint(path, model=wider)
    sigma = TinyDenoiser(learn_sigma=True)
    with pytest.raises(ValueError, match=r"m\.safetensors.*out\.weight: file \[4, 16, 3, 3, 3\] vs model \[8"):
        load_checkpoint(path, model=sigma)
    with pytest.raises(ValueError, match=r"m\.safetensors.*missing keys"):
        load_checkpoint(path, model=torch.nn.Sequential(torch.nn.Linear(2, 2)))
    small_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match=r"m\.safetensors"):
        load_checkpoint(path, optimizer=small_opt)
    with pytest.raises(ValueError, match=r"m\.safetensors.*no EMA state"):
        load_checkpoint(path, ema=EMA(model))


def test_find_latest_resume_auto_and_prune(tmp_path):
    model, _, _ = _trained()
    assert find_latest(tmp_path) is None and resolve_resume("auto", tmp_path) is None
    for step in (2, 10, 9):
        save_checkpoint(checkpoint_path(tmp_path, step), step=step, model=model)
    (tmp_path / ".step-00000011.safetensors.abc.tmp").write_bytes(b"partial")  # an interrupted write
    (tmp_path / "notes.txt").write_text("x")
    assert find_latest(tmp_path).name == "step-00000010.safetensors"
    assert resolve_resume("auto", tmp_path) == find_latest(tmp_path)
    with pytest.raises(ValueError, match="resume"):
        resolve_resume("auto", None)
    with pytest.raises(ValueError, match="resume"):
        resolve_resume(str(tmp_path / "nope.safetensors"), tmp_path)
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000009.safetensors", "step-00000010.safetensors"]


def test_resume_auto_refuses_the_other_kind_of_checkpoint(tmp_path):
    (tmp_path / "step-00000004.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="holds one-process checkpoints .step-00000004.safetensors. but no sharded"):
        resolve_resume("auto", tmp_path, sharded=True)
    assert resolve_resume("auto", tmp_path) == tmp_path / "step-00000004.safetensors"
    other = tmp_path / "other"
    (other / "step-00000006.dcp").mkdir(parents=True)
    assert resolve_resume("auto", other) is None  # incomplete (no veil.json): not a checkpoint
    (other / "step-00000006.dcp" / "veil.json").write_text("{}")
    with pytest.raises(ValueError, match="holds sharded checkpoints of a multi-process run .step-00000006.dcp."):
        resolve_resume("auto", other)
    assert resolve_resume("auto", other, sharded=True) == other / "step-00000006.dcp"
    assert resolve_resume("auto", tmp_path / "empty", sharded=True) is None
