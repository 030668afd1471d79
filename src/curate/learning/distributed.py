"""Training on several processes: torchrun launches them, torch.distributed connects them.

``train.nproc`` (the train stage) and ``folds.nproc`` (the folds stage) above 1 make the stage
relaunch itself under ``python -m torch.distributed.run --standalone --nproc-per-node N``
(torchrun: a free port on this machine, one process per rank, every rank's environment set)
and return torchrun's exit status. The stage relaunches itself, rather than dvc.yaml naming
torchrun, so that dvc.yaml keeps one command per stage whatever the params say: ``dvc repro``
starts one process and sees one exit status, a change of ``train.nproc`` is a param change
like any other, and ``python -m curate.stages.train`` runs the same way by hand. A stage that
finds itself already under torchrun (``WORLD_SIZE`` set: several machines, see docs/scale-out.md)
does not relaunch; the ranks are what torchrun was told.

Each rank joins the process group over gloo on a CPU and NCCL on CUDA, where it takes the GPU
``cuda:LOCAL_RANK``. The train stage trains one model with DistributedDataParallel
(:func:`curate.learning.training.fit` with ``distributed``, its batches split over the ranks by
:func:`steps`); the folds stage spreads its K fold models over
the ranks (:func:`curate.learning.fold_training.out_of_sample_predictions`). In both, rank 0 alone writes
the outputs; the other ranks exit 0 when done.

torch is imported inside the functions: the stages import this module before their input checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of a run: one process is ``Ranks(0, 1, 0)``."""

    rank: int  # 0 .. world - 1, over every machine
    world: int  # processes in all
    local_rank: int  # index on this machine (its GPU)

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the outputs."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun (which sets WORLD_SIZE, RANK and LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def relaunch(module: str, nproc: int, argv: Sequence[str] | None) -> int:
    """Run ``python -m module argv`` as ``nproc`` processes under torchrun on this machine; its exit status.

    ``argv``: the stage's arguments (None: this process's own, ``sys.argv[1:]``).

    ``--standalone`` rendezvouses on a free local port, so runs side by side do not collide.
    torchrun sets OMP_NUM_THREADS=1 in each process unless it is set: one thread per rank.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    arguments = sys.argv[1:] if argv is None else argv
    return subprocess.run([*command, "-m", module, *arguments], check=False).returncode


@contextmanager
def process_group(device_type: str) -> Iterator[Ranks]:
    """Join the run's process group (gloo on a CPU, NCCL on CUDA) for the block; leave it after.

    Outside torchrun, or under torchrun with one process, there is no group: ``Ranks(0, 1, 0)``.
    Inside a block of its own, the group already joined is used and left to the outer block.
    """
    if not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        yield Ranks(0, 1, 0)
        return
    import torch.distributed as dist

    if dist.is_initialized():
        yield Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))
        return
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device, ranks: Ranks, key: str) -> torch.device:
    """The device this rank computes on: its own GPU ``cuda:LOCAL_RANK`` on CUDA, else ``device``.

    ``key`` names the param that asked for the processes, for the error when GPUs are short.
    """
    if device.type != "cuda" or ranks.world == 1:
        return device
    import torch

    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise CurateError(
            f"{key}: rank {ranks.rank} needs GPU {ranks.local_rank}, but this machine has {count}"
        )
    torch.cuda.set_device(ranks.local_rank)
    return torch.device("cuda", ranks.local_rank)


def active() -> tuple[int, int]:
    """(rank, world) of the process group this process is in; (0, 1) when in none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_to_main(value: Any) -> list[Any] | None:
    """Every rank's ``value`` (picklable), in rank order, on rank 0; None on the others.

    Without a process group: ``[value]``.
    """
    rank, world = active()
    if world == 1:
        return [value]
    import torch.distributed as dist

    # all_gather_object, not gather_object: it works over NCCL as over gloo (the values are small).
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered if rank == 0 else None


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the process group: it broadcasts rank 0's weights once, then
    all-reduces (averages) the gradients in buckets while the backward pass runs."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@dataclass(frozen=True)
class Step:
    """One optimiser step: the batch (indices into the training set), and this process's share
    of it: all of it in one process, a contiguous slice of it under DDP."""

    batch: torch.Tensor
    rows: torch.Tensor
    offset: int  # where rows start in batch
    padding: bool = False  # an empty share stood in for by one row whose loss counts 0


def steps(order: torch.Tensor, batch_size: int, world: int, rank: int) -> list[Step]:
    """The epoch's steps: ``order`` in batches of ``batch_size``, each split over ``world`` processes.

    Every process draws the same ``order`` (same seed), so the shares of a batch are disjoint and
    cover it: a distributed run trains on the batches a one-process run trains on (the global
    weighted draw is honoured as it is), at the same number of steps per epoch.
    """
    found = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if world == 1:
            found.append(Step(batch, batch, 0))
            continue
        shares = batch.tensor_split(world)
        rows, offset = shares[rank], sum(len(share) for share in shares[:rank])
        # A last batch smaller than world leaves a share empty; DDP needs every rank to step.
        found.append(Step(batch, rows, offset) if len(rows) else Step(batch, batch[:1], 0, padding=True))
    return found


def share_of_batch(
    step: Step, loss_weights: torch.Tensor | None, w: torch.Tensor | None, world: int
) -> torch.Tensor | float:
    """The factor on a share's mean loss that makes DDP's average of the ranks' gradients the
    gradient of the whole batch's (weighted) mean loss: the share's part of the batch's weight
    (or size), times the number of processes; 0 for a padding share."""
    if step.padding:
        return 0.0
    if w is None:
        return len(step.rows) * world / len(step.batch)
    total = loss_weights[step.batch.to(w.device)].sum().clamp_min(1e-12)
    return w.sum() * world / total
