"""`zlora ui` in a subprocess on a free loopback port, with its own data dir, for the API and browser tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import REPO, ZLORA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UIServer:
    def __init__(self, data_dir: Path, token: str | None = None, env: dict | None = None):
        self.data_dir, self.token, self.env = data_dir, token, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> UIServer:
        args = [*ZLORA, "ui", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.token:
            args += ["--token", self.token]
        self.proc = subprocess.Popen(
            args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                self.call("GET", "/api/health")
                return self
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"zlora ui exited: {self.proc.stdout.read()}") from None
                time.sleep(0.1)
        raise RuntimeError("zlora ui did not answer in 30 s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def call(
        self,
        method: str,
        path: str,
        body=None,
        token: str | None = None,
        raw: bytes | None = None,
        ctype: str = "application/json",
        headers: dict | None = None,
    ):
        """(status, parsed JSON or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", ctype)
        if token or self.token:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text, ctype = (
                    r.status,
                    r.read().decode(errors="replace"),
                    r.headers.get("content-type", ""),
                )
        except urllib.error.HTTPError as e:
            status, text, ctype = e.code, e.read().decode(errors="replace"), e.headers.get("content-type", "")
        return status, (json.loads(text) if "json" in ctype else text)

    def wait_job(self, job_id: int, cond, timeout: float = 120.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            _, job = self.call("GET", f"/api/jobs/{job_id}")
            if cond(job):
                return job
            if time.monotonic() > end:
                raise AssertionError(f"job {job_id} never got there: {job}")
            time.sleep(0.1)


def multipart(field: str, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with ``files`` under ``field``: (body, content type)."""
    boundary = "zloraTestBoundary7MA4YWxkTrZu0gW"
    out = b""
    for name, data in files:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def job_yaml(name: str, steps: int = 12, save_every: int = 6, prompts: bool = True) -> str:
    shapes = os.path.join(REPO, "examples", "shapes")
    sample = (
        '{sample_every: 6, prompts: ["a red circle", "zlr, a square"], width: 64, height: 64, sample_steps: 2}'
        if prompts
        else "{prompts: []}"
    )
    return f"""
job: {{name: {name}, trigger_word: zlr, device: cpu}}
model: {{name_or_path: "builtin:tiny", dtype: fp32}}
network: {{linear: 4, linear_alpha: 4}}
save: {{save_every: {save_every}, dtype: fp32, max_step_saves_to_keep: 2}}
train: {{steps: {steps}, batch_size: 2, lr: 1.0e-3, gradient_checkpointing: false}}
datasets: [{{folder_path: {shapes}, resolution: [64], cache_latents: false}}]
sample: {sample}
"""
