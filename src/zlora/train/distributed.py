"""Data-parallel training under `torchrun` or `accelerate launch` (DDP semantics over torch.distributed).

accelerate's ``PartialState`` reads the launcher's environment and sets up the process group (gloo on CPU, NCCL on
CUDA) and each process's device. The step itself does not go through DDP's module wrapper: the trainer switches
peft adapters on the bare transformer and calls it with Z-Image's list inputs, which a wrapped module would hide.
Instead every process draws the whole step's randomness from the same generator, computes its share of the samples,
and one all-reduce per step sums the LoRA gradients (a few MB) together with the loss and the stop flag; all
processes then take the same optimizer step. A single process skips all of it."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import torch

from zlora.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the launcher's device for this process (None: single process)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, n: int) -> slice:
        """This process's positions in a global batch of ``n``: contiguous, as even as n allows (maybe none)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    @contextlib.contextmanager
    def main_first(self):
        """The main process runs the block first (e.g. fills disk caches), then the others (reading them)."""
        if not self.active:
            yield
            return
        if not self.main:
            torch.distributed.barrier()
        yield
        if self.main:
            torch.distributed.barrier()

    def all_reduce(self, params: list[torch.nn.Parameter], *scalars: float | torch.Tensor) -> list[float]:
        """Sum every process's gradients in place and return the summed scalars (tensors or floats): one
        collective, and the step's one host sync (``tolist``)."""
        dev = params[0].device
        values = torch.stack(
            [torch.as_tensor(s, dtype=torch.float32, device=dev).reshape(()) for s in scalars]
        )
        if not self.active:
            return values.tolist()
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
        flat = torch.cat([*parts, values])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n
        return flat[offset:].tolist()

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def check_same(self, text: str, what: str) -> None:
        """Every process must run the same ``text`` (e.g. the resolved config): else an error before step 1."""
        if not self.active:
            return
        mine = hashlib.sha256(text.encode()).hexdigest()
        everyone: list[str | None] = [None] * self.world
        torch.distributed.all_gather_object(everyone, mine)
        differ = [r for r, h in enumerate(everyone) if h != everyone[0]]
        if differ:
            raise UserError(
                f"the processes of this launch disagree on the {what} (processes {differ} differ from "
                "process 0); give every process the same config file and overrides"
            )


def init(cpu: bool) -> Dist:
    """The launch's processes (WORLD_SIZE > 1 from torchrun / accelerate launch), or a single process. ``cpu``:
    train on CPUs (gloo), which accelerate must be told (else it sees no distributed setup without GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    if state.num_processes != world:
        raise UserError(
            f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} processes; launch with "
            "torchrun or accelerate launch"
        )
    return Dist(
        rank=state.process_index,
        world=state.num_processes,
        device=torch.device(state.device.type) if cpu else state.device,
    )
