"""The shapes world, its pixel judge, and builtin:shapes (the pretrained demo model) end to end."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, ZLORA
from zlora.shapes.evaluate import Judged, summarise
from zlora.shapes.judge import judge
from zlora.shapes.world import (
    ALL_SHAPES,
    COLOURS,
    STAR_SIZES,
    STAR_SPREAD,
    Expect,
    Scene,
    eval_prompts,
    parse_prompt,
    random_scene,
    render,
)


def test_judge_reads_every_rendered_scene_back():
    rng = random.Random(3)
    for _ in range(300):
        s = random_scene(rng, ALL_SHAPES, two_tone=0.3)
        v = judge(render(s), two_tone=s.bg2 is not None)
        assert v.matches(Expect(s.fg, s.shape, s.bg, s.bg2)) == {"colours": True, "shape": True}, (s, v)
    for _ in range(50):  # the quickstart's stars are bigger
        s = random_scene(rng, ("star",), sizes=STAR_SIZES, spread=STAR_SPREAD)
        assert judge(render(s), two_tone=s.bg2 is not None).shape == "star", s


def test_judge_says_what_is_wrong():
    scene = Scene("circle", "red", "blue", cx=0.4, cy=0.6, size=0.5)
    v = judge(render(scene))
    assert v.matches(Expect("red", "square", "blue")) == {"colours": True, "shape": False}
    assert v.matches(Expect("green", "circle", "blue")) == {"colours": False, "shape": True}
    assert v.matches(Expect("red", "circle", "white")) == {"colours": False, "shape": True}
    blank = judge(Image.new("RGB", (64, 64), COLOURS["teal"]))
    assert (blank.fg, blank.shape, blank.bg) == (None, None, "teal")
    noise = judge(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    assert not noise.matches(Expect("red", "circle", "blue"))["colours"]


def test_parse_prompt():
    assert parse_prompt("an orange zlr on a blue background") == Expect("orange", "star", "blue")
    assert parse_prompt("zlr, a red circle on a white and black background") == Expect(
        "red", "circle", "white", "black"
    )
    assert parse_prompt("a red zlr on a blue background", trigger="ohwx") is None  # zlr is not a shape then
    assert parse_prompt("a photo of a cat") is None
    assert Scene("circle", "orange", "blue").caption("zlr") == "an orange zlr on a blue background"


def test_summarise_counts_concept_and_drift():
    def j(prompt, seed, fg, shape, bg):
        from zlora.shapes.judge import Verdict

        return Judged(prompt, seed, parse_prompt(prompt), Verdict(fg, shape, bg))

    base = {
        ("a red circle on a blue background", 0): ("red", "circle", "blue", None),
        ("a red square on a blue background", 0): ("red", "square", "blue", None),
    }
    judged = [
        j("a red circle on a blue background", 0, "red", "circle", "blue"),  # as before
        j("a red square on a blue background", 0, "red", "star", "blue"),  # leaked: drift, and wrong
        j("a red zlr on a blue background", 0, "red", "star", "blue"),
        j("a red zlr on a blue background", 1, "red", "circle", "blue"),
    ]
    s = summarise(judged, base)
    assert (s["adherence"], s["concept"], s["drift"], s["n_plain"], s["n_trigger"]) == (0.5, 0.5, 0.5, 2, 2)
    # Drift compares the nearest shape: an outline just past the judge's distance limit (no shape) that is still
    # nearest to a circle has not changed; one nearest to a square has.
    from zlora.shapes.judge import Verdict

    circle = "a red circle on a blue background"
    for nearest, drift in (("circle", 0.0), ("square", 1.0)):
        blob = Judged(circle, 0, parse_prompt(circle), Verdict("red", None, "blue", None, 0.21, nearest))
        assert summarise([blob], base)["drift"] == drift
        assert summarise([blob], base)["shape_match"] == 0.0  # adherence wants the shape within the limit


def test_eval_prompts_are_distinct_and_cover_the_world():
    prompts = eval_prompts(64)
    assert len(set(prompts)) == 64
    wants = [parse_prompt(p) for p in prompts]
    assert {w.shape for w in wants} == {"circle", "square", "triangle", "diamond"}
    assert {w.fg for w in wants} == set(COLOURS) and all(w.fg != w.bg for w in wants)


# ------------------------------------------------------------------ builtin:shapes, the pretrained model


@pytest.fixture(scope="module")
def shapes_pipe():
    import torch

    from zlora.generate import load_pipeline

    return load_pipeline("builtin:shapes", [], torch.device("cpu"), torch.float32)


def test_builtin_shapes_draws_what_the_prompt_says(shapes_pipe):
    """The base model knows its world: colours and shapes of 16 prompts (the full 64 x 2 goal is measured by
    ``zlora shapes eval`` in benchmarks/RESULTS.md; a random model scores about 0 here)."""
    from zlora.shapes.evaluate import SAMPLING, judge_images, sample_batch
    from zlora.shapes.world import eval_prompts

    prompts = eval_prompts(16, seed=5)
    seeds = list(range(16))
    images = sample_batch(shapes_pipe, prompts, seeds, SAMPLING["steps"], SAMPLING["guidance"], 64, 64)
    s = summarise(judge_images(images, prompts, seeds))
    assert s["colour_match"] >= 0.8 and s["shape_match"] >= 0.6, s  # measured: 1.0 and 0.81
    # A star was never shown to it: asked for the trigger word, it draws no star.
    trig = eval_prompts(8, seed=5, shape_word="zlr")
    images = sample_batch(shapes_pipe, trig, seeds[:8], SAMPLING["steps"], SAMPLING["guidance"], 64, 64)
    assert summarise(judge_images(images, trig, seeds[:8]))["concept"] <= 0.25  # measured: 0 of 8


def test_batch_does_not_change_an_image(shapes_pipe):
    from zlora.shapes.evaluate import sample_batch

    prompts = ["a red circle on a blue background", "a green square on a white background"]
    both = sample_batch(shapes_pipe, prompts, [3, 4], 4, 3.0, 64, 64)
    alone = sample_batch(shapes_pipe, prompts[1:], [4], 4, 3.0, 64, 64)
    diff = np.abs(np.asarray(both[1], dtype=np.int16) - np.asarray(alone[0], dtype=np.int16)).max()
    assert diff <= 2


def shapes_job(tmp_path: Path, **train) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["job"]["output_dir"] = str(tmp_path / "out")
    for ds in cfg["datasets"]:
        ds["folder_path"] = str(REPO / ds["folder_path"])
        ds["cache_latents"] = False  # no cache files in the repository's examples
    cfg["train"].update(train)
    cfg["sample"]["prompts"] = ["a red zlr on a blue background", "a yellow square on a purple background"]
    cfg["sample"].update(samples_per_prompt=2, sample_steps=6)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_training_on_shapes_writes_the_judges_scores(tmp_path):
    """Each preview of a run on builtin:shapes puts adherence / concept / drift into metrics.jsonl; the base
    model's verdicts come from step 0, or (no step-0 preview) from previews rendered with the LoRA off."""
    job = shapes_job(tmp_path, steps=4)
    r = subprocess.run([*ZLORA, "train", str(job), "sample.sample_every=2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "out" / "quickstart"
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    judged = [r for r in rows if "judge" in r]
    assert [r["step"] for r in judged] == [0, 2, 4]
    assert judged[0]["judge"]["drift"] == 0.0  # step 0 is the base model
    assert {"adherence", "concept", "drift", "n_plain", "n_trigger"} <= set(judged[-1]["judge"])
    assert (judged[-1]["judge"]["n_plain"], judged[-1]["judge"]["n_trigger"]) == (2, 2)
    assert (run / "loss.png").is_file() and all("loss" in r for r in rows if "judge" not in r)
    r = subprocess.run([*ZLORA, "shapes", "report", str(run)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split("\n")[1].split()[0] == "0", r.stdout + r.stderr
    assert len(r.stdout.strip().splitlines()) == 4
    out = tmp_path / "eval.json"
    r = subprocess.run(
        [
            *ZLORA,
            "shapes",
            "eval",
            "--prompts",
            "2",
            "--seeds",
            "2",
            "--steps",
            "4",
            "--lora",
            str(run / "quickstart.safetensors"),
            "--json",
            str(out),
            "--grid",
            str(tmp_path / "g.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    scores = json.loads(out.read_text())
    assert scores["base"]["n_plain"] == 4 and scores["lora"]["n_trigger"] == 4 and "drift" in scores["lora"]
    assert Image.open(tmp_path / "g.png").size == (64 * 4, 64 * 3)  # base, LoRA, LoRA with the trigger

    job = shapes_job(tmp_path / "b", steps=2)
    r = subprocess.run(
        [*ZLORA, "train", str(job), "sample.sample_every=2", "sample.skip_first_sample=true"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    run = tmp_path / "b" / "out" / "quickstart"
    judged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"judge"' in ln]
    assert [r["step"] for r in judged] == [2] and judged[0]["judge"]["drift"] is not None
    assert (run / "samples" / "base_judge.json").is_file() and not list((run / "samples").glob("base*.png"))


def test_report_and_eval_refuse_what_they_cannot_use(tmp_path):
    r = subprocess.run([*ZLORA, "shapes", "report", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "metrics.jsonl not found" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    r = subprocess.run([*ZLORA, "shapes", "report", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "no judge scores" in r.stderr
    r = subprocess.run([*ZLORA, "shapes", "eval", "--prompts", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--prompts" in r.stderr


def test_generate_defaults_for_builtin_shapes(tmp_path):
    out = tmp_path / "c.png"
    r = subprocess.run(
        [
            *ZLORA,
            "generate",
            "--model",
            "builtin:shapes",
            "--prompt",
            "a red circle on a blue background",
            "--device",
            "cpu",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    im = Image.open(out)
    assert im.size == (64, 64)
    assert json.loads(im.info["parameters"])["steps"] == 20
    assert judge(im).bg == "blue"


def test_judge_rows_do_not_disturb_progress_or_the_loss_plot(tmp_path):
    from zlora.runfolder import RunFolder
    from zlora.train.metrics import plot_loss
    from zlora.ui.progress import progress

    rows = [
        {"step": 1, "loss": 0.5, "lr": 1e-3, "seconds": 0.1},
        {"step": 2, "loss": 0.4, "lr": 1e-3, "seconds": 0.1},
        {"step": 2, "judge": {"adherence": 1.0, "concept": 0.5, "drift": 0.0}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = progress(RunFolder.at(tmp_path), 10)
    assert (p["step"], p["loss"], p["s_per_step"]) == (2, 0.4, 0.1)
    plot_loss(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000
