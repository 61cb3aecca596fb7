"""Aspect-ratio buckets and the resumable order in which batches are drawn from them."""

from __future__ import annotations

import functools
import math

import torch

from zlora.errors import UserError

STEP = 16  # bucket sides are multiples of 16: the VAE's factor 8 times the transformer's patch size 2
MAX_RATIO = 4.0  # widest bucket 4:1 (and 1:4); more extreme images are cropped into it


@functools.cache
def bucket_sizes(resolution: int) -> tuple[tuple[int, int], ...]:
    """All (width, height) with sides multiples of 16, area at most resolution², ratio within 1:4..4:1,
    each the largest such width for its height."""
    area = resolution * resolution
    out = set()
    h = STEP
    while h <= resolution * 2:
        w = (area // h) // STEP * STEP
        if w >= STEP and 1 / MAX_RATIO <= w / h <= MAX_RATIO:
            out.add((w, h))
        h += STEP
    return tuple(sorted(out))


def assign_bucket(width: int, height: int, resolution: int) -> tuple[int, int] | None:
    """The bucket whose aspect ratio is closest to the image's (in log ratio; ties go to the larger area), or
    None when the image would have to be upscaled to cover it."""
    ratio = math.log(width / height)
    best = min(bucket_sizes(resolution), key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))
    if width < best[0] or height < best[1]:
        return None
    return best


def crop_box(width: int, height: int, bucket: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred region of the image with the bucket's aspect ratio: the minimal crop before resizing."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)  # resize factor that just covers the bucket
    cw, ch = bw / scale, bh / scale  # crop size in source pixels
    left, top = (width - cw) / 2, (height - ch) / 2
    return left, top, left + cw, top + ch


class BucketBatches:
    """Batches drawn from one bucket at a time. An epoch's plan is a pure function of (seed, epoch): each
    bucket's items are shuffled and cut into batches, then the batches are shuffled. The position (epoch, batch)
    is saved in checkpoints, so a resumed run sees exactly the batches an uninterrupted one would.
    A bucket's last batch may be smaller than batch_size."""

    def __init__(self, buckets: list, batch_size: int, seed: int, repeats: list[int] | None = None):
        self.buckets, self.batch_size, self.seed = list(buckets), batch_size, seed
        self.repeats = list(repeats) if repeats is not None else [1] * len(self.buckets)
        self.epoch, self.cursor = 0, 0
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    def plan(self, epoch: int) -> list[list[int]]:
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        groups: dict = {}
        for i, (b, r) in enumerate(zip(self.buckets, self.repeats, strict=True)):
            groups.setdefault(b, []).extend([i] * r)
        batches = []
        for b in sorted(groups):
            items = groups[b]
            perm = torch.randperm(len(items), generator=g).tolist()
            shuffled = [items[j] for j in perm]
            batches += [shuffled[k : k + self.batch_size] for k in range(0, len(shuffled), self.batch_size)]
        order = torch.randperm(len(batches), generator=g).tolist()
        plan = [batches[j] for j in order]
        self._plan_cache = (epoch, plan)
        return plan

    def next_batch(self) -> list[int]:
        if self.cursor >= len(self.plan(self.epoch)):
            self.epoch, self.cursor = self.epoch + 1, 0
        batch = self.plan(self.epoch)[self.cursor]
        self.cursor += 1
        return batch

    def _signature(self) -> dict:
        return {"n": sum(self.repeats), "batch_size": self.batch_size, "seed": self.seed}

    def state_dict(self) -> dict:
        return {**self._signature(), "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state.get(k) for k in self._signature()}
        if saved != self._signature():
            raise UserError(
                f"the checkpoint's data order ({saved}) does not match this run's ({self._signature()}): "
                "the dataset, batch size or seed changed; restore them or start a new run (change job.name)"
            )
        self.epoch, self.cursor = state["epoch"], state["cursor"]
