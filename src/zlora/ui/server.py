"""`zlora ui`: one uvicorn process on 127.0.0.1 by default; any other address needs a token."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from zlora.errors import UserError
from zlora.utils.io import cache_dir


def default_data_dir() -> Path:
    return Path(os.environ.get("ZLORA_UI_DIR") or cache_dir() / "ui")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str, port: int, data_dir: Path | None, token: str | None, max_upload_mb: int = 50) -> None:
    import uvicorn

    from zlora.ui.app import create_app

    token = token or os.environ.get("ZLORA_UI_TOKEN") or None
    if not _loopback(host) and not token:
        raise UserError(
            f"--host {host} makes the UI reachable from other machines: set --token (or "
            "ZLORA_UI_TOKEN) so that every page and API call needs it"
        )
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    folder = (data_dir or default_data_dir()).expanduser()
    if max_upload_mb < 1:
        raise UserError(f"--max-upload-mb {max_upload_mb}: must be at least 1")
    app = create_app(folder, token, max_upload_mb=max_upload_mb)
    print(
        f"zlora UI: http://{host if ':' not in host else f'[{host}]'}:{port}/  (data: {folder})", flush=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
