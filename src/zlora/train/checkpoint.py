"""Checkpoints: ``checkpoints/step-NNNNNN/`` with the user-facing ``lora.safetensors`` and ``state.pt`` (fp32
network weights, optimizer, LR scheduler, EMA, RNG and data position). A folder is written under a temporary name
and renamed when complete, so a killed process never leaves a checkpoint that looks complete. What a resume does
with one is in ``resume.py``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from zlora.runfolder import CHECKPOINT_LORA, STATE_FILE, RunFolder
from zlora.utils.io import atomic_write_text, public_mode

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything a checkpoint holds besides the config: what the optimizer steps (by model parameter name), the
    optimizer, LR schedule, data order, EMA and the generators every step draws from."""

    params: dict[str, torch.nn.Parameter]
    sync: Callable[[], None]  # the model's low-precision copies from ``params`` (no-op without masters)
    optimizer: object
    lr_scheduler: object
    order: object
    ema: object | None
    generator: torch.Generator
    host_generator: torch.Generator
    device: torch.device

    def snapshot(self, step: int, config: dict, world: int) -> dict:
        state = {
            "step": step,
            "lora": {n: p.detach().cpu().clone() for n, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "order": self.order.state_dict(),
            "rng": get_rng(self.generator, self.host_generator, self.device),
            "network": config["network"],
            "config": config,
            "world_size": world,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state


def save_checkpoint(
    run: RunFolder, step: int, state: dict, write_lora: Callable[[Path], None], keep: int
) -> Path:
    """Write ``state`` and the LoRA into a temp folder, fsync, rename to ``step-NNNNNN``, prune to ``keep``."""
    root = run.checkpoints
    root.mkdir(parents=True, exist_ok=True)
    final = run.checkpoint(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    public_mode(tmp, directory=True)  # mkdtemp makes 0700 folders
    try:
        write_lora(tmp / CHECKPOINT_LORA)
        torch.save(state, tmp / STATE_FILE)
        public_mode(tmp / STATE_FILE)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving the same step (e.g. after a resume at that step)
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for _, old in run.checkpoint_steps()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp"):  # leftovers of a killed save
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run: RunFolder) -> tuple[int, Path] | None:
    found = run.checkpoint_steps()
    return found[-1] if found else None


def lora_metadata(cfg, step: int) -> dict[str, object]:
    """What a saved LoRA says about itself (base model, step, trigger word, targets, run name)."""
    return {
        "base_model": cfg.model.name_or_path,
        "arch": cfg.model.arch,
        "step": str(step),
        "trigger_word": cfg.job.trigger_word or "",
        "target_modules": cfg.network.target_modules,
        "target_blocks": cfg.network.target_blocks,
        "name": cfg.job.name,
    }


def get_rng(generator: torch.Generator, host: torch.Generator, device: torch.device) -> dict:
    """Every random state a step draws from: the training generator, the host one (when separate), torch's."""
    rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if host is not generator:
        rng["host"] = host.get_state()
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng(rng: dict, generator: torch.Generator, host: torch.Generator, device: torch.device) -> None:
    generator.set_state(rng["generator"])
    if host is not generator and "host" in rng:
        host.set_state(rng["host"])
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def fast_forward(lr_scheduler, step: int) -> None:
    """Advance a fresh LR scheduler to ``step`` (schedules are functions of the step alone)."""
    import warnings

    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore")
        for _ in range(step):
            lr_scheduler.step()


def load_state(path: Path) -> dict:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def write_run_json(path: Path, model_ref, processes: int = 1) -> None:
    """``run.json``: the base model (reference, commit, files with the manifest's sha256 when there is one)
    and the package versions, so a run can be reproduced."""
    import platform

    import diffusers
    import peft
    import transformers

    from zlora import __version__
    from zlora.hub.manifest import read_manifest

    folder = model_ref.folder
    manifest = read_manifest(folder)  # pulled/exported models: sha256 per file, computed once at pull
    files = (
        manifest["files"]
        if manifest
        else {
            str(p.relative_to(folder)): {"size": p.stat().st_size}
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
    )
    try:  # a run's history survives its restarts
        history = json.loads(path.read_text(encoding="utf-8")).get("forced_resumes", [])
    except (OSError, ValueError):
        history = []
    info = {
        "base_model": {
            "reference": model_ref.reference,
            "folder": str(folder),
            "revision": model_ref.revision,
            "files": files,
        },
        "versions": {
            "zlora": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": platform.python_version(),
        },
        "processes": processes,
        **({"forced_resumes": history} if history else {}),
    }
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
