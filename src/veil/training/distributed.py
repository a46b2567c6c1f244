"""Training on several processes: data parallelism (DDP or FSDP2), sequence parallelism inside it, sharded
checkpoints.

The world (``torchrun --nproc-per-node N``, one process per device) is cut into ``dp = world / sp`` data-parallel
groups of ``sp`` consecutive ranks. The ranks of one sequence-parallel group train on the same samples, each on
its shard of every sample's tokens (``model.enable_sequence_parallel``); the ``dp`` groups split every global
batch into equal parts. Gradients are averaged over the whole world by DDP (``DistributedDataParallel``) or
FSDP2 (``fully_shard`` on every block and the root, on an explicit device mesh); since an SP group's ranks hold
partial sums of one sample's gradient, the loss is scaled by ``sp`` before the backward so that the average is
the data-parallel mean of whole gradients.

Equality with one process: every rank draws the random numbers of the whole global batch (text dropout,
timesteps, noise) from the same generator and keeps its rows, so N processes with the same global batch train
on exactly what one process would; the losses agree up to the float rounding of the gradient reduction.

Checkpoints are directories ``step-XXXXXXXX.dcp/`` written by ``torch.distributed.checkpoint`` (each rank writes
its shards; nothing is gathered) into a temporary directory that rank 0 renames once every rank has finished and
``veil.json`` (step, sampler, generator, config) is in place: a run killed mid-write leaves no directory under a
checkpoint's name, and ``resume="auto"`` takes the latest complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from veil.distributed import enable_sequence_parallel
from veil.models.experts import TimestepExperts
from veil.training.ema import EMA

__all__ = ["Parallel", "load_sharded", "save_sharded", "setup_parallel", "unwrap"]

DataParallel = Literal["ddp", "fsdp"]


@dataclass
class Parallel:
    """Where this process stands in a multi-process run."""

    world: int
    rank: int
    dp: int
    dp_rank: int
    sp: int
    mode: DataParallel
    sp_group: Any  # the ProcessGroup of this rank's sequence-parallel group (None when sp == 1)
    mesh: Any = None  # the FSDP2 device mesh
    device: torch.device = torch.device("cpu")  # where collectives of plain values run (nccl: the GPU)
    layout: str = "contiguous"  # how the sequence-parallel groups split the tokens

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, global_batch: int) -> tuple[int, int]:
        """``(start, count)`` of this rank's rows of a global batch."""
        per = global_batch // self.dp
        return self.dp_rank * per, per

    def mean(self, value: float) -> float:
        """The mean of a per-rank float over the world (every rank calls it)."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world


def setup_parallel(mode: DataParallel, sp: int, batch_size: int, device: torch.device,
                   layout: str = "contiguous") -> Parallel | None:
    """The run's :class:`Parallel` when ``torch.distributed`` is initialised with more than one process.

    Raises:
        ValueError: ``mode`` or ``sp`` out of range, ``sp`` not dividing the world, or a global batch that does not
            divide by the data-parallel size.
    """
    if mode not in ("ddp", "fsdp"):
        raise ValueError(f"dp: expected 'ddp' or 'fsdp', got {mode!r}")
    if isinstance(sp, bool) or not isinstance(sp, int) or sp < 1:
        raise ValueError(f"sp: expected a positive int, got {sp!r}")
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        if sp > 1:
            raise ValueError(f"sp: {sp} needs {sp} processes or a multiple; launch with torchrun --nproc-per-node")
        return None
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % sp:
        raise ValueError(f"sp: {sp} does not divide the {world} processes")
    dp = world // sp
    if batch_size % dp:
        raise ValueError(f"batch_size: the global batch {batch_size} does not divide by the {dp} data-parallel "
                         f"groups (world {world} / sp {sp})")
    sp_group = None
    if sp > 1:
        first = (rank // sp) * sp
        sp_group = dist.new_group(list(range(first, first + sp)), use_local_synchronization=True)
    mesh = None
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (world,))
    return Parallel(world, rank, dp, rank // sp, sp, mode, sp_group, mesh, device, layout)


def wrap(model: nn.Module, par: Parallel, device: torch.device) -> nn.Module:
    """``model`` under sequence parallelism (when ``sp > 1``) and DDP or FSDP2.

    Raises:
        ValueError: ``sp > 1`` for a model without ``enable_sequence_parallel``.
    """
    if par.sp > 1:  # the model, or the models inside a wrapper (e.g. an x-prediction or expert wrapper)
        enable_sequence_parallel(model, par.sp_group, layout=par.layout)
    if par.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Wan 2.2's two experts: a rank whose samples all sit on one side of the boundary leaves the other expert
        # without gradients, which DDP must be told to expect
        unused = any(isinstance(m, TimestepExperts) for m in model.modules())
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=unused)
    from torch.distributed.fsdp import fully_shard

    if any(isinstance(m, TimestepExperts) for m in model.modules()):
        # a rank whose samples all go to one expert never runs the other's sharded blocks, so their gradient
        # collectives would be missing on that rank and pair up wrongly with the next ones
        raise ValueError("dp: 'fsdp' cannot shard TimestepExperts (a rank may leave one expert unused in a step, and "
                         "FSDP2's per-block collectives then differ between ranks); use dp='ddp', or shard each "
                         "expert's training separately")
    # DDP starts every rank from rank 0's weights; FSDP2 shards each rank's own copy, so make them rank 0's first
    # (a model passed in, rather than built from the seed by the trainer, may differ between ranks)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)
    blocks = getattr(model, "blocks", None)
    for block in blocks if blocks is not None else ():
        fully_shard(block, mesh=par.mesh)
    fully_shard(model, mesh=par.mesh)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    if ema is not None:
        state["ema"] = {"shadow": ema.shadow, "buffers": ema.buffers}
    return state


def save_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
                 meta: dict[str, Any]) -> Path:
    """Write a sharded checkpoint directory atomically (every rank calls it); returns ``path``."""
    import torch.distributed.checkpoint as dcp

    tmp = path.with_name(f".{path.name}.tmp")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(_state(model, optimizer, ema), checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        with open(tmp / "veil.json", "w") as f:
            json.dump({**meta, "ema_num_updates": ema.num_updates if ema is not None else None}, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    dist.barrier()
    return path


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None) -> dict[str, Any]:
    """Restore :func:`save_sharded`'s checkpoint in place (every rank calls it); returns its ``veil.json``.

    Raises:
        ValueError: the directory is not a complete checkpoint, or its tensors do not fit this model.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if not (path / "veil.json").is_file():
        raise ValueError(f"checkpoint {str(path)!r}: not a complete sharded checkpoint (no veil.json)")
    state = _state(model, optimizer, ema)
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as e:  # DCP raises a CheckpointException (with every rank's error) on a mismatch
        raise ValueError(f"checkpoint {str(path)!r}: cannot be loaded into this model and optimizer ({e})") from e
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    meta = json.loads((path / "veil.json").read_text())
    if ema is not None:
        ema.num_updates = int(meta.get("ema_num_updates") or 0)
    return meta


def full_state(model: nn.Module, ema: EMA | None) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0 (EMA weights when there is an EMA), None on other ranks; every rank
    calls it (FSDP2 gathers the shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ema is not None:
        for name, t in ema.shadow.items():
            full = t.full_tensor() if hasattr(t, "full_tensor") else t
            if name in sd:
                sd[name] = full.detach().to("cpu", sd[name].dtype)
    return sd if dist.get_rank() == 0 else None
