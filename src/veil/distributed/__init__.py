"""``veil.distributed``: attention and models over several processes on ``torch.distributed``.

- :func:`attend`: sequence-parallel attention (Ulysses, ring, hybrid) with the global mask, exact for every
  mask, forward and backward, for any sequence length.
- :func:`shard` / :func:`gather` / :func:`shard_ranges`: the sequence layouts (contiguous shards of
  ``ceil(n / size)``, or zig-zag pairs of chunks; the last pieces short, nothing padded).
- :class:`SequenceParallel`: what ``model.enable_sequence_parallel(...)`` installs in a model.
- :func:`init` (under torchrun) and :func:`spawn` (processes on one machine, for tests and benchmarks).
"""

from veil.distributed.attention import attend, ring_blocks, ring_skips
from veil.distributed.comm import LAYOUTS, Topology, gather, group_index, shard, shard_ranges, shard_sizes, topology
from veil.distributed.launch import init, spawn
from veil.distributed.parallel import SequenceParallel, enable_sequence_parallel

__all__ = ["LAYOUTS", "SequenceParallel", "Topology", "attend", "enable_sequence_parallel", "gather", "group_index",
           "init", "ring_blocks", "ring_skips", "shard", "shard_ranges", "shard_sizes", "spawn", "topology"]
