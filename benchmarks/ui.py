"""Web UI responsiveness: `zlora ui` start-up to its first answer, `GET /api/jobs` latency while a job trains on the
same machine, and the delay from the trainer writing a step to the SSE stream delivering it.

    .venv/bin/python benchmarks/ui.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from uiserver import UIServer, job_yaml  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        server = UIServer(Path(tmp) / "ui").start()
        startup = time.perf_counter() - t0
        try:
            _, body = server.call(
                "POST",
                "/api/jobs",
                {"config_yaml": job_yaml("bench", steps=3000, save_every=500, prompts=False)},
            )
            job_id = body["id"]
            run_dir = Path(server.call("GET", f"/api/jobs/{job_id}")[1]["run_dir"])
            seen: dict[int, float] = {}

            def listen() -> None:  # the browser's view: SSE events with their arrival time
                with urllib.request.urlopen(f"{server.url}/api/jobs/{job_id}/events", timeout=120) as r:
                    for raw in r:
                        line = raw.decode().strip()
                        if line.startswith("data: "):
                            step = json.loads(line[6:])["step"]
                            seen.setdefault(step, time.time())
                            if step >= 1:
                                return

            listener = threading.Thread(target=listen, daemon=True)
            listener.start()
            metrics = run_dir / "metrics.jsonl"
            while not (metrics.is_file() and metrics.stat().st_size):
                time.sleep(0.001)
            logged = metrics.stat().st_mtime  # the trainer has just written step 1
            listener.join(timeout=30)
            first = min(t for s, t in seen.items() if s >= 1)
            server.wait_job(job_id, lambda j: j["step"] >= 20)
            times = []
            for _ in range(args.requests):
                t = time.perf_counter()
                status, _ = server.call("GET", "/api/jobs")
                times.append((time.perf_counter() - t) * 1000)
                assert status == 200
            training = server.call("GET", f"/api/jobs/{job_id}")[1]["status"] == "running"
            server.call("POST", f"/api/jobs/{job_id}/stop")
        finally:
            server.kill()
    times.sort()
    print(f"startup to first answer: {startup:.2f} s")
    print(f"step 1 written -> SSE event: {(first - logged) * 1000:.0f} ms")
    print(
        f"GET /api/jobs while training ({args.requests} requests, job still running: {training}): "
        f"median {statistics.median(times):.1f} ms, p95 {times[int(0.95 * len(times))]:.1f} ms, max {times[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
