"""ai-toolkit job files (``job: extension``, ``config: {name, process: [...]}``, ``meta``) as zlora configs that
train what ai-toolkit trains.

Every setting ai-toolkit's Z-Image trainer reads (its config classes and the settings its UI exports, table
``KEYS``) is mapped to the zlora setting with the same effect or named in one "no equivalent" line; where a name
means something else in ai-toolkit than in zlora, the mapping prints what it did. What ai-toolkit does was read from
its code: ``toolkit/scheduler.py`` (schedules), ``toolkit/optimizer.py`` (optimizers, eps 1e-6, Prodigy's lr),
``toolkit/samplers/custom_flowmatch_sampler.py`` + ``timestep_weighing`` (``weighted``), its Z-Image model
(alpha = rank, every Linear of ``layers``) and ``BaseSDTrainProcess`` (cubic content_or_style, ``total_iters``).
Keys ai-toolkit does not read either are passed on, so the schema's "did you mean" still catches typos."""

from __future__ import annotations

import re
from typing import Any

from zlora.config.aitk_keys import (
    DATASET_NONE,
    DTYPES,
    LOKR,
    NONE,
    OFFLOADING,
    OPTIMIZERS,
    QTYPES,
    SAME,
    aitk_offloading,
    aitk_schedule,
)
from zlora.errors import UserError

TRAINER_TYPES = ("diffusion_trainer", "sd_trainer", "ui_trainer")


def is_aitk(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("config"), dict) and "process" in data["config"]


def import_aitk(data: dict) -> tuple[dict, list[str]]:
    """(zlora config dict, note lines) for the first trainer process of an ai-toolkit job file."""
    notes: list[str] = []
    procs = data["config"].get("process") or []
    procs = procs if isinstance(procs, list) else [procs]
    trainers = [i for i, p in enumerate(procs) if isinstance(p, dict) and p.get("type") in TRAINER_TYPES]
    for i, p in enumerate(procs):
        if i not in trainers[:1]:
            kind = p.get("type") if isinstance(p, dict) else type(p).__name__
            why = "zlora runs one trainer process" if i in trainers else "not a trainer"
            notes.append(f"config.process[{i}] (type {kind}) skipped: {why}")
    if not trainers:
        raise UserError(f"the ai-toolkit job has no trainer process (type {' / '.join(TRAINER_TYPES)})")
    job = _Import(notes)
    if "name" in data["config"]:
        job.set("job.name", data["config"]["name"], "config.name -> job.name")
    if "meta" in data:
        notes.append("meta: no zlora equivalent (informational), ignored")
    job.process(dict(procs[trainers[0]]))
    return job.finish(), notes


class _Import:
    def __init__(self, notes: list[str]):
        self.notes = notes
        self.out: dict[str, Any] = {"job": {}}
        self.seen: dict[str, Any] = {}  # ai-toolkit path -> value, for the settings that depend on others

    # ------------------------------------------------------------------ helpers
    def set(self, path: str, value: Any, note: str | None = None) -> None:
        node = self.out
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        if note:
            self.notes.append(note)

    def get(self, path: str, default=None):
        node: Any = self.out
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def none(self, path: str, why: str = "") -> None:
        self.notes.append(f"{path}: no zlora equivalent{f' ({why})' if why else ''}, ignored")

    # ------------------------------------------------------------------ walk
    def process(self, proc: dict) -> None:
        proc.pop("type", None)
        for key, value in proc.items():
            if key == "training_folder":
                self.set("job.output_dir", value, "training_folder -> job.output_dir")
            elif key in ("device", "trigger_word"):
                self._device(value) if key == "device" else self.set("job.trigger_word", value)
            elif key in ("network", "save", "train", "model", "sample") and isinstance(value, dict):
                for k, v in value.items():
                    self.key(f"{key}.{k}", v)
            elif key == "datasets" and isinstance(value, list):
                self.out["datasets"] = [
                    self._dataset(i, d) if isinstance(d, dict) else d for i, d in enumerate(value)
                ]
            elif f"process.{key}" in NONE:
                self.none(key, NONE[f"process.{key}"])
            else:  # unknown to ai-toolkit too: the schema names it (with "did you mean")
                self.out[key] = value

    def key(self, path: str, value: Any) -> None:
        self.seen[path] = value
        if path in OFFLOADING or path in LOKR:  # read at the end (they depend on keys that may come later)
            return
        handler = getattr(self, "_" + path.replace(".", "_"), None)
        if handler is not None:
            handler(value)
        elif path in SAME:
            self.set(
                SAME[path] or path, value, None if SAME[path] in (None, path) else f"{path} -> {SAME[path]}"
            )
        elif path in NONE:
            self.none(path, NONE[path])
        else:  # not an ai-toolkit setting either: passed on for the schema's message
            self.set(path, value)

    def _device(self, value: Any) -> None:
        if isinstance(value, str) and value.startswith("mps"):
            self.set(
                "job.device", "auto", f"device: {value} -> job.device: auto (zlora trains on CUDA or CPU)"
            )
        else:
            self.set("job.device", value)

    # ------------------------------------------------------------------ network
    def _network_type(self, value: Any) -> None:
        if value == "lokr":  # its job files train LoKr on the same modules as LoRA
            self.set("network.preset", "attn_ff_adaln", "network.type: lokr -> network.preset: attn_ff_adaln")
            self.set("network.type", "lokr")
        elif value in ("lora", "locon", "dora"):
            # ai-toolkit's Z-Image LoRA covers every Linear of the main blocks, the adaLN modulation included.
            self.set(
                "network.preset",
                "attn_ff_adaln",
                f"network.type: {value} -> network.preset: attn_ff_adaln (ai-toolkit trains every Linear of "
                "layers.*, adaLN_modulation included)",
            )
            self.set("network.type", "dora" if value == "dora" else "lora")
        else:
            self.set("network.type", value)

    def _network_rank(self, value: Any) -> None:
        self.set("network.linear", value, "network.rank -> network.linear")

    def _network_linear(self, value: Any) -> None:
        self.set("network.linear", value)

    def _network_alpha(self, value: Any) -> None:
        pass  # settled in finish(): ai-toolkit trains Z-Image LoRAs at alpha = rank

    _network_linear_alpha = _network_alpha

    def _network_dropout(self, value: Any) -> None:
        if value is not None:
            self.set("network.dropout", value)

    def _network_network_kwargs(self, value: Any) -> None:
        for k, v in (value or {}).items():
            if k == "ignore_if_contains" and v:
                self.set(
                    "network.exclude",
                    [re.escape(s) for s in v],
                    "network.network_kwargs.ignore_if_contains -> network.exclude (names containing them)",
                )
            elif k == "only_if_contains" and v:
                only = "|".join(re.escape(s) for s in v)
                self.set(
                    "network.exclude",
                    [*self.get("network.exclude", []), rf"^(?!.*({only}))"],
                    "network.network_kwargs.only_if_contains -> network.exclude (names without them)",
                )
            elif k not in ("ignore_if_contains", "only_if_contains"):
                self.none(f"network.network_kwargs.{k}")

    # ------------------------------------------------------------------ save, model
    def _save_dtype(self, value: Any) -> None:
        self.set("save.dtype", self._dtype(value, "save.dtype"))

    def _train_dtype(self, value: Any) -> None:
        self.set("model.dtype", self._dtype(value, "train.dtype"), "train.dtype -> model.dtype")

    def _model_dtype(self, value: Any) -> None:
        self.set("model.dtype", self._dtype(value, "model.dtype"))

    def _dtype(self, value: Any, where: str) -> Any:
        new = DTYPES.get(str(value).lower(), value)
        if new != value:
            self.notes.append(f"{where}: {value} -> {new}")
        return new

    def _model_qtype(self, value: Any, field: str = "model.qtype") -> None:
        new = QTYPES.get(str(value), value)
        if new != value:
            self.notes.append(
                f"{field}: {value} -> {new}"
                + (
                    ""
                    if value == "qfloat8"
                    else " (zlora stores weights in float8 or int8; the closest it has)"
                )
            )
        self.set(field, new)

    def _model_qtype_te(self, value: Any) -> None:
        self._model_qtype(value, "model.qtype_te")

    def _model_compile(self, value: Any) -> None:
        self.set("train.compile", bool(value), "model.compile -> train.compile")

    # ------------------------------------------------------------------ train
    def _train_optimizer(self, value: Any) -> None:
        name = str(value).lower()
        if name in OPTIMIZERS:
            zlora, why = OPTIMIZERS[name]
            note = (
                f"train.optimizer: {value} -> {zlora}{f' ({why})' if why else ''}"
                if zlora != value or why
                else None
            )
            self.set("train.optimizer", zlora, note)
        else:
            self.set("train.optimizer", name)

    def _train_optimizer_params(self, value: Any) -> None:
        params = dict(value or {})
        if "weight_decay" in params:
            self.set(
                "train.weight_decay",
                params.pop("weight_decay"),
                "train.optimizer_params.weight_decay -> train.weight_decay",
            )
        self.set("train.optimizer_params", params)

    def _train_gradient_accumulation_steps(self, value: Any) -> None:
        self.set(
            "train.gradient_accumulation",
            value,
            "train.gradient_accumulation_steps -> train.gradient_accumulation",
        )

    def _train_content_or_style(self, value: Any) -> None:
        bias = {"balanced": "balanced", "content": "high_noise", "style": "low_noise"}.get(value, value)
        self.set("train.timestep_bias", bias)
        if bias != "balanced":  # ai-toolkit's content/style draw cubically (BaseSDTrainProcess)
            e = float(self.seen.get("train.timestep_bias_exponent", 3.0))
            self.set(
                "train.timestep_bias_exponent",
                e,
                f"train.content_or_style: {value} -> train.timestep_bias: {bias}, timestep_bias_exponent {e:g} "
                "(ai-toolkit samples s = u^e there)",
            )

    def _train_lr_scheduler(self, value: Any) -> None:
        pass  # with its params in finish()

    _train_lr_scheduler_params = _train_min_denoising_steps = _train_max_denoising_steps = _train_lr_scheduler

    def _train_timestep_type(self, value: Any) -> None:
        known = {"sigmoid", "linear", "weighted", "shift"}
        if value in known:
            self.set("train.timestep_type", value)
        elif value in ("flux_shift", "lumina2_shift"):
            self.set(
                "train.timestep_type",
                "shift",
                f"train.timestep_type: {value} -> shift (Z-Image's static shift 3)",
            )
        else:
            self.set(
                "train.timestep_type",
                "sigmoid",
                f"train.timestep_type: {value}: no zlora equivalent; sigmoid",
            )

    def _train_skip_first_sample(self, value: Any) -> None:
        self.set("sample.skip_first_sample", value, "train.skip_first_sample -> sample.skip_first_sample")

    def _train_disable_sampling(self, value: Any) -> None:
        if value:
            self.seen["_no_samples"] = True
            self.notes.append("train.disable_sampling: true -> sample.prompts: [] (no previews)")

    def _train_loss_type(self, value: Any) -> None:
        if value in ("mse", "mae"):
            self.set("train.loss_type", value)
        else:
            self.set("train.loss_type", "mse", f"train.loss_type: {value}: no zlora equivalent; mse")

    # ------------------------------------------------------------------ sample
    def _sample_samples(self, value: Any) -> None:
        prompts = []
        for s in value or []:
            if isinstance(s, dict):
                extra = {k: s[k] for k in ("width", "height", "seed", "neg") if k in s}
                prompts.append({"prompt": s.get("prompt", ""), **extra} if extra else s.get("prompt", ""))
                for k in sorted(set(s) - {"prompt", "width", "height", "seed", "neg"}):
                    self.none(f"sample.samples[].{k}")
            else:
                prompts.append(s)
        self.set("sample.prompts", prompts, "sample.samples[].prompt -> sample.prompts")

    # ------------------------------------------------------------------ datasets
    def _dataset(self, i: int, value: dict) -> dict:
        ds: dict[str, Any] = {}
        for k, v in value.items():
            where = f"datasets[{i}].{k}"
            if k in ("cache_latents_to_disk", "cache_latents"):
                ds["cache_latents"] = bool(v) or ds.get("cache_latents", False)
                memory = " (in memory; zlora caches on disk, which covers it)" if k == "cache_latents" else ""
                self.notes.append(f"{where} -> datasets[{i}].cache_latents{memory}")
            elif k in DATASET_NONE:
                self.none(where, DATASET_NONE[k])
            else:
                ds[k] = v
        return ds

    # ------------------------------------------------------------------ what depends on several keys
    def finish(self) -> dict:
        seen, out = self.seen, self.out
        linear = seen.get("network.linear", seen.get("network.rank"))
        alpha = seen.get("network.linear_alpha", seen.get("network.alpha"))
        if linear is not None:  # ai-toolkit's Z-Image network trains at alpha = rank, whatever the file says
            note = (
                f"network.linear_alpha {alpha} -> {linear}: ai-toolkit trains Z-Image LoRAs at alpha = rank"
                if alpha not in (None, linear)
                else None
            )
            self.set("network.linear_alpha", linear, note)
        if "network.type" not in seen and "network" in out:
            self._network_type("lora")
        for key in (k for k in LOKR if k in seen):
            lokr = self.get("network.type") == "lokr"
            self.set(key, seen[key]) if lokr else self.notes.append(
                f"{key}: only for network.type lokr; ignored"
            )
        self._optimizer_defaults()
        for path, (value, note) in aitk_offloading(self.seen, self.get("model.low_vram")).items():
            self.set(path, value, note)
        self._schedule()
        self._denoising_range()
        if seen.pop("_no_samples", False):
            out.setdefault("sample", {})["prompts"] = []
        return {k: v for k, v in out.items() if v != {} or k == "job"}

    def _optimizer_defaults(self) -> None:
        """What ai-toolkit's get_optimizer passes that the libraries' defaults do not: eps 1e-6 for the Adam family,
        lr 1.0 for Prodigy when the job's lr is below 0.1."""
        name = self.get("train.optimizer", "adamw")
        params = self.get("train.optimizer_params", {}) or {}
        if (
            name in ("adamw", "adamw8bit", "adam", "adam8bit", "ademamix8bit", "prodigy")
            and "eps" not in params
        ):
            self.set(
                "train.optimizer_params",
                {**params, "eps": 1e-6},
                f"train.optimizer_params.eps: 1e-6 (what ai-toolkit passes to {name})",
            )
        if name == "prodigy" and float(self.get("train.lr", 1e-4)) < 0.1:
            self.set(
                "train.lr",
                1.0,
                "train.lr -> 1.0: ai-toolkit runs Prodigy at lr 1 when the job's lr is below 0.1",
            )

    def _schedule(self) -> None:
        name = self.seen.get("train.lr_scheduler")
        params = dict(self.seen.get("train.lr_scheduler_params") or {})
        if name is None and not params:
            return
        steps, lr = self.get("train.steps", 1000), float(self.get("train.lr", 1e-4))
        mapped, notes = aitk_schedule(name or "constant", params, steps, lr)
        self.notes += notes
        train = self.out.setdefault("train", {})
        train.pop("lr_scheduler_params", None)
        train.update(mapped)

    def _denoising_range(self) -> None:
        """ai-toolkit's min/max_denoising_steps index its flow-match timesteps, which run from 1000 down: index i
        is t = 1000 - i, so the trained range is t in [1000 - max, 1000 - min]."""
        lo, hi = self.seen.get("train.min_denoising_steps"), self.seen.get("train.max_denoising_steps")
        if lo is None and hi is None:
            return
        lo, hi = int(lo or 0), int(1000 if hi is None else hi)
        self.set("train.min_timestep", max(0, 1000 - hi))
        self.set(
            "train.max_timestep",
            min(1000, 1000 - lo),
            f"train.min/max_denoising_steps {lo}/{hi} -> train.min_timestep {max(0, 1000 - hi)}, max_timestep "
            f"{min(1000, 1000 - lo)} (ai-toolkit's indices run from t = 1000 down)",
        )
