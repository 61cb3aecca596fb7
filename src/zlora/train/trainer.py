"""The trainer: ``setup -> train -> save -> cleanup``. ``train()`` reads top-down; one batch's loss is
``Trainer.loss(batch)`` (``losses.Objective``)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from zlora.config import Config, dump_config
from zlora.data.loader import TrainData
from zlora.errors import UserError
from zlora.hub.manifest import hub_settings
from zlora.lora.file import save_lora
from zlora.models.load import (
    load_components,
    load_text_encoder,
    make_pipeline,
    resolve_device,
    resolve_dtype,
    resolve_file_ref,
    resolve_model,
)
from zlora.models.placement import placement_for
from zlora.models.quantize import quantize_weights
from zlora.runfolder import RunFolder
from zlora.train import checkpoint, distributed, preflight, resume
from zlora.train.adapter import ADAPTER, AdapterSwitch, adapter_params, load_training_adapter
from zlora.train.checkpoint import TrainState
from zlora.train.compile import compile_blocks
from zlora.train.ema import ema_weights, make_ema
from zlora.train.losses import Batch, Objective
from zlora.train.metrics import MetricsLog, advance, peak_memory_gib, plot_loss, progress_bar
from zlora.train.network import make_network
from zlora.train.optim import make_optimizer, make_scheduler
from zlora.train.precision import trainable_params
from zlora.train.previews import Previews
from zlora.train.runlock import RunLock, check_run_folder
from zlora.train.stop import GracefulStop, TrainingDiverged, TrainingInterrupted  # noqa: F401 - public here
from zlora.train.timesteps import sample_sigmas
from zlora.train.validation import Validation
from zlora.utils.io import USER_WRITE_ERRNOS, WriteError, write_error
from zlora.utils.machine import Machine

log = logging.getLogger(__name__)
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    def __init__(self, cfg: Config, force_resume: bool = False):
        self.cfg = cfg
        self.force_resume = force_resume
        self.forced: dict = {}  # settings changed at a --force-resume
        self.run = RunFolder.of(cfg.job.output_dir, cfg.job.name)
        self.step = 0
        self.stop = GracefulStop()
        # one process, or this one's place in a torchrun / accelerate launch
        self.dist = distributed.init(cpu=cfg.job.device == "cpu" or not torch.cuda.is_available())
        self._stop_agreed = False
        self.metrics = None  # only the main process writes the run folder
        self.lock = RunLock(self.run) if self.dist.main else None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self._check_run_folder()
        try:
            self._resolve()
            self._prepare_data()
            self._build_model()
            self._build_optimizer()
            self.step, self.forced = resume.restore(
                self.run, self.cfg, self.dist.world, self.force_resume, self.state
            )
            self._start_run()  # only now: a failed start leaves the run folder as it was
        except BaseException:  # a start that fails holds nothing (also when the caller never calls cleanup)
            if self.lock is not None:
                self.lock.release()
            raise

    def _check_run_folder(self) -> None:
        check_run_folder(self.run)
        if self.lock is not None:
            self.lock.acquire()

    def _resolve(self) -> None:
        """Device, dtype, the base model and adapter files; the datasets are scanned now, so a bad dataset fails
        before any model is loaded."""
        cfg = self.cfg
        self.dist.check_same(dump_config(cfg), "config")
        preflight.check(cfg, Machine.here())  # what the web form checks at every edit: all of it at once
        auto = cfg.job.device == "auto" and self.dist.device is not None
        self.device = self.dist.device if auto else resolve_device(cfg.job.device)
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        hub = hub_settings(cfg.hub.models_dir, cfg.hub.endpoint, cfg.hub.offline)
        self.model_ref = resolve_model(cfg.model.name_or_path, hub)
        self.data = TrainData(cfg, self.model_ref.folder, self.device, self.dtype)
        self.validation = (
            Validation(cfg, self.model_ref.folder, self.device, self.dtype) if cfg.validation.every else None
        )
        adapter = cfg.model.assistant_lora_path
        self.adapter_path = resolve_file_ref(adapter, "model.assistant_lora_path", hub) if adapter else None

    def _prepare_data(self) -> None:
        """Latents and caption embeddings, cached on disk or in memory; the text encoder is loaded only when some
        text is not cached yet, and freed before the transformer moves in."""
        cfg, folder = self.cfg, self.model_ref.folder
        log.info("loading %s from %s (%s, %s)", cfg.model.name_or_path, folder, self.dtype, self.device)
        self.parts = load_components(folder, self.dtype, text_encoder=False)
        self.parts.vae.to(self.device)
        with self.dist.main_first():  # disk caches are filled once, then read by the other processes
            self.data.prepare_latents(self.parts.vae)
            self.data.prepare_text(self._text_encoder)
            if self.validation:
                self.validation.prepare(self.parts.vae, self._text_encoder)
        if cfg.train.unload_text_encoder:
            self.parts.text_encoder = self.parts.tokenizer = None
        elif self.parts.text_encoder is not None:  # kept for later, off the device: captions are encoded
            self.parts.text_encoder.to("cpu")
        if self.data.all_latents_cached:  # the VAE is only needed on the device for previews now
            self.parts.vae.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _text_encoder(self):
        if self.parts.text_encoder is None:
            self.parts.tokenizer, self.parts.text_encoder = load_text_encoder(
                self.model_ref.folder, self.dtype
            )
            if self.cfg.model.quantize_te:
                quantize_weights(self.parts.text_encoder, self.cfg.model.qtype_te, "model.quantize_te", False)
        # low_vram: the text encoder (4 B parameters) encodes on the CPU and never takes device memory
        self.parts.text_encoder.to("cpu" if self.cfg.model.low_vram else self.device)
        return self.parts.tokenizer, self.parts.text_encoder

    def _build_model(self) -> None:
        """The transformer placed (and quantized), the network added, the training adapter beside it."""
        cfg = self.cfg
        m = cfg.model
        self.placement = placement_for(
            self.device,
            m.low_vram,
            m.blocks_to_swap,
            self.data.max_tokens(),
            cfg.train.gradient_checkpointing,
        )
        self.transformer = self.placement.place(self.parts.transformer, m.qtype if m.quantize else None)
        self.network = make_network(cfg.network)
        self.network.add(self.transformer, cfg.train.seed)
        if cfg.train.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if self.adapter_path:
            load_training_adapter(self.transformer, self.adapter_path)
        self.placement.attach(self.transformer)  # swapped blocks: hooks, their LoRA and adapter on the device
        self.adapters = AdapterSwitch(self.transformer, self.adapter_path is not None)
        self.adapters.train()
        blocks = self.placement.compiled_blocks(self.transformer)
        self.compiled = compile_blocks(self.transformer, cfg.train.compile, self.device, blocks)
        frozen = list(adapter_params(self.transformer, ADAPTER).values()) if self.adapter_path else []
        self.masters, self.lora_params = trainable_params(
            self.network.trainable(self.transformer), frozen, cfg.train.lora_precision, self.dtype
        )
        self.params = list(self.lora_params.values())  # what the optimizer steps (fp32 masters, if any)
        self.objective = Objective(cfg, self.data, self.transformer, self.adapters, self.dtype)

    def _build_optimizer(self) -> None:
        """Optimizer, LR schedule, EMA, the data order and the generators: the state a checkpoint holds."""
        cfg = self.cfg
        optimizer = make_optimizer(cfg.train, self.params)
        ema = make_ema(self.params, cfg.train.ema_config.ema_decay) if cfg.train.ema_config.use_ema else None
        generator = torch.Generator(self.device).manual_seed(cfg.train.seed)
        # Caption dropout decides on the host which embedding to use: drawn on the device, that is a sync per step.
        # On CPU it is the same generator; on a GPU a host generator of its own, checkpointed too.
        host = generator if self.device.type == "cpu" else torch.Generator().manual_seed(cfg.train.seed)
        self.state = TrainState(
            params=self.lora_params,
            sync=self._sync_model,
            optimizer=optimizer,
            lr_scheduler=make_scheduler(cfg.train, optimizer, cfg.train.steps),
            order=self.data.order(self.dist.world),  # global batches; each process trains its share
            ema=ema,
            generator=generator,
            host_generator=host,
            device=self.device,
        )

    def _start_run(self) -> None:
        """The run folder's config.yaml, run.json and metrics.jsonl (main process), the preview pipeline."""
        cfg = self.cfg
        if self.dist.main:
            if self.run.owner() is None:
                self.run.claim("zlora train")
            resume.keep_old_config(self.run, dump_config(cfg), self.step)
            checkpoint.write_run_json(self.run.run_json, self.model_ref, self.dist.world)
            if self.forced:
                resume.record_forced(self.run.run_json, self.step, self.forced)
            self.metrics = MetricsLog(self.run.metrics, resume_step=self.step)
        self.pipe = make_pipeline(self.parts)
        judged = self.model_ref.reference == "builtin:shapes"
        parts = (
            self.pipe,
            self.data,
            self.adapters,
            self.ema_weights,
            self.placement,
            self.run,
            self.metrics,
        )
        self.previews = Previews(cfg, *parts, judged=judged)
        trigger = cfg.job.trigger_word
        if trigger and cfg.sample.prompts and all(trigger in p.prompt for p in cfg.sample.prompt_list()):
            log.info(
                "tip: add a preview prompt without %r; if it drifts during training, the LoRA leaks", trigger
            )

    def ema_weights(self):
        """The EMA weights in place of the trained ones (previews, saved files); a no-op without EMA."""
        return ema_weights(self.state.ema, self.params, self._sync_model)

    def _sync_model(self) -> None:
        """The model's low-precision LoRA weights from the fp32 masters (no-op without masters)."""
        if self.masters is not None:
            self.masters.to_model()

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        cfg = self.cfg
        if self.step >= cfg.train.steps:
            return log.info(
                "already trained to step %d (train.steps=%d); raise it", self.step, cfg.train.steps
            )
        self.stop.install()
        if self.step == 0 and cfg.sample.prompts and not cfg.sample.skip_first_sample:
            self.sample()
        if self.step == 0:
            self._validate(0)  # the baseline: the validation curve starts before any training
        self.transformer.train()
        first = self.step
        with progress_bar(
            self.cfg.train.steps, self.step, self.dist.main
        ) as bar:  # closed on any exit, so an error starts a line of its own
            while self.step < cfg.train.steps:
                t0 = time.perf_counter()
                loss = self.step_once()
                self.step += 1
                self._report(bar, loss, time.perf_counter() - t0, warm_up=self.step == first + 1)

                done = self.step == cfg.train.steps
                stop = self._stop_requested()
                if self.step % cfg.save.save_every == 0 or done or stop:
                    self.save_checkpoint()
                if cfg.sample.prompts and (self.step % cfg.sample.sample_every == 0 or done):
                    self.sample()
                self._validate(self.step)
                if stop and not done:
                    raise self.stop.interrupted(self.step, self.run.checkpoint(self.step))
        # From here Ctrl-C aborts at once (exit 130): the last checkpoint holds every step, and a stop
        # requested now would otherwise go unnoticed while the final LoRA is written.
        self.stop.restore()
        if self.stop.signal is not None:
            log.warning("stop requested at the last step: the run is complete")

    def _report(self, bar, loss: float, seconds: float, warm_up: bool) -> None:
        """One step into metrics.jsonl and the progress bar."""
        lr, mem = self.state.lr_scheduler.get_last_lr()[0], peak_memory_gib(self.device)
        if self.compiled and warm_up:
            log.info("compile warm-up: first step took %.1f s", seconds)
        if self.metrics:
            self.metrics.log(
                step=self.step, loss=loss, lr=lr, seconds=round(seconds, 6), mem_gib=round(mem, 3)
            )
        advance(bar, loss, lr, seconds, mem)

    def step_once(self) -> float:
        """One optimizer step over ``gradient_accumulation`` batches; returns the loss. In a distributed launch the
        batches are global: every process draws the whole step's randomness and trains its share of each batch."""
        cfg, st = self.cfg.train, self.state
        batches = [st.order.next_batch() for _ in range(cfg.gradient_accumulation)]  # each from one bucket
        flat = [i for b in batches for i in b]
        # All randomness of the step is drawn first, in sample order: 2 batches of 1 draw what 1 batch of 2 does,
        # and so do 2 processes with 1 sample each.
        caps = self.data.captions(flat, st.host_generator)  # (L_i, D) each: caption lengths differ
        sigmas = sample_sigmas(cfg, len(flat), st.generator, self.device)
        noise = [
            torch.randn(self.data.latent_shape(i, self.parts.vae), generator=st.generator, device=self.device)
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
            loss = self.loss(Batch(mine, x0, noise[share], sigmas[share], caps[share])) * (
                len(mine) / len(flat)
            )
            loss.backward()
            total += loss.detach().float()  # on the device: the step's one host sync is below
        if self.masters is not None:
            self.masters.grads_to_master()
        total, stops = self.dist.all_reduce(self.params, total, float(self.stop.signal is not None))
        self._stop_agreed = stops > 0  # every process stops after the same step
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        st.optimizer.step()
        self._sync_model()
        st.lr_scheduler.step()
        st.optimizer.zero_grad(set_to_none=True)
        if st.ema is not None:
            st.ema.step(self.params)
        if not math.isfinite(total):
            latest = checkpoint.latest_checkpoint(self.run)
            raise TrainingDiverged.at(total, self.step + 1, latest[1].name if latest else None)
        return total

    def loss(self, batch: Batch) -> torch.Tensor:
        """The loss of one batch for the model as it is (flow matching, prior_reg targets, DOP)."""
        return self.objective.loss(batch)

    def _stop_requested(self) -> bool:
        return self._stop_agreed if self.dist.active else self.stop.signal is not None

    def _validate(self, step: int) -> None:
        """The validation loss when due (``validation.every``), into metrics.jsonl and the log."""
        if self.validation and self.dist.main and self.validation.due(step, self.cfg.train.steps):
            loss = self.validation.loss(self.transformer, self.parts.vae)
            log.info("validation loss at step %d: %.5f", step, loss)
            if self.metrics:
                self.metrics.log(step=step, val_loss=round(loss, 6))

    def sample(self) -> None:
        """A preview grid of the model as it is now (and on builtin:shapes, the judge's scores)."""
        if self.dist.main:
            self.previews.render(self.step)

    # ------------------------------------------------------------------ save
    def write_lora(self, path: Path) -> None:
        """The LoRA as users load it: the EMA weights when EMA is on."""
        cfg = self.cfg
        with self.ema_weights():
            modules = self.network.export(self.lora_params, SAVE_DTYPES[cfg.save.dtype])
        meta = {**self.network.describe(), **checkpoint.lora_metadata(cfg, self.step)}
        save_lora(path, modules, metadata=meta)

    def save_checkpoint(self) -> Path:
        if not self.dist.main:  # every process holds the same state; one writes it
            return self.run.checkpoint(self.step)
        state = self.state.snapshot(self.step, self.cfg.model_dump(mode="json"), self.dist.world)
        path = checkpoint.save_checkpoint(
            self.run, self.step, state, self.write_lora, self.cfg.save.max_step_saves_to_keep
        )
        plot_loss(self.run.metrics, self.run.loss_plot)
        return path

    def save(self) -> Path:
        """The final LoRA, ``<run>/<name>.safetensors``, and the loss plot."""
        out = self.run.final_lora
        if not self.dist.main:
            return out
        self.write_lora(out)
        plot_loss(self.run.metrics, self.run.loss_plot)
        return out

    def cleanup(self) -> None:
        self.stop.restore()
        if self.metrics:
            self.metrics.close()
        if self.lock is not None:
            self.lock.release()
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
        latest = checkpoint.latest_checkpoint(trainer.run)
        hint = f"checkpoint {latest[1].name} is intact" if latest else "no checkpoint was written yet"
        if isinstance(e, OSError):
            e = write_error(Path(e.filename or trainer.run.root), e)
        if e.disk_full:
            raise UserError(
                f"disk full while writing {e.path}; {hint}; free space and run the same command again"
            ) from None
        raise e from None
    finally:
        trainer.cleanup()
