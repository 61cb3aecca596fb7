"""The run folder: ``<output_dir>/<job.name>/`` and every path in it, plus the one reader of ``metrics.jsonl``.

Torch-free: the trainer writes the folder, the CLI prints its paths, the web UI reads progress, previews and LoRA
files from it, all through this module.

```
config.yaml                  the resolved config (a replaced one stays as config.<step>.yaml)
run.json                     base model reference, files, package versions, forced resumes
checkpoints/step-000250/     lora.safetensors + state.pt
<name>.safetensors           the final LoRA
samples/step-000250.png      preview grid; step-000250_p<prompt>_s<seed>.png the single images
metrics.jsonl, loss.png      one JSON line per step (and per judged preview); the loss curve
```
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

STEP_DIR = re.compile(r"^step-(\d{6,})$")
SAMPLE = re.compile(r"^step-(\d+)_p(\d+)_s(-?\d+)\.png$")
GRID = re.compile(r"^step-(\d{6,})\.png$")
STATE_FILE = "state.pt"
CHECKPOINT_LORA = "lora.safetensors"
# Written when zlora creates a run folder: says which job it belongs to (the web UI deletes only folders it made).
MARKER = ".zlora-run.json"
_TAIL_BYTES = 16384


def step_name(step: int) -> str:
    """``step-000250``: checkpoint folders and preview files."""
    return f"step-{step:06d}"


@dataclass(frozen=True)
class RunFolder:
    root: Path
    name: str

    @classmethod
    def of(cls, output_dir: str | Path, name: str) -> RunFolder:
        return cls(Path(output_dir).expanduser() / name, name)

    @classmethod
    def at(cls, root: str | Path, name: str | None = None) -> RunFolder:
        """An existing run folder (its name is the folder's unless told)."""
        root = Path(root)
        return cls(root, name or root.name)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def old_config(self, step: int) -> Path:
        return self.root / f"config.{step:06d}.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def final_lora(self) -> Path:
        return self.root / f"{self.name}.safetensors"

    # ------------------------------------------------------------------ what is in it
    def checkpoint_steps(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (their state file written), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = STEP_DIR.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def grids(self) -> list[Path]:
        """Preview grids, oldest first."""
        if not self.samples.is_dir():
            return []
        return sorted(p for p in self.samples.iterdir() if GRID.match(p.name))

    def sample_images(self) -> list[dict]:
        """Single preview images: {step, prompt_index, seed, path (relative to the run folder)}."""
        if not self.samples.is_dir():
            return []
        out = []
        for p in self.samples.iterdir():
            m = SAMPLE.match(p.name)
            if m:
                step, prompt, seed = (int(g) for g in m.groups())
                out.append({"step": step, "prompt_index": prompt, "seed": seed, "path": f"samples/{p.name}"})
        return sorted(out, key=lambda s: (s["step"], s["prompt_index"], s["seed"]))

    def lora_files(self) -> list[dict]:
        """The final LoRA and each checkpoint's: {name (for downloads), path (relative), step (None: final)}."""
        out = []
        if self.final_lora.is_file():
            out.append({"name": self.final_lora.name, "path": self.final_lora.name, "step": None})
        for step, d in self.checkpoint_steps():
            if (d / CHECKPOINT_LORA).is_file():
                name, path = f"{self.name}-{d.name}.safetensors", f"checkpoints/{d.name}/{CHECKPOINT_LORA}"
                out.append({"name": name, "path": path, "step": step})
        return out

    def read_metrics(self, tail: bool = False) -> list[dict]:
        return read_metrics(self.metrics, tail)

    # ------------------------------------------------------------------ whose folder it is
    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def owner(self) -> dict | None:
        """What the marker says ({job, created_by, ...}); for a run folder from before markers, its config's job
        name; None when this is not a zlora run folder (or does not exist)."""
        try:
            return json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        if self.config.is_file() and self.run_json.is_file():
            try:
                import yaml

                job = (yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}).get("job", {})
                return {"job": job.get("name"), "created_by": "zlora train"}
            except (OSError, ValueError, AttributeError, yaml.YAMLError):
                return None
        return None

    def is_run_of(self, name: str) -> bool:
        """A zlora run folder of the job ``name`` (so training there resumes it)."""
        owner = self.owner()
        return owner is not None and owner.get("job") == name

    def claim(self, created_by: str, **info) -> None:
        """Create the folder and its marker (the folder must not exist yet, or hold nothing but the marker)."""
        from zlora.utils.io import atomic_write_text, make_dirs

        make_dirs(self.root)
        record = {"job": self.name, "created_by": created_by, "created": time.time(), **info}
        atomic_write_text(self.marker, json.dumps(record) + "\n")


def is_run_folder(folder: Path) -> bool:
    """``folder`` is a zlora run folder (a dataset scan never reads images from one)."""
    return (folder / MARKER).is_file() or (
        (folder / "config.yaml").is_file() and (folder / "run.json").is_file()
    )


def read_metrics(path: Path, tail: bool = False) -> list[dict]:
    """The rows of a metrics.jsonl; ``tail``: only those in its last 16 KiB (a 100k-step log costs the same as a
    short one). A line being written right now (not yet valid JSON) is skipped."""
    try:
        with open(path, "rb") as f:
            if tail:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - _TAIL_BYTES))
            raw = f.read()
    except OSError:
        return []
    lines = raw.decode("utf-8", errors="replace").splitlines()
    if tail and size > _TAIL_BYTES:
        lines = lines[1:]  # the first line may be cut
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
