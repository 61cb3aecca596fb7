"""The trainer: ``setup -> train -> save -> cleanup``. ``train()`` reads top-down; the loss is one line in ``step()``."""

from __future__ import annotations

import json
import logging
import math
import platform
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from zlora import __version__
from zlora.config import Config, dump_config
from zlora.data.loader import TrainData
from zlora.errors import UserError
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
from zlora.train import checkpoint
from zlora.train.metrics import MetricsLog, plot_loss
from zlora.train.sampling import render_previews
from zlora.train.timesteps import sample_sigmas
from zlora.utils.io import atomic_write_text

log = logging.getLogger(__name__)
USER_LORA = "default"  # peft's name for the adapter add_adapter creates: the LoRA being trained
ADAPTER = "assistant"  # the Turbo training adapter (model.assistant_lora_path)
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingInterrupted(Exception):
    """Raised after the emergency checkpoint of a SIGINT/SIGTERM has been written."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_dir = Path(cfg.job.output_dir).expanduser() / cfg.job.name
        self.ckpt_root = self.run_dir / "checkpoints"
        self.step = 0
        self._stop_signal: int | None = None
        self._old_handlers: dict[int, object] = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.job.device)
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        self.model_ref = resolve_model(cfg.model.name_or_path)
        # Scans the datasets now, so a bad dataset fails before any model is loaded.
        self.data = TrainData(cfg, self.model_ref.folder, self.device, self.dtype)
        adapter = cfg.model.assistant_lora_path
        self.adapter_path = resolve_file_ref(adapter, "model.assistant_lora_path") if adapter else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
        self._write_run_json()

        log.info("loading %s from %s (%s, %s)", cfg.model.name_or_path, self.model_ref.folder, self.dtype,
                 self.device)  # fmt: skip
        self.parts = load_components(self.model_ref.folder, self.dtype, text_encoder=False)
        self.parts.vae.to(self.device)
        self.data.prepare_latents(self.parts.vae)
        self.data.prepare_text(self._text_encoder)
        if cfg.train.unload_text_encoder:  # free it before the transformer moves in
            self.parts.text_encoder = self.parts.tokenizer = None
        if self.data.all_latents_cached:  # the VAE is only needed on the device for previews now
            self.parts.vae.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

        self.transformer = self.parts.transformer.to(self.device)
        self._add_lora()
        if self.adapter_path:
            self._load_training_adapter()
        self.params = [p for p in self.transformer.parameters() if p.requires_grad]
        try:
            self.optimizer = torch.optim.AdamW(self.params, lr=cfg.train.lr, **cfg.train.optimizer_params)
        except (TypeError, ValueError) as e:
            raise UserError(f"`train.optimizer_params` for {cfg.train.optimizer}: {e}") from None
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            cfg.train.lr_scheduler, self.optimizer,
            num_warmup_steps=cfg.train.lr_warmup_steps, num_training_steps=cfg.train.steps,
        )  # fmt: skip
        self.order = self.data.order()
        self.generator = torch.Generator(self.device).manual_seed(cfg.train.seed)
        self._resume()
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=self.step)
        self.pipe = make_pipeline(self.parts)

    def _write_run_json(self) -> None:
        import diffusers
        import peft
        import transformers

        folder = self.model_ref.folder
        files = {
            str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()
        }
        info = {
            "base_model": {"reference": self.model_ref.reference, "folder": str(folder),
                           "revision": self.model_ref.revision, "file_sizes": files},
            "versions": {"zlora": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__,
                         "python": platform.python_version()},
        }  # fmt: skip
        atomic_write_text(self.run_dir / "run.json", json.dumps(info, indent=2) + "\n")

    def _text_encoder(self):
        """Loaded on the device only when some text is not cached yet."""
        if self.parts.text_encoder is None:
            self.parts.tokenizer, self.parts.text_encoder = load_text_encoder(
                self.model_ref.folder, self.dtype
            )
        self.parts.text_encoder.to(self.device)
        return self.parts.tokenizer, self.parts.text_encoder

    def _add_lora(self) -> None:
        from peft import LoraConfig

        net = self.cfg.network
        blocks = "|".join(net.target_blocks)
        modules = "|".join(m.replace(".", r"\.") for m in net.target_modules)
        self.lora_config = LoraConfig(
            r=net.linear, lora_alpha=net.linear_alpha, init_lora_weights=True,
            target_modules=rf"^({blocks})\.\d+\.({modules})$",
        )  # fmt: skip
        torch.manual_seed(self.cfg.train.seed)  # LoRA A init
        try:
            self.transformer.add_adapter(self.lora_config, adapter_name=USER_LORA)
        except ValueError as e:
            raise UserError(f"`network.target_modules` matched no module of the transformer ({e})") from None
        for p in self.transformer.parameters():
            if p.requires_grad:  # trainable LoRA weights stay fp32 whatever the base dtype
                p.data = p.data.float()
        if self.cfg.train.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    def _load_training_adapter(self) -> None:
        """The Turbo training adapter: a second, frozen LoRA that de-distils Turbo while training. It stays a
        separate adapter (never merged), so switching it off for previews is exact and it is never saved."""
        from diffusers import ZImagePipeline

        try:  # diffusers' converter reads every Z-Image LoRA key format (ai-toolkit, kohya, diffusers, ...)
            state = ZImagePipeline.lora_state_dict(str(self.adapter_path))
            self.transformer.load_lora_adapter(state, adapter_name=ADAPTER, prefix="transformer")
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise UserError(
                f"`model.assistant_lora_path` {self.adapter_path}: not a Z-Image LoRA ({type(e).__name__}: {e})"
            ) from None
        # diffusers only warns when no key matches the model; a silently ignored adapter would ruin the run.
        if ADAPTER not in getattr(self.transformer, "peft_config", {}):
            raise UserError(
                f"`model.assistant_lora_path` {self.adapter_path}: no key matches a Z-Image transformer module; "
                "is it a LoRA for another model (SDXL, Flux, ...)?"
            )
        self._use_adapter(training=True)
        log.info("training adapter %s loaded (active in training, off for previews)", self.adapter_path)

    def _use_adapter(self, training: bool) -> None:
        """Training forwards see user LoRA + adapter; previews the user LoRA alone. Only the user LoRA trains."""
        if not self.adapter_path:
            return
        self.transformer.set_adapters([USER_LORA, ADAPTER] if training else [USER_LORA])
        for name, p in self.transformer.named_parameters():
            if ".lora_" in name:  # peft's set_adapters marks every active adapter trainable: undo that
                p.requires_grad_(f".{USER_LORA}." in name)

    def _resume(self) -> None:
        found = checkpoint.latest_checkpoint(self.ckpt_root)
        if found is None:
            return
        step, path = found
        state = checkpoint.load_state(path)
        if state["network"] != self.cfg.network.model_dump(mode="json"):
            raise UserError(
                f"{path} was trained with different `network` settings; "
                "restore them or start a new run (change job.name)"
            )
        named = self._lora_params()
        missing = set(named) ^ set(state["lora"])
        if missing:
            raise UserError(f"{path}: checkpoint LoRA does not match the model ({sorted(missing)[:3]} ...)")
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(state["lora"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.order.load_state_dict(state["order"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = step
        log.info("resumed from %s (step %d)", path, step)

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        cfg = self.cfg
        if self.step >= cfg.train.steps:
            log.info("already trained to step %d (train.steps=%d); raise train.steps to continue", self.step,
                     cfg.train.steps)  # fmt: skip
            return
        self._install_signal_handlers()
        if self.step == 0 and cfg.sample.prompts:
            self.sample()
        self.transformer.train()
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 10)  # fmt: skip
        while self.step < cfg.train.steps:
            t0 = time.perf_counter()
            loss = self.step_once()
            self.step += 1
            lr = self.lr_scheduler.get_last_lr()[0]
            self.metrics.log(step=self.step, loss=loss, lr=lr, seconds=round(time.perf_counter() - t0, 6))
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)  # bar.update() redraws
            bar.update()

            done = self.step == cfg.train.steps
            if self.step % cfg.save.save_every == 0 or done or self._stop_signal is not None:
                self.save_checkpoint()
            if cfg.sample.prompts and (self.step % cfg.sample.sample_every == 0 or done):
                self.sample()
            if self._stop_signal is not None and not done:
                bar.close()
                raise self._interrupted()
        bar.close()

    def step_once(self) -> float:
        """One optimizer step on one batch; returns the loss."""
        cfg = self.cfg
        idx = self.order.next_batch()  # one bucket: every latent has the same size
        x0 = self.data.latents(idx, self.parts.vae)  # B x (C, h, w)
        caps = self.data.captions(idx, self.generator)  # B x (L_i, D): caption lengths differ
        sigmas = sample_sigmas(cfg.train.timestep_type, len(idx), self.generator, self.device)
        noise = [torch.randn(x.shape, generator=self.generator, device=self.device) for x in x0]

        x_s = [zimage.noisy_latents(x, n, s) for x, n, s in zip(x0, noise, sigmas, strict=True)]
        pred = zimage.predict(self.transformer, x_s, sigmas, caps, self.dtype)
        target = [zimage.velocity_target(x, n) for x, n in zip(x0, noise, strict=True)]
        # Mean over each sample, then over the batch: samples of different sizes weigh the same.
        loss = torch.stack([F.mse_loss(p.float(), t) for p, t in zip(pred, target, strict=True)]).mean()

        loss.backward()
        if cfg.train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.train.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(
                f"loss is {value} at step {self.step + 1}; lower train.lr or use model.dtype=fp32"
            )
        return value

    @torch.no_grad()
    def sample(self) -> None:
        was_training = self.transformer.training
        self.transformer.eval()
        self._use_adapter(training=False)
        tag = checkpoint.step_dir_name(self.step)
        s, vae = self.cfg.sample, self.parts.vae
        vae_home = vae.device
        vae.to(self.device)
        embeds = [self.data.embedding(p) for p in s.prompts]
        path = render_previews(self.pipe, s.prompts, embeds, self.data.embedding(s.neg), s, self.run_dir / "samples",
                               tag)  # fmt: skip
        vae.to(vae_home)
        log.info("preview grid: %s", path)
        self._use_adapter(training=True)
        self.transformer.train(was_training)

    # ------------------------------------------------------------------ save
    def _lora_params(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.transformer.named_parameters() if p.requires_grad}

    def _lora_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.transformer, adapter_name=USER_LORA)

    def write_lora(self, path: Path) -> None:
        cfg = self.cfg
        save_lora(
            path, self._lora_state(), rank=cfg.network.linear, alpha=cfg.network.linear_alpha,
            dtype=SAVE_DTYPES[cfg.save.dtype],
            metadata={"base_model": cfg.model.name_or_path, "arch": cfg.model.arch, "step": str(self.step),
                      "trigger_word": cfg.job.trigger_word or "", "target_modules": cfg.network.target_modules,
                      "target_blocks": cfg.network.target_blocks, "name": cfg.job.name},
        )  # fmt: skip

    def save_checkpoint(self) -> Path:
        rng = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "step": self.step,
            "lora": {n: p.detach().cpu().clone() for n, p in self._lora_params().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "order": self.order.state_dict(),
            "rng": rng,
            "network": self.cfg.network.model_dump(mode="json"),
        }
        path = checkpoint.save_checkpoint(
            self.ckpt_root, self.step, state, self.write_lora, self.cfg.save.max_step_saves_to_keep
        )
        plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        return path

    def save(self) -> Path:
        """The final LoRA, ``<run>/<name>.safetensors``, and the loss plot."""
        out = self.run_dir / f"{self.cfg.job.name}.safetensors"
        self.write_lora(out)
        plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        return out

    def cleanup(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()
        if hasattr(self, "metrics"):
            self.metrics.close()

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled on the main thread (e.g. a UI worker thread)

        def request_stop(signum, frame):
            if self._stop_signal is not None:  # second Ctrl-C: stop now, without a checkpoint
                raise KeyboardInterrupt
            self._stop_signal = signum
            log.warning("%s received: finishing this step and writing a checkpoint (again to abort now)",
                        signal.Signals(signum).name)  # fmt: skip

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, request_stop)

    def _interrupted(self) -> TrainingInterrupted:
        ckpt = self.ckpt_root / checkpoint.step_dir_name(self.step)
        return TrainingInterrupted(
            f"stopped at step {self.step}; checkpoint written to {ckpt}. "
            "Run the same command again to resume from it.",
            exit_code=128 + int(self._stop_signal or signal.SIGINT),
        )


def run_training(cfg: Config) -> Path:
    """setup -> train -> save -> cleanup; returns the final LoRA's path."""
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        trainer.train()
        return trainer.save()
    finally:
        trainer.cleanup()
