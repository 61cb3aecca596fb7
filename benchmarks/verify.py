"""sha256 throughput of ``zlora models verify`` vs ``sha256sum`` on the same multi-GB file (goal: ratio >= 0.9).

    python benchmarks/verify.py [--gb 2] [--dir /tmp]

Writes a random file into a folder with a manifest, reads it once to warm the page cache, then times each tool
(best of --repeats). Not part of the test suite; record results in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zlora.hub.manifest import sha256_file, write_manifest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "model"
        (folder / "transformer").mkdir(parents=True)
        big = folder / "transformer" / "weights.safetensors"
        size = int(args.gb * 2**30)
        with open(big, "wb") as f:
            block = os.urandom(64 << 20)
            for _ in range(size // len(block)):
                f.write(block)
        size = big.stat().st_size
        digest = sha256_file(big)  # also warms the page cache
        write_manifest(
            folder,
            {
                "repo": "bench/x",
                "revision": "main",
                "commit": "0" * 40,
                "endpoint": None,
                "files": {"transformer/weights.safetensors": {"size": size, "sha256": digest}},
            },
        )

        def best(cmd: list[str]) -> float:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times.append(time.perf_counter() - t0)
            return min(times)

        t_ref = best(["sha256sum", str(big)])
        t_ours = best([sys.executable, "-m", "zlora", "models", "verify", str(folder)])
    gib = size / 2**30
    print(f"{gib:.2f} GiB file in {args.dir}")
    print(f"sha256sum:           {t_ref:6.2f} s  {gib / t_ref:5.2f} GiB/s")
    print(f"zlora models verify: {t_ours:6.2f} s  {gib / t_ours:5.2f} GiB/s (including Python start-up)")
    print(f"ratio (goal >= 0.9): {t_ref / t_ours:.3f}")


if __name__ == "__main__":
    main()
