"""EMA of the trained weights (``train.ema_config``) through diffusers' ``EMAModel``, and the context in which the
EMA weights stand in for the trained ones (previews, saved files)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch


def make_ema(params: list[torch.nn.Parameter], decay: float):
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=decay)


@contextlib.contextmanager
def ema_weights(ema, params: list[torch.nn.Parameter], sync: Callable[[], None]) -> Iterator[None]:
    """The EMA weights in place of the trained ones for the block (``sync`` copies them into the model when the
    model holds low-precision copies); a no-op without EMA."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    sync()
    try:
        yield
    finally:
        ema.restore(params)
        sync()
