"""A small Hugging Face Hub-compatible HTTP server for tests: the subset of the API that huggingface_hub uses to
list a repo's files and download them (revision info, recursive tree with LFS hashes, HEAD/GET on resolve URLs
with X-Repo-Commit / ETag / X-Linked-Etag / X-Linked-Size headers, Range requests). It counts requests and can
cut a response midway or serve a corrupted byte, so tests can drive the real client through failures."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class RepoFile:
    data: bytes
    sha256: str
    git_sha1: str
    lfs: bool


@dataclass
class Repo:
    commit: str
    files: dict[str, RepoFile]


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    cut_at: dict[str, int] = field(
        default_factory=dict
    )  # file path -> cut the next GET after this many bytes
    flip_at: dict[str, int] = field(default_factory=dict)  # file path -> serve this byte inverted (every GET)

    def add_repo(self, repo_id: str, folder: Path, extra: dict[str, bytes] | None = None) -> Repo:
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        files.update(extra or {})
        entries = {}
        for path, data in files.items():
            entries[path] = RepoFile(
                data,
                hashlib.sha256(data).hexdigest(),
                hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                path.endswith(LFS_SUFFIXES),
            )
        commit = hashlib.sha1("".join(f"{p}{e.sha256}" for p, e in entries.items()).encode()).hexdigest()
        self.repos[repo_id] = Repo(commit, entries)
        return self.repos[repo_id]

    def gets(self, path_suffix: str) -> list[str | None]:
        """Range headers of the GET requests for files whose path ends with ``path_suffix``."""
        return [r for m, p, r in self.requests if m == "GET" and "/resolve/" in p and p.endswith(path_suffix)]

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ routing
    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?")[0]
        self.requests.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            repo = self.repos.get(m[1])
            if repo is None:
                return self._json(h, {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
            siblings = [{"rfilename": p} for p in repo.files]
            return self._json(
                h,
                {
                    "id": m[1],
                    "modelId": m[1],
                    "sha": repo.commit,
                    "siblings": siblings,
                    "private": False,
                    "tags": [],
                },
            )
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
            repo = self.repos.get(m[1])
            if repo is None:
                return self._json(h, {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
            prefix = (m[3] or "").strip("/")
            out = []
            for p, f in repo.files.items():
                if prefix and not p.startswith(prefix + "/"):
                    continue
                entry = {"type": "file", "path": p, "size": len(f.data), "oid": f.git_sha1}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
                out.append(entry)
            return self._json(h, out)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo = self.repos.get(m[1])
            f = repo.files.get(m[3]) if repo else None
            if f is None:
                return self._json(h, {"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
            return self._file(h, repo, m[3], f, head)
        return self._json(h, {"error": "not found"}, 404)

    def _json(self, h, obj, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _file(self, h, repo: Repo, path: str, f: RepoFile, head: bool) -> None:
        data = bytearray(f.data)
        if path in self.flip_at:
            data[self.flip_at[path]] ^= 0xFF
        start = 0
        rng = h.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng)):
            start = int(m[1])
        body = bytes(data[start:])
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("ETag", f'"{f.git_sha1}"')
        if f.lfs:
            h.send_header("X-Linked-Etag", f'"{f.sha256}"')
            h.send_header("X-Linked-Size", str(len(f.data)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        cut = self.cut_at.pop(path, None)
        if cut is not None and cut > start:
            h.wfile.write(body[: cut - start])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the peer sees a truncated body
            return
        h.wfile.write(body)
