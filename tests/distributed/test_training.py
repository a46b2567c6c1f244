"""Training on several processes (DDP, FSDP2, sequence parallel inside data parallel) gives one process's losses;
a rank killed after a sharded checkpoint, then ``--resume auto``, continues with the same losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import veil.distributed as vd
from veil.training.t2v import load_config, train_t2v

TOL = 1e-5
STEPS = 20


def _train(out: str, overrides: list[str]) -> int:
    train_t2v(load_config("micro-t2v", None, overrides), out, progress=False, log=lambda *a: None)
    return dist.get_rank() if dist.is_initialized() else 0


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _base(tmp_path: Path) -> list[str]:
    # text dropout 0.5 and a batch of 4 make every random draw of the step matter
    return [f"steps={STEPS}", "batch_size=4", "checkpoint_every=10", f"cache_dir={tmp_path / 'cache'}",
            "text_dropout=0.5", "log_every=1"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("one")
    base = _base(tmp)
    vd.spawn(_train, 1, str(tmp / "run"), base, timeout=300)
    return tmp / "run", base


@pytest.mark.parametrize("name, nprocs, extra", [
    ("ddp", 2, ["dp=ddp"]),
    ("fsdp", 2, ["dp=fsdp"]),
    ("sp2", 2, ["sp=2"]),  # one data-parallel group of two sequence-parallel ranks
    ("sp2_zigzag", 2, ["sp=2", "sp_layout=zigzag", "dp=fsdp"]),
    ("fsdp_sp2_x2", 4, ["dp=fsdp", "sp=2"]),  # two data-parallel groups of two sequence-parallel ranks
])
def test_several_processes_train_with_the_losses_of_one(one_process, tmp_path, name, nprocs, extra):
    ref_run, base = one_process
    run = tmp_path / name
    assert vd.spawn(_train, nprocs, str(run), base + extra, timeout=400) == list(range(nprocs))
    want, got = _losses(ref_run), _losses(run)
    assert list(got) == list(range(1, STEPS + 1))
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst <= TOL, f"{name}: losses differ by {worst}"
    # sharded checkpoints every 10 steps, complete, and one exported file of EMA weights equal to one process's
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000010.dcp", "step-00000020.dcp"]
    assert (run / "checkpoints" / "step-00000020.dcp" / "veil.json").is_file()
    a, b = load_file(str(ref_run / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= 1e-4


@pytest.mark.parametrize("name, extra", [("ddp", ["dp=ddp"]), ("fsdp", ["dp=fsdp"]), ("sp2", ["sp=2"])])
def test_compiled_training_on_two_processes_has_the_losses_of_one(one_process, tmp_path, name, extra):
    ref_run, base = one_process
    run = tmp_path / name
    assert vd.spawn(_train, 2, str(run), base + extra + ["compile=true"], timeout=400) == [0, 1]
    want, got = _losses(ref_run), _losses(run)
    assert list(got) == list(range(1, STEPS + 1))
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst <= 1e-4, f"{name}: compiled losses differ by {worst}"  # compiled kernels round differently


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _torchrun(run: Path, base: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "veil.cli.main", "train", "--preset", "micro-t2v", "--no-progress", "--out", str(run), *base, *extra]


def test_torchrun_kill_a_rank_after_a_checkpoint_then_resume_auto(one_process, tmp_path):
    ref_run, base = one_process
    base = [b for b in base if not b.startswith("steps=")] + ["steps=60"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun(run, base), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        first = run / "checkpoints" / "step-00000010.dcp" / "veil.json"
        while time.monotonic() < deadline and proc.poll() is None and not first.is_file():
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)  # rank 1 (or 0: either must do) dies without warning
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert not (run / "model.safetensors").exists()
    done = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".dcp"))
    assert done and all((run / "checkpoints" / d / "veil.json").is_file() for d in done)
    resumed = subprocess.run(_torchrun(run, base, "--resume", "auto"), capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and f"step {done[-1][5:13].lstrip('0')}" in resumed.stdout
    got = _losses(run)
    assert list(got) == list(range(1, 61))
    # the same 60 steps in one uninterrupted process
    full = tmp_path / "full"
    vd.spawn(_train, 1, str(full), base, timeout=300)
    want = _losses(full)
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst <= TOL, f"losses after the kill and resume differ by {worst}"


def _bad(overrides: list[str]) -> str:
    try:
        train_t2v(load_config("micro-t2v", None, overrides), "/nonexistent/never", progress=False,
                  log=lambda *a: None)
    except ValueError as e:
        return str(e)
    return "no error"


def test_bad_parallel_settings_are_clear_errors_on_every_rank(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    assert all("sp: 3 does not divide the 2 processes" in m for m in vd.spawn(_bad, 2, [cache, "sp=3"]))
    assert all("batch_size: the global batch 3 does not divide by the 2 data-parallel" in m
               for m in vd.spawn(_bad, 2, [cache, "batch_size=3"]))
    with pytest.raises(ValueError, match="dp: expected 'ddp' or 'fsdp'"):
        load_config("micro-t2v", None, ["dp=zero3"]).train_config(None, None)


def _start_weights(mode: str) -> bool:
    from tests.diffusion.nets import TinyDenoiser
    from veil.diffusion import FlowMatching
    from veil.training import TrainConfig, Trainer
    from veil.training.distributed import full_state

    torch.manual_seed(100 + dist.get_rank())  # a model built outside the trainer, differently on each rank
    model = TinyDenoiser()
    torch.manual_seed(100)
    rank0 = TinyDenoiser().state_dict()
    g = torch.Generator().manual_seed(0)
    data = [{"latents": torch.randn(4, 2, 3, 3, generator=g), "context": torch.randn(3, 8, generator=g)}
            for _ in range(4)]
    trainer = Trainer(model, FlowMatching(), data, TrainConfig(steps=1, batch_size=2, dp=mode, progress=False,
                                                               ema_decay=None, tensorboard=False))
    state = full_state(trainer.model, None)
    return state is None or all(torch.equal(state[k], rank0[k]) for k in rank0)


def test_every_rank_starts_from_rank_0s_weights():
    for mode in ("ddp", "fsdp"):
        assert vd.spawn(_start_weights, 2, mode) == [True, True], mode


def _moe_steps(mode: str) -> list[float]:
    from veil.diffusion import FlowMatching
    from veil.models import WanConfig, WanDiT, WanMoE
    from veil.training import TrainConfig, Trainer

    cfg = WanConfig(patch_size=(1, 2, 2), in_channels=4, out_channels=4, dim=32, heads=2, num_layers=2, ffn_dim=32,
                    text_dim=8, freq_dim=16, feed_forward="moe", moe=WanMoE(num_experts=8, top_k=1))
    g = torch.Generator().manual_seed(0)
    data = [{"latents": torch.randn(4, 2, 4, 4, generator=g), "context": torch.randn(3, 8, generator=g)}
            for _ in range(8)]
    trainer = Trainer(lambda: WanDiT(cfg), FlowMatching(), data,
                      TrainConfig(steps=3, batch_size=2, dp=mode, progress=False, tensorboard=False, seed=1))
    return trainer.train()


def test_mixture_of_experts_trains_data_parallel_with_experts_left_unused():
    # 8 experts, top-1, 8 tokens per rank: some experts get no token on a rank in a step
    want = vd.spawn(_moe_steps, 1, "ddp")[0]
    for mode in ("ddp", "fsdp"):
        for losses in vd.spawn(_moe_steps, 2, mode):
            assert len(losses) == 3 and max(abs(a - b) for a, b in zip(losses, want)) <= TOL, mode


def _expert_steps(mode: str) -> list[float]:
    from tests.diffusion.nets import TinyDenoiser
    from veil.diffusion import FlowMatching
    from veil.models import TimestepExperts
    from veil.training import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    data = [{"latents": torch.randn(4, 2, 3, 3, generator=g), "context": torch.randn(3, 8, generator=g)}
            for _ in range(8)]
    # boundary 0.5: with one sample per rank, each rank uses one expert per step and leaves the other unused
    trainer = Trainer(lambda: TimestepExperts(TinyDenoiser(), TinyDenoiser(), boundary=0.5), FlowMatching(), data,
                      TrainConfig(steps=4, batch_size=2, dp=mode, progress=False, tensorboard=False, seed=3))
    return trainer.train()


def _expert_steps_or_error(mode: str) -> list[float] | str:
    try:
        return _expert_steps(mode)
    except ValueError as e:
        return str(e)


def test_timestep_experts_train_data_parallel():
    want = vd.spawn(_expert_steps, 1, "ddp")[0]
    for losses in vd.spawn(_expert_steps, 2, "ddp"):  # DDP is told that a rank may leave an expert unused
        assert len(losses) == 4 and max(abs(a - b) for a, b in zip(losses, want)) <= TOL
    for message in vd.spawn(_expert_steps_or_error, 2, "fsdp"):
        assert "dp: 'fsdp' cannot shard TimestepExperts" in message
