"""What every config section shares: the base class (unknown keys refused, field docstrings as help), the bounds
that catch typos, and the check of path fields."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

DEVICE_PATTERN = r"auto|cpu|cuda|cuda:\d+"
# Bounds well past any real run, so that a typo (1e15 steps, rank 1e6) is named instead of running for ever.
MAX_STEPS = 10_000_000
MAX_BATCH = 4096
MAX_RANK = 4096
MAX_SAMPLE_STEPS = 1000


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


_CONTROL = re.compile(r"[\x00-\x1f]")


def plain_path(v: str | None) -> str | None:
    """A path with a tab or line break in it came from double-quoted YAML, where ``"D:\\new\\tiny"`` reads
    ``\\n`` and ``\\t`` as escapes: say so instead of looking for a folder that cannot exist."""
    if v is not None and _CONTROL.search(v):
        raise ValueError(
            "holds a tab or line break: in double-quoted YAML a backslash starts an escape (\\n, \\t); write the "
            "path in single quotes ('D:\\new\\tiny') or with / (D:/new/tiny)"
        )
    return v
