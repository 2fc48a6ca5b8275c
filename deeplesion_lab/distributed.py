"""Training on several processes with ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc-per-node N -m deeplesion_lab train-detector ...`` (or ``embed``) starts N
processes; torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address,
and :func:`context` joins the process group on first use: backend ``gloo`` on the CPU,
``nccl`` on CUDA (one GPU per process). Several nodes work the same way (``--nnodes``,
``--rdzv-endpoint``).

How a step is split: every process draws the same global batch (the same data order as one
process), takes its share (:func:`shards`), and DistributedDataParallel averages the
gradients, each share weighted by its size. Only rank 0 writes checkpoints, records and
metrics, so a run on N processes leaves the same files as one process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import LabError

__all__ = ["DistContext", "context", "shards", "is_main", "world_size", "keep_buffers", "WorkerLostError"]


class WorkerLostError(LabError, RuntimeError):
    """Another training process stopped (killed, out of memory, its node lost)."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in a ``torchrun`` job (``world == 1``: a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the files (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_sum(self, values: Sequence[float]) -> np.ndarray:
        """Element-wise sum of ``values`` over every process (float64)."""
        out = np.asarray(values, dtype=np.float64)
        if not self.active:
            return out
        import torch
        import torch.distributed as dist

        t = torch.from_numpy(out.copy())
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().numpy()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (picklable objects)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise LabError(f"environment variable {name}={v!r} is not a number (set by torchrun)") \
            from None


def context(device: Any = "cpu") -> DistContext:
    """The job this process belongs to; joins the process group when torchrun started it."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    ctx = DistContext(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0))
    if not dist.is_initialized():
        backend = "nccl" if getattr(device, "type", str(device)) == "cuda" else "gloo"
        if backend == "nccl":
            import torch

            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(_destroy)
    return ctx


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes of this torchrun job (1 without torchrun)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def is_main() -> bool:
    """Whether this process is rank 0 (or the only one)."""
    return _env_int("RANK", 0) == 0


def shards(idx: np.ndarray, n: int) -> list[np.ndarray]:
    """``idx`` cut into ``n`` consecutive parts whose sizes differ by at most one."""
    return [np.asarray(p) for p in np.array_split(np.asarray(idx), n)]


@contextlib.contextmanager
def keep_buffers(module: Any, keep: bool) -> Iterator[None]:
    """With ``keep``, undo what the block does to ``module``'s buffers (the normalisation
    layers' running statistics).

    A step's running statistics come from its first micro-batch only, on one process as on
    several (rank 0 holds part 0, and its buffers are the ones every process keeps).
    """
    if not keep:
        yield
        return
    import torch

    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def sum_gradients(params: Sequence[Any], ctx: DistContext) -> None:
    """Sum the gradients of ``params`` over the processes, in one message (parameters no
    process has a gradient for keep none, as the optimiser expects)."""
    if not ctx.active:
        return
    import torch
    import torch.distributed as dist

    params = list(params)
    ref = params[0]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                       device=ref.device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    dist.all_reduce(has)
    dist.all_reduce(flat)
    pos = 0
    for p, h in zip(params, has.tolist(), strict=True):
        n = p.numel()
        p.grad = flat[pos : pos + n].view_as(p).clone() if h > 0 else None
        pos += n


def broadcast_buffers(module: Any, ctx: DistContext) -> None:
    """Rank 0's buffers (running statistics) on every process."""
    if not ctx.active:
        return
    import torch.distributed as dist

    for b in module.buffers():
        dist.broadcast(b.data, src=0)
