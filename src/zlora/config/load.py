"""YAML loading, ``a.b=c`` overrides and error messages that name the field and the fix."""

from __future__ import annotations

import difflib
import logging
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from zlora.config.aitk import import_aitk, is_aitk
from zlora.config.network import NETWORK_TYPES
from zlora.config.schema import Config
from zlora.errors import UserError

log = logging.getLogger(__name__)

# Names people bring from other trainers (or guess) for settings that exist here under another name.
SYNONYMS = {
    "training_adapter": "assistant_lora_path",
    "adapter": "assistant_lora_path",
    "assistant_lora": "assistant_lora_path",
    "rank": "linear",
    "network_dim": "linear",
    "alpha": "linear_alpha",
    "network_alpha": "linear_alpha",
    "learning_rate": "lr",
    "max_train_steps": "steps",
    "train_batch_size": "batch_size",
    "training_folder": "output_dir",
    "folder": "folder_path",
    "path": "name_or_path",
    "pretrained_model_name_or_path": "name_or_path",
    "save_every_n_steps": "save_every",
    "sample_every_n_steps": "sample_every",
    "num_inference_steps": "sample_steps",
    "guidance": "guidance_scale",
    "negative_prompt": "neg",
    "cache_latents_to_disk": "cache_latents",
    "caption_dropout": "caption_dropout_rate",
    "repeats": "num_repeats",
    "flip": "flip_x",
    "random_flip": "flip_x",
    "recursive": "include_subfolders",
    "cache_text_encoder_outputs": "cache_text_embeddings",
    "num_warmup_steps": "lr_warmup_steps",
    "warmup_steps": "lr_warmup_steps",
    "gradient_accumulation_steps": "gradient_accumulation",
    "lora_dropout": "dropout",
    "network_dropout": "dropout",
}


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _without_tags(loc: tuple) -> tuple:
    """pydantic puts the chosen type of a discriminated section into the location (``network.lora.linear``);
    users write ``network.linear``."""
    return tuple(p for i, p in enumerate(loc) if not (i and loc[i - 1] == "network" and p in NETWORK_TYPES))


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the last element of ``loc`` (walking lists and nested sections; the
    network section by its type)."""
    model: Any = Config
    for i, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            continue
        if i and loc[i - 1] == "network" and part in NETWORK_TYPES:
            model = NETWORK_TYPES[part]
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = model.model_fields[part].annotation
        if part == "network":
            model = NETWORK_TYPES["lora"]  # the tag follows in loc when there is one
        while typing.get_origin(model) in (list, typing.Union, typing.Optional):
            args = [a for a in typing.get_args(model) if a is not type(None)]
            model = args[0] if args else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unknown_key_message(loc: tuple) -> str:
    model = _model_at(loc)
    loc = _without_tags(loc)
    where, key = _loc_str(loc), str(loc[-1])
    valid = list(model.model_fields) if model else []
    guess = SYNONYMS.get(key) if SYNONYMS.get(key) in valid else None
    if guess is None:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        guess = close[0] if close else None
    if guess:
        fixed = _loc_str(loc[:-1] + (guess,))
        return f"`{where}` is not a setting; did you mean `{fixed}`?"
    return f"`{where}` is not a setting; valid keys here: {', '.join(valid)}"


def _field_of(err: dict) -> str:
    """The field a problem belongs to, as the user writes it (``network.type`` for an unknown network type)."""
    loc = _without_tags(tuple(err["loc"])) + (("type",) if err["type"] == "union_tag_invalid" else ())
    return _loc_str(loc)


def _format_error(err: dict) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        return _unknown_key_message(loc)
    loc = _without_tags(loc)
    if err["type"] == "union_tag_invalid":  # an unknown network.type
        tags = ", ".join(NETWORK_TYPES)
        return f"`{_loc_str(loc)}.type`: {err['ctx']['tag']!r} is not a network type; choose one of: {tags}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    where = _loc_str(loc)
    if err["type"] == "missing":
        return f"`{where}` is required"
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    if isinstance(value, bool) and err["type"] == "string_type":
        shown += '; YAML reads yes/no/on/off/true/false as booleans: quote the text, e.g. name: "off"'
    return f"`{where}`: {msg}{shown}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            k = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if k in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key `{k}` appears twice (lines {seen[k]} and {line}); keep one",
                    key_node.start_mark,
                )
            seen[k] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(e: yaml.YAMLError) -> str:
    """``line N: not valid YAML (why)``, with the fix for the commonest Windows mistake: a path in double quotes,
    where a backslash starts an escape."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark else ""
    why = str(getattr(e, "problem", None) or e)
    if "escape" in why:
        why += "; in double-quoted YAML a backslash starts an escape: write Windows paths in single quotes or with /"
    return f"{where}not valid YAML ({why})"


def read_yaml_file(path: Path):
    """The YAML document in ``path``; an unreadable or invalid file is a UserError naming it and the line."""
    try:
        return read_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path} {yaml_problem(e)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the config as UTF-8") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` / ``datasets.0.folder_path=x`` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override `{item}` must look like section.key=value, e.g. train.steps=100")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise UserError(f"override `{item}`: `{'.'.join(parts[:i])}` has {len(node)} entries")
                part = int(part)
            elif not isinstance(node, dict):
                raise UserError(f"override `{item}`: `{'.'.join(parts[:i])}` is not a section")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
    return data


def validate(data: Any) -> tuple[Config | None, list[tuple[str, str]]]:
    """(config, []) or (None, [(field path, message), ...]): every problem at once, each with the field it
    belongs to ("" for the whole config), in the words `zlora config validate` prints."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [
            ("", f"expected a mapping of sections (job, model, train, ...), got {type(data).__name__}")
        ]
    try:
        return Config.model_validate(data), []
    except ValidationError as e:
        return None, [(_field_of(err), _format_error(err)) for err in e.errors()]


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate a plain dict into a Config, reporting every problem at once as a UserError."""
    cfg, problems = validate(data)
    if problems:
        raise UserError(problems=[f"{source}: {msg}" for _, msg in problems])
    return cfg


def check_paths(cfg: Config, source: str = "config") -> None:
    """Problems that need the file system: missing dataset folders, and a run folder that would mix with a
    dataset (its checkpoints and previews among the images, then trained on)."""
    problems = []
    run = (Path(cfg.job.output_dir).expanduser() / cfg.job.name).resolve()
    for i, ds in enumerate(cfg.datasets):
        p = Path(ds.folder_path).expanduser()
        if not p.is_dir():
            what = "is not a folder" if p.exists() else "does not exist"
            problems.append(
                f"{source}: `datasets[{i}].folder_path` {what}: {p.resolve()}; point it at a folder of images"
            )
            continue
        folder = p.resolve()
        if run == folder or folder in run.parents:
            problems.append(
                f"{source}: `job.output_dir` puts the run folder {run} inside `datasets[{i}].folder_path` "
                f"{folder}; its checkpoints and previews would land among the images: choose an output_dir "
                "outside the dataset"
            )
        elif run in folder.parents:
            problems.append(
                f"{source}: `datasets[{i}].folder_path` {folder} lies inside the run folder {run}; move the "
                "dataset or choose another job.output_dir"
            )
        if ds.mask_path:
            problems += _mask_folder_problems(ds, f"{source}: `datasets[{i}].mask_path`", folder)
    if problems:
        raise UserError(problems=problems)


def _mask_folder_problems(ds, name: str, images: Path) -> list[str]:
    masks = Path(ds.mask_path).expanduser()
    if not masks.is_dir():
        what = "is not a folder" if masks.exists() else "does not exist"
        return [f"{name} {what}: {masks.resolve()}; point it at the folder of same-named mask images"]
    masks = masks.resolve()
    if masks == images or (ds.include_subfolders and images in masks.parents):
        return [
            f"{name} {masks} is read as part of the dataset's images: the masks would be trained as pictures; "
            "move them to a folder outside folder_path"
        ]
    return []


def load_config(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> Config:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"config file not found: {path}; pass the path of a YAML file, e.g. configs/quickstart.yaml"
        )
    data = read_yaml_file(path)
    if is_aitk(data):
        data, notes = import_aitk(data)
        for note in notes:
            log.info("ai-toolkit job: %s", note)
    data = apply_overrides(data if data is not None else {}, overrides or [])
    cfg = parse_config(data, source=str(path))
    if check_files:
        check_paths(cfg, source=str(path))
    return cfg


def dump_config(cfg: Config) -> str:
    """The fully resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
