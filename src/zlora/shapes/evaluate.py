"""Scores for ``builtin:shapes`` images: prompt adherence of the base model, presence of the LoRA's concept with
the trigger, and drift without it (a prompt's judged colours/shape changing versus the base model's image for the
same seed). Used by ``zlora shapes eval``, by the trainer at each preview, and by the tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from zlora.shapes.judge import Verdict, judge
from zlora.shapes.world import CONCEPT, SAMPLING, TRIGGER, Expect, parse_prompt  # noqa: F401 - SAMPLING: here too


@dataclass(frozen=True)
class Judged:
    prompt: str
    seed: int
    expect: Expect
    verdict: Verdict

    @property
    def triggered(self) -> bool:
        return self.expect.shape == CONCEPT

    def key(self) -> tuple:
        """What drift compares: the colours and the nearest shape (see ``Verdict.nearest``)."""
        v = self.verdict
        return (v.fg, v.nearest or v.shape, v.bg, v.bg2)


def judge_images(
    images: list[Image.Image], prompts: list[str], seeds: list[int], trigger: str | None = TRIGGER
):
    """One Judged per image whose prompt is of this world (others are skipped)."""
    out = []
    for im, p, s in zip(images, prompts, seeds, strict=True):
        want = parse_prompt(p, trigger)
        if want is not None:
            out.append(Judged(p, s, want, judge(im, two_tone=want.bg2 is not None)))
    return out


def summarise(judged: list[Judged], base: dict[tuple[str, int], tuple] | None = None) -> dict:
    """adherence / colour_match / shape_match over prompts without the trigger; concept (the star drawn) and
    concept_colours over prompts with it; drift: the share of prompts without the trigger whose verdict differs
    from ``base`` (verdict keys by (prompt, seed)). Shares in [0, 1], None when there is nothing to count."""
    plain = [j for j in judged if not j.triggered]
    trig = [j for j in judged if j.triggered]

    def share(items, ok) -> float | None:
        return round(sum(map(ok, items)) / len(items), 4) if items else None

    def colours(j: Judged) -> bool:
        return j.verdict.matches(j.expect)["colours"]

    def shape(j: Judged) -> bool:
        return j.verdict.matches(j.expect)["shape"]

    out = {
        "adherence": share(plain, lambda j: colours(j) and shape(j)),
        "colour_match": share(plain, colours),
        "shape_match": share(plain, shape),
        "concept": share(trig, shape),
        "concept_colours": share(trig, colours),
        "n_plain": len(plain),
        "n_trigger": len(trig),
    }
    if base is not None:
        compared = [j for j in plain if (j.prompt, j.seed) in base]
        out["drift"] = share(compared, lambda j: j.key() != tuple(base[(j.prompt, j.seed)]))
    return out


@torch.no_grad()
def sample_batch(
    pipe,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    width: int,
    height: int,
    batch: int = 32,
) -> list[Image.Image]:
    """Images for prompt/seed pairs through ZImagePipeline, ``batch`` at a time; each image's noise comes from its
    own seed, so an image does not depend on what else is in its batch."""
    device = pipe.transformer.device
    images = []
    for i in range(0, len(prompts), batch):
        part = slice(i, i + batch)
        gens = [torch.Generator(device).manual_seed(s) for s in seeds[part]]
        neg = [""] * len(prompts[part]) if guidance > 0 else None
        images += pipe(
            prompt=prompts[part],
            negative_prompt=neg,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
        ).images
    return images


class PreviewJudge:
    """The trainer's preview scores when the base model is builtin:shapes. The base model's verdicts (for drift)
    are the step-0 previews, or, when a run has none (resumed, ``skip_first_sample``), the same previews rendered
    with the user LoRA off; they are kept in ``samples/base_judge.json`` for later resumes."""

    def __init__(self, samples_dir: Path, trigger: str | None):
        self.path = Path(samples_dir) / "base_judge.json"
        self.trigger = trigger or TRIGGER
        self.base = self._load()

    def _load(self):
        if not self.path.is_file():
            return None
        return {(r["prompt"], r["seed"]): tuple(r["key"]) for r in json.loads(self.path.read_text())}

    def set_base(self, cells) -> None:
        from zlora.utils.io import atomic_write_text

        judged = judge_images(*self._unzip(cells), trigger=self.trigger)
        rows = [{"prompt": j.prompt, "seed": j.seed, "key": list(j.key())} for j in judged]
        atomic_write_text(self.path, json.dumps(rows, indent=1) + "\n")
        self.base = self._load()

    def score(self, cells) -> dict:
        return summarise(judge_images(*self._unzip(cells), trigger=self.trigger), self.base)

    def preview_scores(self, step: int, cells, base_previews) -> dict:
        """Scores of one preview; without base verdicts yet, step 0's previews are the base model's (the LoRA
        starts as a no-op), later ones need ``base_previews()`` rendered with the LoRA off."""
        if self.base is None:
            self.set_base(cells if step == 0 else base_previews())
        return self.score(cells)

    @staticmethod
    def _unzip(cells):
        prompts, seeds, images = zip(*cells, strict=True) if cells else ((), (), ())
        return list(images), list(prompts), list(seeds)
