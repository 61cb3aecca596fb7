"""The bad-input corpus: every case is a command a user could type. Each must end with exit code 2 and one
`zlora: error:` line that names the problem (never a traceback, never a silent exit 0), and must leave every file
in the workspace as it was (hashed before and after)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zlora.cli import main
from zlora.lora.codecs import write_modules
from zlora.lora.modules import LoraModule

TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0", "feed_forward.w1")


def _lora(transformer, seed: int, rank: int = 4) -> dict[str, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: LoraModule(
            torch.randn(rank, mod.in_features, generator=g) * 0.1,
            torch.randn(mod.out_features, rank, generator=g) * 0.1,
            2.0,
        )
        for name, mod in transformer.named_modules()
        if name.startswith("layers.") and name.endswith(TARGETS)
    }


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_dir) -> Path:
    """A workspace: good LoRAs, broken and foreign files, and a copy of the tiny model."""
    from diffusers import ZImageTransformer2DModel

    root = tmp_path_factory.mktemp("ws")
    model = root / "model"
    shutil.copytree(tiny_dir, model)
    transformer = ZImageTransformer2DModel.from_pretrained(model, subfolder="transformer")
    save_file(write_modules(_lora(transformer, 0), "zlora"), str(root / "a.safetensors"))
    save_file(write_modules(_lora(transformer, 1), "zlora"), str(root / "b.safetensors"))
    nan = _lora(transformer, 2)
    nan[next(iter(nan))].B[0, 0] = float("nan")
    save_file(write_modules(nan, "zlora"), str(root / "nan.safetensors"))
    mismatch = {k: v for k, v in write_modules(_lora(transformer, 3), "zlora").items()}
    key = next(k for k in mismatch if k.endswith("lora_B.weight"))
    mismatch[key] = mismatch[key][:, :3].contiguous()
    save_file(mismatch, str(root / "mismatch.safetensors"))
    sdxl = {
        f"lora_unet_down_blocks_0_attentions_0_proj_in.lora_{d}.weight": torch.zeros(4, 4)
        for d in ("down", "up")
    }
    save_file(
        {
            **sdxl,
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 4),
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 4),
        },
        str(root / "sdxl.safetensors"),
    )
    save_file(
        {
            f"transformer.single_transformer_blocks.0.attn.to_q.lora_{d}.weight": torch.zeros(4, 4)
            for d in ("A", "B")
        },
        str(root / "flux.safetensors"),
    )
    (root / "empty.safetensors").write_bytes(b"")
    good = (root / "a.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (root / "text.safetensors").write_text("this is not a tensor file\n" * 10)
    (root / "pickle.safetensors").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    (root / "plainfile").write_text("x")
    (root / "existing.safetensors").write_bytes(good)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


CASES = [
    # ---- data loss: outputs over inputs, into the model folder, over existing files
    (
        "bake-into-model",
        [
            "lora",
            "bake",
            "--base",
            "{ws}/model",
            "--lora",
            "{ws}/a.safetensors",
            "--out",
            "{ws}/model/transformer/diffusion_pytorch_model.safetensors",
        ],
        "inside the model folder",
    ),
    (
        "bake-folder-in-model",
        ["lora", "bake", "--base", "{ws}/model", "--lora", "{ws}/a.safetensors", "-o", "{ws}/model"],
        "inside the model folder",
    ),
    (
        "bake-over-lora",
        ["lora", "bake", "--base", "{ws}/model", "--lora", "{ws}/a.safetensors", "-o", "{ws}/a.safetensors"],
        "also an input",
    ),
    (
        "convert-over-input",
        ["lora", "convert", "{ws}/a.safetensors", "{ws}/a.safetensors", "--to", "kohya"],
        "also an input",
    ),
    (
        "convert-over-input-dotted",
        ["lora", "convert", "{ws}/a.safetensors", "-o", "{ws}/./a.safetensors", "--to", "kohya"],
        "also an input",
    ),
    (
        "scale-over-input",
        ["lora", "scale", "{ws}/a.safetensors", "-o", "{ws}/a.safetensors", "--ratio", "2"],
        "also an input",
    ),
    (
        "merge-over-input",
        ["lora", "merge", "{ws}/a.safetensors", "{ws}/b.safetensors:0.5", "-o", "{ws}/b.safetensors"],
        "also an input",
    ),
    (
        "resize-over-input",
        ["lora", "resize", "{ws}/a.safetensors", "{ws}/a.safetensors", "--rank", "2"],
        "also an input",
    ),
    (
        "extract-over-input",
        [
            "lora",
            "extract",
            "--base",
            "{ws}/model",
            "--tuned",
            "{ws}/model",
            "--rank",
            "2",
            "-o",
            "{ws}/model/transformer/diffusion_pytorch_model.safetensors",
        ],
        "also an input",
    ),
    (
        "convert-existing",
        ["lora", "convert", "{ws}/a.safetensors", "-o", "{ws}/existing.safetensors", "--to", "kohya"],
        "exists; add --overwrite",
    ),
    (
        "generate-existing",
        ["generate", "--model", "{ws}/model", "--prompt", "x", "-o", "{ws}/existing.safetensors"],
        "image file name",
    ),
    (
        "two-outputs",
        [
            "lora",
            "convert",
            "{ws}/a.safetensors",
            "{ws}/x.safetensors",
            "-o",
            "{ws}/y.safetensors",
            "--to",
            "kohya",
        ],
        "two outputs",
    ),
    ("no-output", ["lora", "resize", "{ws}/a.safetensors", "--rank", "2"], "no output given"),
    # ---- exit 0 with useless output before
    (
        "generate-nan-lora",
        [
            "generate",
            "--model",
            "{ws}/model",
            "--prompt",
            "x",
            "--lora",
            "{ws}/nan.safetensors",
            "-o",
            "{ws}/new.png",
        ],
        "NaN",
    ),
    (
        "resize-rank-negative",
        ["lora", "resize", "{ws}/a.safetensors", "-o", "{ws}/new.safetensors", "--rank", "-3"],
        "positive integer",
    ),
    (
        "resize-rank-zero",
        ["lora", "resize", "{ws}/a.safetensors", "-o", "{ws}/new.safetensors", "--rank", "0"],
        "positive integer",
    ),
    (
        "merge-rank-zero",
        [
            "lora",
            "merge",
            "{ws}/a.safetensors",
            "{ws}/b.safetensors",
            "-o",
            "{ws}/new.safetensors",
            "--rank",
            "0",
        ],
        "positive integer",
    ),
    (
        "convert-sdxl",
        ["lora", "convert", "{ws}/sdxl.safetensors", "-o", "{ws}/new.safetensors", "--to", "zlora"],
        "SDXL",
    ),
    (
        "merge-sdxl",
        ["lora", "merge", "{ws}/a.safetensors", "{ws}/sdxl.safetensors", "-o", "{ws}/new.safetensors"],
        "SDXL",
    ),
    ("inspect-flux", ["lora", "inspect", "{ws}/flux.safetensors"], "Flux"),
    (
        "scale-flux",
        ["lora", "scale", "{ws}/flux.safetensors", "-o", "{ws}/new.safetensors"],
        "--allow-foreign",
    ),
    (
        "generate-sdxl",
        [
            "generate",
            "--model",
            "{ws}/model",
            "--prompt",
            "x",
            "--lora",
            "{ws}/sdxl.safetensors",
            "-o",
            "{ws}/new.png",
        ],
        "SDXL",
    ),
    (
        "bake-sdxl",
        [
            "lora",
            "bake",
            "--base",
            "{ws}/model",
            "--lora",
            "{ws}/sdxl.safetensors",
            "-o",
            "{ws}/new.safetensors",
        ],
        "SDXL",
    ),
    (
        "layers-match-nothing",
        ["lora", "scale", "{ws}/a.safetensors", "-o", "{ws}/new.safetensors", "--layers", "40-49:0.5"],
        "does not have",
    ),
    (
        "layers-overlap",
        ["lora", "scale", "{ws}/a.safetensors", "-o", "{ws}/new.safetensors", "--layers", "0-1:0.5,1:2"],
        "overlaps",
    ),
    (
        "component-match-nothing",
        ["lora", "scale", "{ws}/a.safetensors", "-o", "{ws}/new.safetensors", "--adaln", "0"],
        "matches no module",
    ),
    (
        "merge-layers-match-nothing",
        ["lora", "merge", "{ws}/a.safetensors[layers=7-9:0.5]", "-o", "{ws}/new.safetensors"],
        "does not have",
    ),
    # ---- tracebacks before
    (
        "endpoint-unreachable",
        ["models", "pull", "acme/x", "--endpoint", "http://127.0.0.1:9", "--models-dir", "{ws}/models"],
        "cannot reach http://127.0.0.1:9",
    ),
    (
        "endpoint-malformed",
        ["models", "pull", "acme/x", "--endpoint", "htp:/nowhere", "--models-dir", "{ws}/models"],
        "is not a URL",
    ),
    ("pull-to-file", ["models", "pull", "acme/x", "--to", "{ws}/plainfile"], "is a file"),
    ("inspect-empty", ["lora", "inspect", "{ws}/empty.safetensors"], "empty.safetensors: the file is empty"),
    ("inspect-truncated", ["lora", "inspect", "{ws}/truncated.safetensors"], "truncated"),
    ("inspect-text", ["lora", "inspect", "{ws}/text.safetensors"], "not a valid safetensors"),
    ("inspect-pickle", ["lora", "inspect", "{ws}/pickle.safetensors"], "pickle"),
    (
        "convert-empty",
        ["lora", "convert", "{ws}/empty.safetensors", "-o", "{ws}/new.safetensors", "--to", "kohya"],
        "the file is empty",
    ),
    (
        "merge-truncated",
        ["lora", "merge", "{ws}/a.safetensors", "{ws}/truncated.safetensors", "-o", "{ws}/new.safetensors"],
        "truncated",
    ),
    (
        "resize-text",
        ["lora", "resize", "{ws}/text.safetensors", "-o", "{ws}/new.safetensors", "--rank", "2"],
        "not a valid",
    ),
    (
        "extract-truncated",
        [
            "lora",
            "extract",
            "--base",
            "{ws}/model",
            "--tuned",
            "{ws}/truncated.safetensors",
            "--rank",
            "2",
            "-o",
            "{ws}/new.safetensors",
        ],
        "truncated",
    ),
    (
        "generate-empty-lora",
        [
            "generate",
            "--model",
            "{ws}/model",
            "--prompt",
            "x",
            "--lora",
            "{ws}/empty.safetensors",
            "-o",
            "{ws}/new.png",
        ],
        "the file is empty",
    ),
    (
        "rank-mismatch",
        ["lora", "inspect", "{ws}/mismatch.safetensors"],
        "has rank 4 but lora_B/up has rank 3",
    ),
    (
        "output-under-file",
        ["lora", "convert", "{ws}/a.safetensors", "-o", "{ws}/plainfile/new.safetensors", "--to", "kohya"],
        "is a file, not a folder",
    ),
    (
        "relative-model-missing",
        ["generate", "--model", "./no/such/model", "--prompt", "x", "-o", "{ws}/new.png"],
        "folder not found",
    ),
    (
        "generate-steps-zero",
        ["generate", "--model", "{ws}/model", "--prompt", "x", "--steps", "0", "-o", "{ws}/new.png"],
        "--steps 0",
    ),
    (
        "lora-bad-weight",
        [
            "generate",
            "--model",
            "{ws}/model",
            "--prompt",
            "x",
            "--lora",
            "{ws}/a.safetensors:strong",
            "-o",
            "{ws}/new.png",
        ],
        "must be a number",
    ),
    ("lora-missing", ["lora", "inspect", "{ws}/nope.safetensors"], "not found"),
    # ---- one CLI convention
    (
        "scale-old-out-multiplier",
        ["lora", "scale", "{ws}/a.safetensors", "-o", "{ws}/new.safetensors", "--out", "0.5"],
        "--attn-out 0.5",
    ),
    ("scale-old-out-file", ["lora", "scale", "{ws}/a.safetensors", "--out", "{ws}/new.safetensors"], "-o "),
]


@pytest.mark.parametrize("name,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, args, message, ws, capsys, monkeypatch):
    if name.startswith("endpoint"):
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = _snapshot(ws)
    code, err = _run([a.replace("{ws}", str(ws)) for a in args], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("zlora: error:")]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert _snapshot(ws) == before, "a refused command modified files"


def test_malformed_hf_endpoint_from_the_environment(ws, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "ftp//mirror")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code, err = _run(["models", "pull", "acme/x", "--models-dir", str(ws / "models")], capsys)
    assert code == 2 and "HF_ENDPOINT" in err and "Traceback" not in err


def test_allow_foreign_processes_a_foreign_lora_with_its_keys(ws, tmp_path, capsys):
    from zlora.utils.tensorfile import read_tensors

    code, err = _run(
        [
            "lora",
            "scale",
            str(ws / "sdxl.safetensors"),
            "-o",
            str(tmp_path / "s.safetensors"),
            "--ratio",
            "0.5",
            "--allow-foreign",
        ],
        capsys,
    )
    assert code == 0, err
    src, _ = read_tensors(ws / "sdxl.safetensors")
    out, _ = read_tensors(tmp_path / "s.safetensors")
    assert set(out) == set(src)
    code, err = _run(["lora", "inspect", str(ws / "flux.safetensors"), "--allow-foreign"], capsys)
    assert code == 0, err


def test_overwrite_replaces_an_existing_output(ws, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    code, _ = _run(["lora", "convert", str(ws / "a.safetensors"), "-o", str(out), "--to", "kohya"], capsys)
    assert code == 2 and out.read_bytes() == b"old"
    code, err = _run(
        ["lora", "convert", str(ws / "a.safetensors"), "-o", str(out), "--to", "kohya", "--overwrite"], capsys
    )
    assert code == 0, err
    assert out.read_bytes() != b"old"


def test_outputs_get_the_umask_and_identical_content_gives_identical_bytes(ws, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        for name in ("x", "y"):
            code, err = _run(
                [
                    "lora",
                    "convert",
                    str(ws / "a.safetensors"),
                    "-o",
                    str(tmp_path / f"{name}.safetensors"),
                    "--to",
                    "diffusers",
                ],
                capsys,
            )
            assert code == 0, err
    finally:
        os.umask(old)
    x, y = tmp_path / "x.safetensors", tmp_path / "y.safetensors"
    assert (x.stat().st_mode & 0o777) == 0o644
    assert hashlib.sha256(x.read_bytes()).digest() == hashlib.sha256(y.read_bytes()).digest()


def test_every_argument_has_help_and_verbose_works_anywhere(ws, capsys):
    import argparse

    from zlora.cli import build_parser

    def walk(p: argparse.ArgumentParser, where: str):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{where} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                yield where, action

    missing = [f"{w}: {a.dest}" for w, a in walk(build_parser(), "zlora") if not a.help]
    assert not missing
    assert main(["lora", "inspect", str(ws / "a.safetensors"), "-v"]) == 0
    assert main(["-v", "lora", "inspect", str(ws / "a.safetensors")]) == 0
    assert "inspect, convert, scale, merge, resize, bake and extract" in build_parser().format_help()
