"""The trainer's previews: the model as it is at a step (EMA weights when EMA is on, the training adapter off, the
network at ``sample.network_multiplier``) rendered to a grid, and on builtin:shapes the pixel judge's scores of it
written to metrics.jsonl. It gets what it works with explicitly, never the trainer itself."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from zlora.config import Config
from zlora.runfolder import RunFolder, step_name
from zlora.train.adapter import AdapterSwitch
from zlora.train.drift import drift, summary
from zlora.train.sampling import render_previews

log = logging.getLogger(__name__)


class Previews:
    """``render(step)`` writes ``samples/step-NNNNNN.png`` (and the single images) for the model as it is.

    - ``pipe``: a ZImagePipeline over the training transformer and VAE (prompts come as cached embeddings);
    - ``data``: the training data (``embedding(text)``: the preview prompts were encoded with the captions);
    - ``adapters``: the switch between training (network + adapter) and previews (network alone);
    - ``ema_weights()``: a context in which the weights previews show are in the model;
    - ``placement``: where the weights live (``sampling()`` brings them where sampling needs them);
    - ``metrics``: where the judge's scores go (builtin:shapes runs only).
    """

    def __init__(
        self,
        cfg: Config,
        pipe,
        data,
        adapters: AdapterSwitch,
        ema_weights: Callable[[], AbstractContextManager],
        placement,
        run: RunFolder,
        metrics,
        judged: bool,
    ):
        self.cfg, self.pipe, self.data, self.adapters = cfg, pipe, data, adapters
        self.ema_weights, self.placement, self.run, self.metrics = ema_weights, placement, run, metrics
        self.judge = None
        if judged:  # builtin:shapes: one judge per run (base_judge.json is read once)
            from zlora.shapes.evaluate import PreviewJudge

            self.judge = PreviewJudge(run.samples, cfg.job.trigger_word)

    @torch.no_grad()
    def render(self, step: int) -> None:
        transformer, vae, s = self.pipe.transformer, self.pipe.vae, self.cfg.sample
        was_training = transformer.training
        transformer.eval()
        self.adapters.preview(s.network_multiplier)
        vae_home = vae.device
        vae.to(self.placement.device)
        prompts = s.prompt_list()
        embeds = [self.data.embedding(p.prompt) for p in prompts]
        negs = [self.data.embedding(p.neg) for p in prompts]
        with self.ema_weights(), self.placement.sampling():
            path, cells = render_previews(
                self.pipe, prompts, embeds, negs, s, self.run.samples, step_name(step)
            )
            if self.judge is not None:
                self._judge(step, cells, prompts, embeds, negs)
        log.info("preview grid: %s", path)
        if self.judge is None and step > 0:  # real models: how far the prompts without the trigger moved
            per = self.cfg.sample.samples_per_prompt
            indices = [i for i in range(len(prompts)) for _ in range(per)]
            score = drift(
                self.run.samples, step_name(step), step_name(0), cells, indices, self.cfg.job.trigger_word
            )
            if score is not None:
                if self.metrics is not None:
                    self.metrics.log(step=step, drift=score)
                log.info("drift at step %d: %s", step, summary(score))
        vae.to(vae_home)
        self.adapters.train()
        transformer.train(was_training)

    def _judge(self, step: int, cells, prompts, embeds, negs) -> None:
        """The pixel judge's scores of this preview into metrics.jsonl (adherence, the concept with the trigger,
        drift without it versus the base model's previews)."""
        s = self.cfg.sample

        def base_previews():  # the same previews with the network off
            self.adapters.preview(0.0)
            base = render_previews(self.pipe, prompts, embeds, negs, s, None, "base")[1]
            self.adapters.preview(s.network_multiplier)
            return base

        scores = self.judge.preview_scores(step, cells, base_previews)
        if self.metrics is not None:
            self.metrics.log(step=step, judge=scores)
        log.info(
            "judge: adherence %s, concept %s, drift %s",
            scores["adherence"],
            scores["concept"],
            scores.get("drift"),
        )
