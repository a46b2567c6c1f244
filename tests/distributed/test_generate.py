"""Sampling sequence-parallel: the shipped text-to-video pipeline (a pair of experts) under 2 processes makes one
process's video, and ``veil generate --sp 2`` under torchrun writes it."""

from __future__ import annotations

import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import veil.distributed as vd
from veil.cli.main import main
from veil.models import TimestepExperts
from veil.pipelines import TextToVideo, default_checkpoint

pytestmark = pytest.mark.skipif(not default_checkpoint().is_file(), reason="the shipped checkpoint is missing")
PROMPT = "a red circle moving right"


def _video(mode: dict) -> torch.Tensor:
    pipe = TextToVideo.from_checkpoint().enable_sequence_parallel(**mode)
    return pipe([PROMPT], steps=3, seed=5)


def test_pipeline_under_two_processes_makes_the_one_process_video():
    pipe = TextToVideo.from_checkpoint()
    # the shipped pair of experts: of the 3 steps per stage, the last runs on the low-noise expert (timestep 714)
    assert isinstance(pipe.model, TimestepExperts) and pipe.model.threshold == 850.0
    want = pipe([PROMPT], steps=3, seed=5)
    for mode in (dict(ulysses=2), dict(ring=2)):
        for video in vd.spawn(_video, 2, mode, timeout=300):
            assert video.shape == want.shape
            assert float((video - want).abs().max()) <= 1e-4, mode


def test_veil_generate_sp_under_torchrun(tmp_path):
    one, two = tmp_path / "one.gif", tmp_path / "two.gif"
    assert main(["generate", PROMPT, "-o", str(one), "--steps", "3", "--seed", "5"]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "veil.cli.main", "generate", PROMPT, "-o", str(two), "--steps", "3", "--seed", "5", "--sp", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("frames of") == 1  # rank 0 alone reports and writes
    a, b = iio.imread(one, index=None).astype(int), iio.imread(two, index=None).astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_generate_sp_without_torchrun_is_a_one_line_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["generate", PROMPT, "-o", str(tmp_path / "x.gif"), "--sp", "2"])
    assert e.value.code == 2
    assert "--sp: expected the number of processes torchrun started (1), got 2" in capsys.readouterr().err
