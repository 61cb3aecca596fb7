"""Where the transformer's weights live while it trains and samples. Setup places the model through ``place``
(blocks quantized one by one on their way to the device, so loading never holds more than the placement allows),
then ``attach`` once the LoRA and the training adapter are in; previews and ``zlora generate`` sample through the
same hooks. Two strategies: ``Resident`` (every weight on the compute device) and ``Swapped`` (layer offloading:
the last N main blocks live in host memory and come to the device ahead of use).

Why not diffusers' group offloading (or accelerate's hooks): both move a parameter by assigning ``param.data``, which
also changes the tensor autograd saved for the backward pass, and both move every tensor of a block, the trainable
LoRA weights (and their optimizer's view of them) included, and write them back each time. Here the frozen base
weights never change, so "offloading" a block is dropping its device copy (no device-to-host copy at all); the
copy is a new ``Parameter`` put in the module's slot, never a mutation of the host tensor, and the LoRA and
adapter weights of a swapped block stay on the device. SimpleTuner found diffusers' prefetch order wrong for the
recomputation of gradient checkpointing (its #1975/#1984); the order here follows the blocks as they are called,
forward and, when checkpointing recomputes them, backward.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from zlora.errors import UserError
from zlora.models.quantize import quantize_weights, weight_bytes
from zlora.vocab import BLOCK_LISTS, MAIN_BLOCKS

log = logging.getLogger(__name__)
MiB, GiB = 2**20, 2**30
# What `auto` keeps free besides weights and activations: the CUDA context, allocator slack, the LoRA and its
# optimizer state (a rank-16 LoRA of the 6 B model is ~ 80 MB, with AdamW state ~ 0.3 GB).
AUTO_MARGIN_GIB = 1.5
# Activation estimate, in (tokens x dim) tensors of the compute dtype: one block's forward keeps about this many
# (attention q/k/v/out, norms, the SwiGLU's three hidden tensors at 8/3 dim, residuals); with gradient
# checkpointing only each block's input is kept, plus one block recomputed at a time.
BLOCK_ACTIVATIONS = 24


def activation_bytes(tokens: int, dim: int, n_blocks: int, checkpointing: bool, elem: int = 2) -> int:
    """A stated estimate of the activation memory of one training step (batch 1) at ``tokens`` tokens."""
    one = tokens * dim * elem
    return one * (n_blocks + BLOCK_ACTIVATIONS) if checkpointing else one * BLOCK_ACTIVATIONS * n_blocks


def auto_blocks(free: int, weights: int, block: int, n_blocks: int, activations: int, margin: int) -> int:
    """``blocks_to_swap: auto``: the fewest swapped blocks N with resident weights (all but N blocks) + 2 blocks in
    flight (when N > 0) + activations + margin <= ``free`` bytes; every block when even that does not fit."""
    for n in range(n_blocks + 1):
        if weights - n * block + (2 * block if n else 0) + activations + margin <= free:
            return n
    return n_blocks


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` now (CUDA), None where swapping saves nothing (the CPU is its own host)."""
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def main_blocks(transformer: torch.nn.Module) -> torch.nn.ModuleList:
    return getattr(transformer, MAIN_BLOCKS)


def _is_lora(name: str) -> bool:
    """A peft adapter module (LoRA's lora_A / lora_B, LoKr's lokr_*, LoHa's hada_*): trained or tiny, always resident."""
    return any(part.startswith(("lora_", "lokr_", "hada_")) for part in name.split("."))


@dataclass
class Plan:
    """What a placement decided, for the setup log and ``zlora bench``."""

    n_blocks: int
    swapped: tuple[int, ...]
    block_bytes: int
    weight_bytes: int  # all transformer weights (as stored: quantized bytes when quantized)
    activations: int

    @property
    def resident_bytes(self) -> int:
        return self.weight_bytes - len(self.swapped) * self.block_bytes

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + (2 * self.block_bytes if self.swapped else 0) + self.activations

    def describe(self) -> str:
        s = self.swapped
        which = f"block {s[0]}" if len(s) == 1 else f"blocks {s[0]}–{s[-1]}" if s else ""
        lead = (
            f"{which} of {self.n_blocks} swapped ({len(s)} × {self.block_bytes / MiB:.1f} MiB in host memory)"
            if s
            else "no block swapped"
        )
        return (
            f"{lead}; resident {self.resident_bytes / GiB:.1f} GiB; estimated peak {self.peak_bytes / GiB:.1f} GiB "
            f"(resident + {'2 blocks in flight + ' if self.swapped else ''}"
            f"~{self.activations / GiB:.1f} GiB activations)"
        )


class Resident:
    """Every weight on the compute device (each block quantized there, one at a time, when asked)."""

    def __init__(self, device: torch.device, tokens: int = 4096, checkpointing: bool = True):
        self.device = device
        self.tokens, self.checkpointing = tokens, checkpointing
        self.swapped: tuple[int, ...] = ()
        self.bytes_moved = 0  # host-to-device bytes of swapped blocks since setup
        self.plan: Plan | None = None

    def place(self, transformer: torch.nn.Module, qtype: str | None) -> torch.nn.Module:
        blocks = main_blocks(transformer)
        self.swapped = self._decide(transformer, qtype)
        before = after = 0
        to_device = lambda t: t.to(self.device)  # noqa: E731
        for kind in BLOCK_LISTS:  # the refiners, then the main blocks: one block on the device at a time
            for i, block in enumerate(getattr(transformer, kind, ())):
                host = kind == MAIN_BLOCKS and i in self.swapped
                if not host or qtype:  # a swapped block is quantized on the device too (fast), then leaves
                    block.to(self.device)
                if qtype:
                    b, a = quantize_weights(block, qtype, "model.quantize", blocks_only=False, quiet=True)
                    before, after = before + b, after + a
                if host:
                    block.to("cpu")
        inside = {
            id(m) for kind in BLOCK_LISTS for m in getattr(transformer, kind, torch.nn.Module()).modules()
        }
        for m in transformer.modules():  # embedders, final layer, pad tokens
            if id(m) not in inside:
                m._apply(to_device, recurse=False)
        if qtype:
            log.info("model.quantize: %s weights, %.1f MiB -> %.1f MiB", qtype, before / MiB, after / MiB)
        self.plan = Plan(
            len(blocks),
            self.swapped,
            weight_bytes(blocks[0]) if len(blocks) else 0,
            weight_bytes(transformer),
            activation_bytes(self.tokens, transformer.config.dim, len(blocks), self.checkpointing),
        )
        return transformer

    def _decide(self, transformer: torch.nn.Module, qtype: str | None) -> tuple[int, ...]:
        """The main blocks that live in host memory: none."""
        return ()

    def attach(self, transformer: torch.nn.Module) -> None:
        """After the network and the training adapter are added: nothing to hook when everything is resident."""

    def compiled_blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module] | None:
        """The blocks regional compile may compile; None: all repeated blocks."""
        return None

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Previews and generation see the model as training does (the same hooks bring swapped blocks in)."""
        yield


class Swapped(Resident):
    """Layer offloading: main blocks ``n-N .. n-1`` (deterministic from the settings) live in host memory (pinned
    on CUDA) and are copied to the device just before use: a forward pre-hook on each swapped block makes it
    current and starts the copy of the block expected next on a side stream, so the transfer overlaps the current
    block's compute. The expected next block follows the calls: forward order, then, when gradient checkpointing
    recomputes blocks in the backward pass, reverse order (and forward again at the next step); sampling and
    training without checkpointing cycle forward. A block not prefetched is copied at once, so a wrong guess costs
    time, never correctness. At most two swapped blocks have device copies at a time (current + next)."""

    def __init__(self, device, blocks_to_swap: int | str, tokens: int = 4096, checkpointing: bool = True):
        super().__init__(device, tokens, checkpointing)
        self.setting = blocks_to_swap
        self.count: int | None = None if blocks_to_swap == "auto" else int(blocks_to_swap)
        self.free = free_memory(device)
        self.hosts: dict[int, list] = {}  # block -> [(slots dict, name, host tensor)]
        self.loaded: dict[int, tuple[list, object]] = {}  # block -> (device copies, event)
        self.current: int | None = None
        self.last: int | None = None
        self.direction = 1
        self.max_loaded = 0
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.modules: tuple[torch.nn.Module, ...] = ()

    def _decide(self, transformer, qtype):
        blocks = main_blocks(transformer)
        n = len(blocks)
        if self.count is None:  # auto: from the free memory and the blocks' stored size (quantized if asked)
            if self.free is None:
                log.info("model.blocks_to_swap=auto: %s is its own host memory, nothing to swap", self.device)
                self.count = 0
            else:
                block = stored_bytes(blocks[0], qtype) if n else 0
                weights = stored_bytes(transformer, qtype)
                acts = activation_bytes(self.tokens, transformer.config.dim, n, self.checkpointing)
                self.count = auto_blocks(self.free, weights, block, n, acts, int(AUTO_MARGIN_GIB * GiB))
                log.info(
                    "model.blocks_to_swap=auto: %d of %d blocks for %.1f GiB free (margin %.1f GiB)",
                    self.count,
                    n,
                    self.free / GiB,
                    AUTO_MARGIN_GIB,
                )
        if self.count > n:
            raise UserError(
                f"model.blocks_to_swap is {self.count} but the model has {n} main blocks; use 0–{n} or auto"
            )
        return tuple(range(n - self.count, n))

    # ------------------------------------------------------------- hooks
    def attach(self, transformer: torch.nn.Module) -> None:
        if not self.swapped:
            return
        blocks = main_blocks(transformer)
        self.transformer = transformer
        self.modules = tuple(blocks[i] for i in self.swapped)
        pin = self.device.type == "cuda"
        for i in self.swapped:
            entries = []
            for name, m in blocks[i].named_modules():
                if _is_lora(name):  # created on the host beside their base layer; trained on the device
                    m._apply(lambda t: t.to(self.device), recurse=False)
                    continue
                for slots in (m._parameters, m._buffers):
                    for k, t in slots.items():
                        if t is None or t.requires_grad:
                            continue
                        host = _pinned(t) if pin else t
                        if host is not t:
                            slots[k] = (
                                torch.nn.Parameter(host, requires_grad=False) if k in m._parameters else host
                            )
                        entries.append((slots, k, slots[k]))
            self.hosts[i] = entries
            blocks[i].register_forward_pre_hook(lambda _m, _a, i=i: self._enter(i))
        if self.plan:
            log.info("layer offloading: %s", self.plan.describe())

    def compiled_blocks(self, transformer):
        swapped = {id(b) for b in self.modules}
        names = set(getattr(transformer, "_repeated_blocks", ()))
        return [m for m in transformer.modules() if type(m).__name__ in names and id(m) not in swapped]

    def _next(self, i: int) -> int | None:
        order = self.swapped
        k = order.index(i)
        t = self.transformer
        bounce = torch.is_grad_enabled() and t.training and getattr(t, "gradient_checkpointing", False)
        if not bounce:
            return order[(k + 1) % len(order)]
        if self.last is not None and i != self.last:
            self.direction = 1 if i > self.last else -1
        if not 0 <= k + self.direction < len(order):
            self.direction = (
                -self.direction
            )  # the end of the pass: the recomputation (or next step) turns back
        j = k + self.direction
        return order[j] if 0 <= j < len(order) else None

    def _enter(self, i: int) -> None:
        """Block ``i`` is about to run: make it current, drop every other copy but the next one, prefetch that."""
        nxt = self._next(i)
        for j in list(self.loaded):
            if j not in (i, nxt):
                self._drop(j)
        if i not in self.loaded:
            self._load(i, prefetch=False)
        self._activate(i)
        if nxt is not None and nxt != i and nxt not in self.loaded:
            self._load(nxt, prefetch=True)
        self.last = i
        self.max_loaded = max(self.max_loaded, len(self.loaded))

    def _load(self, i: int, prefetch: bool) -> None:
        stream = self.stream if prefetch else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            copies = []
            for _, _, host in self.hosts[i]:
                # on the CPU the "device" is the host: a real copy still, so the bookkeeping is what runs on a GPU
                t = host.to(self.device, non_blocking=True) if self.stream else host.detach().clone()
                copies.append(
                    torch.nn.Parameter(t, requires_grad=False) if isinstance(host, torch.nn.Parameter) else t
                )
                self.bytes_moved += _nbytes(host)
            event = None
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
        self.loaded[i] = (copies, event)

    def _activate(self, i: int) -> None:
        if self.current == i:
            return
        copies, event = self.loaded[i]
        if event is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(event)
            for t in copies:  # the copy was allocated on the side stream and is used on this one
                _record_stream(t, main)
            self.loaded[i] = (copies, None)
        for (slots, k, _), t in zip(self.hosts[i], copies, strict=True):
            slots[k] = t
        self.current = i

    def _drop(self, j: int) -> None:
        """Forget block ``j``'s device copy: its slots point at the host tensors again (no copy back: frozen)."""
        for slots, k, host in self.hosts[j]:
            slots[k] = host
        del self.loaded[j]
        if self.current == j:
            self.current = None

    def device_bytes(self) -> int:
        """Bytes of swapped blocks that have device copies now (the residency bookkeeping, for tests)."""
        return sum(_nbytes(t) for copies, _ in self.loaded.values() for t in copies)


def stored_bytes(module: torch.nn.Module, qtype: str | None) -> int:
    """Bytes ``module``'s weights will take once placed: its block Linear weights at one byte each when quantized
    (float8 / int8; the scales are small), everything else as it is. ``auto`` decides on this before moving."""
    linear = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Linear)} if qtype else set()
    return sum(p.numel() * (1 if id(p) in linear else p.element_size()) for p in module.parameters())


def _inner(t: torch.Tensor) -> list[torch.Tensor]:
    """A tensor's storage tensors: a torchao quantized tensor's inner data and scales, else itself."""
    t = t.data if isinstance(t, torch.nn.Parameter) else t
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return [getattr(t, n) for n in names]
    return [t]


def _nbytes(t: torch.Tensor) -> int:
    return sum(x.numel() * x.element_size() for x in _inner(t))


def _record_stream(t: torch.Tensor, stream) -> None:
    for x in _inner(t):
        x.record_stream(stream)


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """Pinned host memory makes the copy asynchronous; a tensor type that cannot be pinned is copied from pageable
    memory (slower, still correct)."""
    try:
        return t.data.pin_memory() if isinstance(t, torch.nn.Parameter) else t.pin_memory()
    except (RuntimeError, NotImplementedError) as e:
        log.debug("could not pin %s (%s): pageable copies", type(t).__name__, e)
        return t


def placement_for(
    device: torch.device,
    low_vram: bool = False,
    blocks_to_swap: int | str | None = None,
    tokens: int = 4096,
    checkpointing: bool = True,
) -> Resident:
    """The strategy the settings ask for: ``blocks_to_swap`` (``None``: ``auto`` with ``low_vram``, else 0)."""
    n = blocks_to_swap if blocks_to_swap is not None else ("auto" if low_vram else 0)
    if n == 0:
        return Resident(device, tokens, checkpointing)
    return Swapped(device, n, tokens, checkpointing)
