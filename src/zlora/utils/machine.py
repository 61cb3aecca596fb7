"""What this machine can run: its CUDA devices (name, memory), Apple's MPS, and which optional packages are
installed. The trainer asks torch directly (``Machine.here``); the web UI server, which never imports torch, asks a
child process once (``Machine.probe``: ``python -m zlora.utils.machine`` prints it as JSON) and keeps the answer."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field

# pip package -> the module it installs (what `installed` looks for)
MODULES = {"bitsandbytes": "bitsandbytes", "lion-pytorch": "lion_pytorch", "prodigyopt": "prodigyopt"}


@dataclass(frozen=True)
class Machine:
    cuda: list[dict] = field(default_factory=list)  # [{"name": ..., "memory_gib": ...}] per CUDA device
    mps: bool = False
    known: bool = True  # False: the probe failed; checks that need the machine are skipped

    @property
    def default_device(self) -> str:
        """What ``job.device: auto`` becomes here."""
        return "cuda" if self.cuda else "cpu"

    @property
    def memory_gib(self) -> float | None:
        """Memory of the first CUDA device (what an auto-device run trains on), None without one."""
        return self.cuda[0]["memory_gib"] if self.cuda else None

    @staticmethod
    def installed(package: str) -> bool:
        return importlib.util.find_spec(MODULES.get(package, package)) is not None

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def here(cls) -> Machine:
        """Asked of torch in this process."""
        import torch

        devices = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        return cls(cuda=devices, mps=mps)

    @classmethod
    def probe(cls, timeout: float = 120.0) -> Machine:
        """Asked of a child process (this one stays torch-free); unknown if that fails."""
        try:
            out = subprocess.run(
                [sys.executable, "-m", "zlora.utils.machine"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            ).stdout
            data = json.loads(out.strip().splitlines()[-1])
            return cls(cuda=data["cuda"], mps=data["mps"])
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
            return cls(known=False)


class Probe:
    """``Machine.probe`` started in the background at once; ``get`` waits for it (only the first call)."""

    _shared: Probe | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> Probe:
        """One probe per process: the machine does not change while the server runs."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self):
        self._machine: Machine | None = None
        self._thread = threading.Thread(target=self._run, name="zlora-machine-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._machine = Machine.probe()

    def get(self, timeout: float = 120.0) -> Machine:
        self._thread.join(timeout)
        return self._machine or Machine(known=False)


if __name__ == "__main__":
    print(json.dumps(Machine.here().as_json()))
