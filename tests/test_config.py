import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, ZLORA
from zlora.config import apply_overrides, dump_config, load_config, parse_config
from zlora.config.load import check_paths
from zlora.errors import UserError


def _problems(data) -> list[str]:
    with pytest.raises(UserError) as e:
        parse_config(data)
    return e.value.problems


def test_unknown_key_suggests_the_real_setting():
    (msg,) = _problems({"model": {"training_adapter": "a.safetensors"}, "datasets": [{"folder_path": "x"}]})
    assert "`model.training_adapter` is not a setting; did you mean `model.assistant_lora_path`?" in msg


def test_typo_suggests_nearest_name_and_all_problems_are_reported_at_once():
    problems = _problems({"train": {"stepz": 3, "lr": "fast"}, "datasets": [{"caption_ext": "txt"}]})
    joined = "\n".join(problems)
    assert len(problems) == 3
    assert "did you mean `train.steps`" in joined
    assert "`train.lr`" in joined and "'fast'" in joined
    assert "`datasets[0].folder_path` is required" in joined


def test_wrong_type_and_constraints_name_the_field():
    problems = _problems(
        {"sample": {"width": 100}, "network": {"linear": 0}, "datasets": [{"folder_path": "x"}]}
    )
    joined = "\n".join(problems)
    assert "`sample.width`" in joined and "multiple of 16" in joined
    assert "`network.linear`" in joined


def test_missing_dataset_folder_is_reported(tmp_path):
    cfg = parse_config({"datasets": [{"folder_path": str(tmp_path / "nope")}]})
    with pytest.raises(UserError, match=r"`datasets\[0\].folder_path` does not exist"):
        check_paths(cfg)


def test_overrides_set_nested_values_and_list_entries():
    data = {"datasets": [{"folder_path": "a"}]}
    apply_overrides(data, ["train.steps=7", "datasets.0.resolution=[32, 64]", "job.trigger_word=ohwx"])
    cfg = parse_config(data)
    assert cfg.train.steps == 7 and cfg.datasets[0].resolution == [32, 64] and cfg.job.trigger_word == "ohwx"
    with pytest.raises(UserError, match="section.key=value"):
        apply_overrides({}, ["train.steps"])


def test_resolution_accepts_one_number_and_caption_ext_a_dot():
    ds = parse_config(
        {"datasets": [{"folder_path": "a", "resolution": 512, "caption_ext": ".caption"}]}
    ).datasets[0]
    assert ds.resolution == [512] and ds.caption_ext == "caption"


def test_dump_is_a_fixed_point():
    cfg = parse_config({"datasets": [{"folder_path": "a"}], "train": {"steps": 5}})
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(path, check_files=path.name == "quickstart.yaml")
    assert cfg.datasets


def test_cli_reports_every_problem_in_one_line_each_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model:\n  training_adapter: x\ntrain:\n  steps: many\ndatasets:\n  - folder_path: /nope\n"
    )
    r = subprocess.run([*ZLORA, "config", "validate", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("zlora: error:")]
    assert len(lines) == 2 and "assistant_lora_path" in lines[0] and "train.steps" in lines[1]


def test_cli_show_prints_resolved_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets:\n  - folder_path: x\n")
    r = subprocess.run([*ZLORA, "config", "show", str(cfg), "train.steps=11"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert (
        shown["train"]["steps"] == 11
        and shown["network"]["linear"] == 16
        and shown["save"]["save_every"] == 250
    )
