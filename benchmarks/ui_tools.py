"""Web UI part 2 at the sizes users bring: a 30-image dataset uploaded and listed, and the LoRA tools on a real-size
rank-16 LoRA (240 modules, 81 MiB, the Z-Image shapes), each through the HTTP API of a running `zlora ui`.

    .venv/bin/python benchmarks/ui_tools.py
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_tools import random_lora  # noqa: E402
from uiserver import UIServer, multipart  # noqa: E402

from zlora.lora.codecs import write_modules  # noqa: E402


def timed(label: str, fn):
    start = time.perf_counter()
    out = fn()
    print(f"{label:<44} {time.perf_counter() - start:6.2f} s")
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = UIServer(Path(tmp) / "ui").start()
        try:
            images = []
            for i in range(30):
                buf = io.BytesIO()
                Image.effect_noise((1024, 768), 40 + i).convert("RGB").save(buf, format="JPEG", quality=90)
                images.append((f"img{i:02d}.jpg", buf.getvalue()))
                images.append((f"img{i:02d}.txt", f"caption {i}".encode()))
            server.call("POST", "/api/datasets", {"name": "bench"})
            body, ctype = multipart("files", images)
            mb = len(body) / 1e6

            def upload_and_list():
                assert server.call("POST", "/api/datasets/bench/files", raw=body, ctype=ctype)[0] == 200
                status, ds = server.call("GET", "/api/datasets/bench")
                assert status == 200 and len(ds["images"]) == 30

            timed(f"30 images ({mb:.1f} MB) upload + grid listing", upload_and_list)
            lora = Path(tmp) / "real.safetensors"
            save_file(write_modules(random_lora(0), "zlora"), str(lora))
            body, ctype = multipart("file", [("real.safetensors", lora.read_bytes())])
            ref = timed(
                f"upload r16 LoRA ({lora.stat().st_size / 2**20:.0f} MiB)",
                lambda: server.call("POST", "/api/lora/upload", raw=body, ctype=ctype)[1]["lora"],
            )
            timed(
                "inspect (report + heat-map table)",
                lambda: server.call("POST", "/api/lora/inspect", {"lora": ref}),
            )
            timed(
                "scale (qk 0.5, layers 0-9:0.5)",
                lambda: server.call(
                    "POST", "/api/lora/scale", {"lora": ref, "components": {"qk": 0.5}, "layers": "0-9:0.5"}
                ),
            )
            timed(
                "convert to comfy",
                lambda: server.call("POST", "/api/lora/convert", {"lora": ref, "to": "comfy"}),
            )
            timed(
                "merge with itself, exact",
                lambda: server.call(
                    "POST",
                    "/api/lora/merge",
                    {"inputs": [{"lora": ref, "weight": 0.5}, {"lora": ref, "weight": 0.5}]},
                ),
            )
        finally:
            server.kill()


if __name__ == "__main__":
    main()
