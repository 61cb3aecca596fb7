"""The trainer: ``setup -> train -> save -> cleanup``. ``train()`` reads top-down; the loss is computed in ``_loss()``."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from zlora.config import Config, dump_config
from zlora.data.loader import TrainData
from zlora.errors import UserError
from zlora.hub.manifest import hub_settings
from zlora.lora.format import save_lora
from zlora.models import zimage
from zlora.models.load import (
    load_components,
    load_text_encoder,
    make_pipeline,
    resolve_device,
    resolve_dtype,
    resolve_file_ref,
    resolve_model,
)
from zlora.models.quantize import quantize_weights
from zlora.train import checkpoint, distributed, previews, resume
from zlora.train.metrics import MetricsLog, plot_loss
from zlora.train.network import USER_LORA, add_user_lora, load_training_adapter, set_active
from zlora.train.optim import make_optimizer, make_scheduler
from zlora.train.speed import compile_blocks, peak_memory_gib, trainable_params
from zlora.train.stop import GracefulStop, TrainingInterrupted  # noqa: F401 - TrainingInterrupted: public here
from zlora.train.timesteps import guided_target, loss_weights, sample_loss, sample_sigmas
from zlora.utils.io import USER_WRITE_ERRNOS, WriteError, make_dirs, write_error

log = logging.getLogger(__name__)
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    def __init__(self, cfg: Config, force_resume: bool = False):
        self.cfg = cfg
        self.force_resume = force_resume
        self.forced: dict = {}  # settings changed at a --force-resume
        self.run_dir = Path(cfg.job.output_dir).expanduser() / cfg.job.name
        self.ckpt_root = self.run_dir / "checkpoints"
        self.step = 0
        self.stop = GracefulStop()
        # one process, or this one's place in a torchrun / accelerate launch
        self.dist = distributed.init(cpu=cfg.job.device == "cpu" or not torch.cuda.is_available())
        self._stop_agreed = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        self.dist.check_same(dump_config(cfg), "config")
        auto = cfg.job.device == "auto" and self.dist.device is not None
        self.device = self.dist.device if auto else resolve_device(cfg.job.device)
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        hub = hub_settings(cfg.hub.models_dir, cfg.hub.endpoint, cfg.hub.offline)
        self.model_ref = resolve_model(cfg.model.name_or_path, hub)
        # Scans the datasets now, so a bad dataset fails before any model is loaded.
        self.data = TrainData(cfg, self.model_ref.folder, self.device, self.dtype)
        adapter = cfg.model.assistant_lora_path
        self.adapter_path = resolve_file_ref(adapter, "model.assistant_lora_path", hub) if adapter else None

        log.info(
            "loading %s from %s (%s, %s)",
            cfg.model.name_or_path,
            self.model_ref.folder,
            self.dtype,
            self.device,
        )
        self.parts = load_components(self.model_ref.folder, self.dtype, text_encoder=False)
        self.parts.vae.to(self.device)
        with self.dist.main_first():  # disk caches are filled once, then read by the other processes
            self.data.prepare_latents(self.parts.vae)
            self.data.prepare_text(self._text_encoder)
        if cfg.train.unload_text_encoder:  # free it before the transformer moves in
            self.parts.text_encoder = self.parts.tokenizer = None
        if self.data.all_latents_cached:  # the VAE is only needed on the device for previews now
            self.parts.vae.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

        self.transformer = self.parts.transformer.to(self.device)
        if cfg.model.quantize:
            quantize_weights(self.transformer, cfg.model.qtype, "model.quantize")
        add_user_lora(self.transformer, cfg.network, cfg.train.seed)
        if cfg.train.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if self.adapter_path:
            load_training_adapter(self.transformer, self.adapter_path)
        self._use_adapter(training=True)
        self.compiled = compile_blocks(self.transformer, cfg.train.compile, self.device)
        self.masters, self.named_params = trainable_params(
            self.transformer, cfg.train.lora_precision, self.dtype
        )
        self.params = list(self.named_params.values())  # what the optimizer steps (fp32 masters, if any)
        self.optimizer = make_optimizer(cfg.train, self.params, self.device)
        self.lr_scheduler = make_scheduler(cfg.train, self.optimizer, cfg.train.steps)
        self.ema = None
        if cfg.train.ema_config.use_ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=cfg.train.ema_config.ema_decay)
        self.order = self.data.order(self.dist.world)  # global batches; each process trains its share
        self.generator = torch.Generator(self.device).manual_seed(cfg.train.seed)
        # Caption dropout decides on the host which embedding to use: drawn on the device, that is a sync per step.
        # On CPU it is the same generator (as before); on a GPU a host generator of its own, checkpointed too.
        self.host_generator = (
            self.generator if self.device.type == "cpu" else torch.Generator().manual_seed(cfg.train.seed)
        )
        self._resume()
        # Only now does the run really start or resume: a failed start leaves the run folder as it was.
        self.metrics = None  # only the main process writes the run folder
        if self.dist.main:
            make_dirs(self.run_dir)
            resume.keep_old_config(self.run_dir, dump_config(cfg), self.step)
            checkpoint.write_run_json(self.run_dir / "run.json", self.model_ref, self.dist.world)
            if self.forced:
                resume.record_forced(self.run_dir / "run.json", self.step, self.forced)
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=self.step)
        self.pipe = make_pipeline(self.parts)
        trigger = cfg.job.trigger_word
        if trigger and cfg.sample.prompts and all(trigger in p.prompt for p in cfg.sample.prompt_list()):
            log.info(
                "tip: add a preview prompt without %r; if it drifts during training, the LoRA leaks", trigger
            )

    def _text_encoder(self):
        """Loaded on the device only when some text is not cached yet."""
        if self.parts.text_encoder is None:
            self.parts.tokenizer, self.parts.text_encoder = load_text_encoder(
                self.model_ref.folder, self.dtype
            )
            if self.cfg.model.quantize_te:
                quantize_weights(self.parts.text_encoder, self.cfg.model.qtype_te, "model.quantize_te", False)
        self.parts.text_encoder.to(self.device)
        return self.parts.tokenizer, self.parts.text_encoder

    def _use_adapter(self, training: bool, user_weight: float = 1.0) -> None:
        """Training forwards see user LoRA + adapter; previews the user LoRA alone. Only the user LoRA trains."""
        set_active(
            self.transformer, adapter=training and self.adapter_path is not None, user_weight=user_weight
        )

    @contextlib.contextmanager
    def _ema_weights(self):
        """The EMA weights in place of the trained ones (previews, saved files); a no-op without EMA."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        self._sync_model()
        try:
            yield
        finally:
            self.ema.restore(self.params)
            self._sync_model()

    def _sync_model(self) -> None:
        """The model's low-precision LoRA weights from the fp32 masters (no-op without masters)."""
        if self.masters is not None:
            self.masters.to_model()

    def _resume(self) -> None:
        found = checkpoint.latest_checkpoint(self.ckpt_root)
        if found is None:
            return
        step, path = found
        state = checkpoint.load_state(path)
        new = self.cfg.model_dump(mode="json")
        old = state.get("config") or {**new, "network": state["network"]}  # older checkpoints: network only
        # What must match is the global batch: 2 processes x batch 1 resume 1 process x batch 2 and back.
        old, new = resume.effective(old, state.get("world_size", 1)), resume.effective(new, self.dist.world)
        self.forced = resume.check(old, new, path, self.force_resume)
        named = self._lora_params()
        missing = set(named) ^ set(state["lora"])
        if missing:
            raise UserError(f"{path}: checkpoint LoRA does not match the model ({sorted(missing)[:3]} ...)")
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(state["lora"][name])
        self._sync_model()
        changed = lambda *prefixes: any(k.startswith(prefixes) for k in self.forced)  # noqa: E731
        resume.restore_optimizer(self.optimizer, self.lr_scheduler, state, step, self.forced)
        if changed("datasets", "train.batch_size", "train.seed", "job.trigger_word"):
            log.warning("--force-resume: the data changed, so the sample order starts a new epoch plan")
        else:
            self.order.load_state_dict(state["order"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
                self.ema.to(self.device)  # load_state_dict leaves the shadow weights on the CPU
            elif self.forced:
                from diffusers.training_utils import EMAModel

                self.ema = EMAModel(
                    self.params, decay=self.cfg.train.ema_config.ema_decay
                )  # from the weights now
            else:
                raise UserError(
                    f"{path} was trained without EMA; set train.ema_config.use_ema=false or start anew"
                )
        if not changed("train.seed"):
            checkpoint.set_rng(state["rng"], self.generator, self.host_generator, self.device)
        self.step = step
        log.info(
            "resumed from %s (step %d)%s",
            path,
            step,
            f"; --force-resume applies {len(self.forced)} changed settings" if self.forced else "",
        )

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        cfg = self.cfg
        if self.step >= cfg.train.steps:
            log.info(
                "already trained to step %d (train.steps=%d); raise train.steps to continue",
                self.step,
                cfg.train.steps,
            )
            return
        self.stop.install()
        if self.step == 0 and cfg.sample.prompts and not cfg.sample.skip_first_sample:
            self.sample()
        self.transformer.train()
        bar = tqdm(
            total=cfg.train.steps,
            initial=self.step,
            desc="training",
            unit="step",
            dynamic_ncols=True,
            mininterval=0.1 if sys.stderr.isatty() else 10,
            disable=not self.dist.main,
        )
        first = self.step
        while self.step < cfg.train.steps:
            t0 = time.perf_counter()
            loss = self.step_once()
            self.step += 1
            lr = self.lr_scheduler.get_last_lr()[0]
            seconds, mem = time.perf_counter() - t0, peak_memory_gib(self.device)
            if self.compiled and self.step == first + 1:
                log.info("compile warm-up: first step took %.1f s", seconds)
            if self.metrics:
                self.metrics.log(
                    step=self.step, loss=loss, lr=lr, seconds=round(seconds, 6), mem_gib=round(mem, 3)
                )
            bar.set_postfix(
                loss=f"{loss:.4f}",
                lr=f"{lr:.2e}",
                s_step=f"{seconds:.3f}",
                mem_gib=f"{mem:.2f}",
                refresh=False,
            )  # bar.update() redraws
            bar.update()

            done = self.step == cfg.train.steps
            stop = self._stop_requested()
            if self.step % cfg.save.save_every == 0 or done or stop:
                self.save_checkpoint()
            if cfg.sample.prompts and (self.step % cfg.sample.sample_every == 0 or done):
                self.sample()
            if stop and not done:
                bar.close()
                raise self.stop.interrupted(self.step, self.ckpt_root / checkpoint.step_dir_name(self.step))
        bar.close()
        # From here Ctrl-C aborts at once (exit 130): the last checkpoint holds every step, and a stop
        # requested now would otherwise go unnoticed while the final LoRA is written.
        self.stop.restore()
        if self.stop.signal is not None:
            log.warning("stop requested at the last step: the run is complete")

    def step_once(self) -> float:
        """One optimizer step over ``gradient_accumulation`` batches; returns the loss. In a distributed launch the
        batches are global: every process draws the whole step's randomness and trains its share of each batch."""
        cfg = self.cfg.train
        batches = [self.order.next_batch() for _ in range(cfg.gradient_accumulation)]  # each from one bucket
        flat = [i for b in batches for i in b]
        # All randomness of the step is drawn first, in sample order: 2 batches of 1 draw what 1 batch of 2 does,
        # and so do 2 processes with 1 sample each.
        caps = self.data.captions(flat, self.host_generator)  # (L_i, D) each: caption lengths differ
        sigmas = sample_sigmas(cfg, len(flat), self.generator, self.device)
        noise = [
            torch.randn(
                self.data.latent_shape(i, self.parts.vae), generator=self.generator, device=self.device
            )
            for i in flat
        ]  # (C, h, w) each

        total, start = torch.zeros((), device=self.device), 0
        for b in batches:
            own = self.dist.share(len(b))
            share = slice(start + own.start, start + own.stop)  # this process's positions in flat
            start += len(b)
            if own.start == own.stop:
                continue  # a bucket's last batch can be smaller than the number of processes
            mine = flat[share]
            x0 = self.data.latents(mine, self.parts.vae)  # (C, h, w) each
            # the sum over processes of (my samples' mean) * (my share) is the mean over the global batch
            loss = self._loss(mine, x0, noise[share], sigmas[share], caps[share]) * (len(mine) / len(flat))
            loss.backward()
            total += loss.detach().float()  # on the device: the step's one host sync is below
        if self.masters is not None:
            self.masters.grads_to_master()
        total, stops = self.dist.all_reduce(self.params, total, float(self.stop.signal is not None))
        self._stop_agreed = stops > 0  # every process stops after the same step
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self._sync_model()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)
        if not math.isfinite(total):
            raise RuntimeError(
                f"loss is {total} at step {self.step + 1}; lower train.lr or use model.dtype=fp32"
            )
        return total

    def _stop_requested(self) -> bool:
        return self._stop_agreed if self.dist.active else self.stop.signal is not None

    def _loss(self, idx, x0, noise, sigmas, caps) -> torch.Tensor:
        """Mean over the batch of each sample's mean loss (samples of different sizes weigh the same)."""
        cfg = self.cfg.train
        x_s = [zimage.noisy_latents(x, n, s) for x, n, s in zip(x0, noise, sigmas, strict=True)]
        pred = zimage.predict(self.transformer, x_s, sigmas, caps, self.dtype)
        target = [zimage.velocity_target(x, n) for x, n in zip(x0, noise, strict=True)]
        if cfg.do_differential_guidance:
            target = [
                guided_target(p, t, cfg.differential_guidance_scale)
                for p, t in zip(pred, target, strict=True)
            ]
        datasets = [self.cfg.datasets[self.data.entries[i].dataset] for i in idx]
        prior_at = [n for n, d in enumerate(datasets) if d.prior_reg]
        if prior_at:  # prior_reg: the base model's prediction is the target
            prior = self._prior([x_s[n] for n in prior_at], sigmas[prior_at], [caps[n] for n in prior_at])
            for n, q in zip(prior_at, prior, strict=True):
                target[n] = q
        losses = torch.stack([sample_loss(p, t, cfg) for p, t in zip(pred, target, strict=True)])
        loss = (losses * loss_weights(cfg, sigmas)).mean()
        dop_at = [
            n for n, d in enumerate(datasets) if not d.is_reg
        ]  # a reg caption has no trigger to replace
        if cfg.diff_output_preservation and dop_at:
            dop = self._dop_loss([idx[n] for n in dop_at], [x_s[n] for n in dop_at], sigmas[dop_at])
            loss = loss + cfg.diff_output_preservation_multiplier * dop * (len(dop_at) / len(idx))
        return loss

    @torch.no_grad()
    def _prior(self, x_s, sigmas, caps) -> list[torch.Tensor]:
        """The base model's prediction (user LoRA at weight 0: exactly the base, training adapter still on)."""
        self._use_adapter(training=True, user_weight=0.0)
        try:
            return zimage.predict(self.transformer, x_s, sigmas, caps, self.dtype)
        finally:
            self._use_adapter(training=True)

    def _dop_loss(self, idx, x_s, sigmas) -> torch.Tensor:
        """Differential Output Preservation: on the class caption, the LoRA's prediction is pulled towards the base
        model's."""
        caps = [self.data.embedding(self.data.class_caption(self.data.entries[i])) for i in idx]
        prior = self._prior(x_s, sigmas, caps)
        pred = zimage.predict(self.transformer, x_s, sigmas, caps, self.dtype)
        return torch.stack(
            [torch.mean((p.float() - q.float()) ** 2) for p, q in zip(pred, prior, strict=True)]
        ).mean()

    def sample(self) -> None:
        """A preview grid of the model as it is now (and on builtin:shapes, the judge's scores)."""
        previews.sample(self)

    # ------------------------------------------------------------------ save
    def _lora_params(self) -> dict[str, torch.nn.Parameter]:
        """The trained LoRA weights by the model's parameter names (the fp32 masters when there are masters)."""
        return self.named_params

    def _lora_state(self) -> dict[str, torch.Tensor]:
        """peft's state-dict names (``...to_q.lora_A.weight``), full precision."""
        return {n.replace(f".{USER_LORA}.", "."): p for n, p in self.named_params.items()}

    def write_lora(self, path: Path) -> None:
        """The LoRA as users load it: the EMA weights when EMA is on."""
        cfg = self.cfg
        with self._ema_weights():
            state = {
                k: v.detach().clone() for k, v in self._lora_state().items()
            }  # before the weights return
        save_lora(
            path,
            state,
            rank=cfg.network.linear,
            alpha=cfg.network.linear_alpha,
            dtype=SAVE_DTYPES[cfg.save.dtype],
            metadata=checkpoint.lora_metadata(cfg, self.step),
        )

    def save_checkpoint(self) -> Path:
        if not self.dist.main:  # every process holds the same state; one writes it
            return self.ckpt_root / checkpoint.step_dir_name(self.step)
        rng = checkpoint.get_rng(self.generator, self.host_generator, self.device)
        state = {
            "step": self.step,
            "lora": {n: p.detach().cpu().clone() for n, p in self._lora_params().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "order": self.order.state_dict(),
            "rng": rng,
            "network": self.cfg.network.model_dump(mode="json"),
            "config": self.cfg.model_dump(mode="json"),
            "world_size": self.dist.world,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        path = checkpoint.save_checkpoint(
            self.ckpt_root, self.step, state, self.write_lora, self.cfg.save.max_step_saves_to_keep
        )
        plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        return path

    def save(self) -> Path:
        """The final LoRA, ``<run>/<name>.safetensors``, and the loss plot."""
        out = self.run_dir / f"{self.cfg.job.name}.safetensors"
        if not self.dist.main:
            return out
        self.write_lora(out)
        plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        return out

    def cleanup(self) -> None:
        self.stop.restore()
        if getattr(self, "metrics", None):
            self.metrics.close()
        self.dist.close()


def run_training(cfg: Config, force_resume: bool = False) -> Path:
    """setup -> train -> save -> cleanup; returns the final LoRA's path."""
    trainer = Trainer(cfg, force_resume)
    try:
        trainer.setup()
        trainer.train()
        return trainer.save()
    except (WriteError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in USER_WRITE_ERRNOS:
            raise
        latest = checkpoint.latest_checkpoint(trainer.ckpt_root)
        hint = f"checkpoint {latest[1].name} is intact" if latest else "no checkpoint was written yet"
        if isinstance(e, OSError):
            e = write_error(Path(e.filename or trainer.run_dir), e)
        if e.disk_full:
            raise UserError(
                f"disk full while writing {e.path}; {hint}; free space and run the same command again"
            ) from None
        raise e from None
    finally:
        trainer.cleanup()
