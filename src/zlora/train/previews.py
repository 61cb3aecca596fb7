"""The trainer's previews: the model as it is at a step (EMA weights when EMA is on, the training adapter off, the
user LoRA at ``sample.network_multiplier``) rendered to a grid, and on builtin:shapes the pixel judge's scores of
it written to metrics.jsonl. Split from trainer.py, which calls :func:`sample` through ``Trainer.sample``."""

from __future__ import annotations

import logging

import torch

from zlora.train import checkpoint
from zlora.train.sampling import render_previews

log = logging.getLogger(__name__)


@torch.no_grad()
def sample(trainer) -> None:
    t = trainer
    if not t.dist.main:
        return
    was_training = t.transformer.training
    t.transformer.eval()
    s, vae = t.cfg.sample, t.parts.vae
    t._use_adapter(training=False, user_weight=s.network_multiplier)
    vae_home = vae.device
    vae.to(t.device)
    prompts = s.prompt_list()
    embeds = [t.data.embedding(p.prompt) for p in prompts]
    negs = [t.data.embedding(p.neg) for p in prompts]
    tag = checkpoint.step_dir_name(t.step)
    with t._ema_weights():
        path, cells = render_previews(t.pipe, prompts, embeds, negs, s, t.run_dir / "samples", tag)
        if t.model_ref.reference == "builtin:shapes":
            _judge(t, cells, prompts, embeds, negs)
    log.info("preview grid: %s", path)
    vae.to(vae_home)
    t._use_adapter(training=True)
    t.transformer.train(was_training)


def _judge(t, cells, prompts, embeds, negs) -> None:
    """builtin:shapes: the pixel judge's scores of this preview into metrics.jsonl (adherence, the concept with the
    trigger, drift without it versus the base model's previews)."""
    from zlora.shapes.evaluate import PreviewJudge

    s = t.cfg.sample
    if getattr(t, "preview_judge", None) is None:  # one per run: base_judge.json is read once
        t.preview_judge = PreviewJudge(t.run_dir / "samples", t.cfg.job.trigger_word)

    def base_previews():  # the same previews with the user LoRA off
        t._use_adapter(training=False, user_weight=0.0)
        base = render_previews(t.pipe, prompts, embeds, negs, s, None, "base")[1]
        t._use_adapter(training=False, user_weight=s.network_multiplier)
        return base

    scores = t.preview_judge.preview_scores(t.step, cells, base_previews)
    t.metrics.log(step=t.step, judge=scores)
    log.info(
        "judge: adherence %s, concept %s, drift %s",
        scores["adherence"],
        scores["concept"],
        scores.get("drift"),
    )
