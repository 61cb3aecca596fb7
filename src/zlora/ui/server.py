"""`zlora ui`: one uvicorn process on 127.0.0.1 by default; any other address needs a token."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from pathlib import Path

from zlora.errors import UserError
from zlora.utils.io import cache_dir

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def default_data_dir() -> Path:
    return Path(os.environ.get("ZLORA_UI_DIR") or cache_dir() / "ui")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str) -> None:
    """An IP address, or a name this machine resolves (else "not an address", not "reachable from others")."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        raise UserError(
            f"--host {host!r} is not an address; use e.g. 127.0.0.1, 0.0.0.0 or this machine's name"
        ) from None


def check_data_dir(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--data-dir {folder} is a file; give a folder (new or one the UI used before)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(
            f"--data-dir {folder} is not writable ({e.strerror or e}); choose another folder"
        ) from None


def serve(
    host: str,
    port: int,
    data_dir: Path | None,
    token: str | None,
    max_upload_mb: int = 50,
    allowed_hosts: list[str] | None = None,
) -> None:
    import uvicorn

    from zlora.ui.app import create_app

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: a port is 1 to 65535 (e.g. 8675)")
    check_host(host)
    token = token or os.environ.get("ZLORA_UI_TOKEN") or None
    if not _loopback(host) and not token:
        raise UserError(
            f"--host {host} makes the UI reachable from other machines: set --token (or "
            "ZLORA_UI_TOKEN) so that every page and API call needs it"
        )
    if max_upload_mb < 1:
        raise UserError(f"--max-upload-mb {max_upload_mb}: must be at least 1")
    folder = (data_dir or default_data_dir()).expanduser()
    check_data_dir(folder)
    listen = _listen(host, port)
    app = create_app(folder, token, max_upload_mb=max_upload_mb, hosts=allowed_names(host, allowed_hosts))
    print(
        f"zlora UI: http://{host if ':' not in host else f'[{host}]'}:{port}/  (data: {folder})", flush=True
    )
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[listen])


def allowed_names(host: str, extra: list[str] | None) -> set[str] | None:
    """The names a request's Host header may carry (a DNS-rebinding page sends its own name): the loopback names,
    the bound address and ``--allowed-host``. None (any) on a wildcard address without ``--allowed-host``: the
    machine's names are not known there, and the token guards it."""
    names = {h.lower() for h in extra or []}
    if host in ("0.0.0.0", "::") and not names:
        return None
    return {*LOOPBACK_NAMES, host.lower(), f"[{host.lower()}]", *names}


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound with SO_REUSEADDR so a restart on the same port works at once (a closed
    server's connections linger in TIME_WAIT for a minute). A port another process holds is named."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if (
        os.name != "nt"
    ):  # on Windows SO_REUSEADDR would let two servers share a port; its default is right there
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({e.strerror}){_holder(port)}; choose another --port"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _holder(port: int) -> str:
    """ ", held by pid N (cmd)" when /proc says which process listens on ``port`` (Linux); else nothing."""
    try:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table, encoding="ascii") as f:
                for line in list(f)[1:]:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                        inodes.add(parts[9])
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    cmd = (
                        Path(f"/proc/{pid}/cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode(errors="replace")
                    )
                    return f", held by pid {pid} ({cmd.strip()[:60]})"
    except OSError:
        pass
    return ""
