"""The project's shape, as docs/ARCHITECTURE.md draws it: layers that import only downwards (also inside
functions), modules of at most 400 lines, every name table equal to the config Literal that names its keys, the
README's format table made from the codec table, the CLI start-up without torch, and a help text on every field."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "zlora"
# Lowest first. A module may import its own package and any package of a lower layer, nothing else.
LAYERS = [
    {"errors"},
    {"utils"},
    {"__init__"},  # the version, and torchao's notes silenced before anything imports it
    {"vocab", "runfolder"},
    {"shapes", "hub"},
    {"config"},
    {"models"},
    {"data", "lora"},
    {"train", "generate"},
    {"bench", "ui"},
    {"cli"},
    {"__main__"},
]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else "__init__"


def _layer(package: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if package in names)


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # inside functions too
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "zlora":
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "zlora"]
    return out


def test_no_module_imports_a_higher_layer_or_a_sibling_package():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        own = _package(".".join(path.relative_to(SRC.parent).with_suffix("").parts))
        for target in _imports(path):
            other = _package(target) if target != "zlora" else "__init__"
            if other != own and _layer(other) >= _layer(own):
                bad.append(f"{path.relative_to(REPO)} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long


def _literal(model, field: str) -> set:
    annotation = model.model_fields[field].annotation
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return set(typing.get_args(annotation))


def test_every_name_table_matches_its_literal():
    from zlora import vocab
    from zlora.config.network import NETWORK_TYPES, LoraNetworkConfig
    from zlora.config.optimizers import OPTIMIZERS
    from zlora.config.presets import ARCH_PRESETS
    from zlora.config.schema import ModelConfig, SaveConfig, TrainConfig
    from zlora.models.load import DTYPES
    from zlora.train.network import NETWORKS
    from zlora.train.optim import SCHEDULERS
    from zlora.train.trainer import SAVE_DTYPES

    assert _literal(TrainConfig, "optimizer") == set(OPTIMIZERS)
    assert _literal(TrainConfig, "lr_scheduler") == set(SCHEDULERS)
    assert _literal(LoraNetworkConfig, "preset") == set(vocab.TARGET_PRESETS)
    assert _literal(LoraNetworkConfig, "target_blocks") == set(vocab.BLOCK_LISTS)
    assert set(NETWORK_TYPES) == set(NETWORKS)
    assert {_literal(cls, "type").pop() for cls in NETWORK_TYPES.values()} == set(NETWORK_TYPES)
    assert _literal(ModelConfig, "arch") == set(ARCH_PRESETS)
    assert _literal(ModelConfig, "dtype") == {"auto", *DTYPES}
    assert _literal(SaveConfig, "dtype") == set(SAVE_DTYPES)
    for preset in vocab.TARGET_PRESETS.values():
        assert set(preset) <= set(vocab.COMPONENTS)
    for modules, _ in vocab.SCALE_GROUPS.values():
        assert set(modules) <= set(vocab.COMPONENTS)


def test_the_readme_format_table_is_the_codec_table():
    from zlora.lora.codecs import CODECS, consumers_table

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert consumers_table() in readme
    for name, codec in CODECS.items():
        assert f"`{name}`" in readme, f"the README never names the {name} format ({codec.label})"


def test_every_config_field_has_help_for_the_form():
    from zlora.config.network import NETWORK_TYPES
    from zlora.config.schema import Config

    missing, todo, seen = [], [Config, *NETWORK_TYPES.values()], set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            for arg in typing.get_args(field.annotation) or (field.annotation,):
                for inner in typing.get_args(arg) or (arg,):
                    if isinstance(inner, type) and hasattr(inner, "model_fields"):
                        todo.append(inner)
    assert not missing, missing


def test_the_cli_parser_and_the_ui_app_import_without_torch():
    code = (
        "import sys, tempfile, pathlib\n"
        "from zlora.cli import build_parser\nbuild_parser()\n"
        "from zlora.ui.app import create_app\ncreate_app(pathlib.Path(tempfile.mkdtemp()), start_runner=False)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stderr
