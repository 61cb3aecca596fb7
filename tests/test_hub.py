"""The model manager against a real HTTP peer (tests/hubserver.py) through the real huggingface_hub client:
full pull, pulls cut midway and resumed, a flipped byte found and repaired alone, a warm start with zero requests,
export out of a fabricated HF cache, offline errors, disk-space check, mirror endpoint."""

import os
import shutil
import subprocess
from collections import namedtuple

import pytest
from hubserver import FakeHub
from huggingface_hub import constants

from conftest import ZLORA
from zlora.errors import UserError
from zlora.hub.local import export, list_models, resolve_hub_file, resolve_hub_model, verify
from zlora.hub.manifest import MANIFEST, hub_settings, read_manifest, sha256_file
from zlora.hub.pull import pull
from zlora.models.load import load_components

REPO = "org/tiny-zimage"
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture
def hub(tiny_dir, monkeypatch):
    """The tiny Z-Image served as ``org/tiny-zimage`` (plus files a pipeline pull must skip) and an adapter file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)  # small chunks: a cut file resumes mid-way
    server = FakeHub()
    server.add_repo(
        REPO, tiny_dir, {"README.md": b"# tiny", "extras/big_unused.safetensors": b"\0" * 300_000}
    )
    server.add_repo("ostris/adapter", tiny_dir / "vae")
    url = server.start()
    yield server, url
    server.stop()


def _settings(tmp_path, url, **kw):
    return hub_settings(str(tmp_path / "models"), url, **kw)


def test_full_pull_fetches_only_the_pipeline_and_writes_a_verified_manifest(hub, tmp_path, tiny_dir):
    server, url = hub
    folder = pull(REPO, _settings(tmp_path, url))
    assert folder == tmp_path / "models" / "org--tiny-zimage"
    manifest = read_manifest(folder)
    expected = sorted(str(p.relative_to(tiny_dir)) for p in tiny_dir.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == expected and manifest["commit"] == server.repos[REPO].commit
    for rel, entry in manifest["files"].items():
        assert (folder / rel).read_bytes() == (tiny_dir / rel).read_bytes()
        assert entry["sha256"] == sha256_file(tiny_dir / rel)
    assert not server.gets("README.md") and not server.gets("big_unused.safetensors")
    load_components(folder, __import__("torch").float32, text_encoder=False)  # a usable diffusers folder


@pytest.mark.parametrize("cut", [20_000, 70_000])
def test_a_cut_pull_resumes_without_refetching_complete_files(hub, tmp_path, cut):
    server, url = hub
    settings = _settings(tmp_path, url)
    size = len(server.repos[REPO].files[WEIGHTS].data)
    assert size > cut
    server.cut_at[WEIGHTS] = cut  # the connection drops after `cut` bytes of the transformer weights
    server.cut_at["text_encoder/model.safetensors"] = 40_000
    folder = pull(REPO, settings)  # the client retries with a Range request; a second pull would too
    assert not missing(folder)
    ranges = server.gets(WEIGHTS)
    assert (
        len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    )
    before = len(server.requests)
    pull(REPO, settings)  # everything verified: only the revision and tree listing are asked for
    assert [p for _, p, _ in server.requests[before:] if "/resolve/" in p] == []


def missing(folder):
    from zlora.hub.manifest import missing_or_wrong_size

    return missing_or_wrong_size(folder, read_manifest(folder))


def test_a_pull_killed_between_files_keeps_the_verified_ones(hub, tmp_path):
    server, url = hub
    settings = _settings(tmp_path, url)
    folder = pull(REPO, settings)
    manifest = read_manifest(folder)
    del manifest["files"][WEIGHTS]  # as if killed after the other files were verified
    (folder / WEIGHTS).unlink()
    from zlora.hub.manifest import write_manifest

    write_manifest(folder, manifest)
    before = {p: len(server.gets(p)) for p in manifest["files"]}
    pull(REPO, settings)
    assert {p: len(server.gets(p)) for p in manifest["files"]} == before  # nothing complete fetched again
    assert len(server.gets(WEIGHTS)) == 2 and not missing(folder)


def test_verify_finds_a_flipped_byte_and_fix_refetches_only_that_file(hub, tmp_path, capsys):
    server, url = hub
    settings = _settings(tmp_path, url)
    folder = pull(REPO, settings)
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[5000] ^= 0x01
    (folder / WEIGHTS).write_bytes(bytes(data))
    assert verify(str(folder), settings) == [f"{WEIGHTS}: wrong hash (sha256 differs from the manifest)"]
    (folder / "vae" / "config.json").unlink()
    problems = verify(REPO, settings)
    assert sorted(p.split(":")[0] for p in problems) == sorted([WEIGHTS, "vae/config.json"])
    gets = {p: len(server.gets(p)) for p in read_manifest(folder)["files"]}
    assert verify(REPO, settings, fix=True) == []
    after = {p: len(server.gets(p)) for p in read_manifest(folder)["files"]}
    assert {p for p in after if after[p] != gets[p]} == {WEIGHTS, "vae/config.json"}


def test_a_corrupting_mirror_is_caught_at_pull(hub, tmp_path):
    server, url = hub
    server.flip_at[WEIGHTS] = 100
    with pytest.raises(UserError, match=f"{WEIGHTS} arrived with the wrong hash"):
        pull(REPO, _settings(tmp_path, url))
    assert not (tmp_path / "models" / "org--tiny-zimage" / WEIGHTS).exists()


def test_a_complete_copy_starts_with_zero_requests_and_offline_names_the_command(hub, tmp_path):
    server, url = hub
    settings = _settings(tmp_path, url)
    pull(REPO, settings)
    pull("ostris/adapter/diffusion_pytorch_model.safetensors", settings)
    before = len(server.requests)
    folder, commit = resolve_hub_model(REPO, settings)
    adapter = resolve_hub_file("ostris/adapter/diffusion_pytorch_model.safetensors", settings)
    assert len(server.requests) == before  # zero network requests
    assert commit == server.repos[REPO].commit and adapter.is_file()
    offline = _settings(tmp_path, url, offline=True)
    assert resolve_hub_model(REPO, offline)[0] == folder
    with pytest.raises(UserError, match="zlora models pull org/other"):
        resolve_hub_model("org/other", offline)
    (folder / WEIGHTS).unlink()  # incomplete now: online, it is pulled again
    assert resolve_hub_model(REPO, settings)[0] == folder and not missing(folder)


def test_a_copy_edited_after_verification_is_hashed_again_before_use(hub, tmp_path, caplog):
    server, url = hub
    settings = _settings(tmp_path, url)
    folder = pull(REPO, settings)
    path = folder / WEIGHTS
    data = bytearray(path.read_bytes())
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touched, same bytes
    assert resolve_hub_model(REPO, settings)[0] == folder  # hashed once, still good: mtime recorded
    assert read_manifest(folder)["files"][WEIGHTS]["mtime_ns"] == path.stat().st_mtime_ns
    data[-1] ^= 0xFF  # same size, other bytes: the size check alone would pass it
    path.write_bytes(bytes(data))
    offline = _settings(tmp_path, url, offline=True)
    with pytest.raises(UserError, match="zlora models pull"):
        resolve_hub_model(REPO, offline)
    assert "changed on disk since it was verified" in caplog.text
    before = len(server.requests)
    assert resolve_hub_model(REPO, settings)[0] == folder  # online: only that file is fetched again
    assert sha256_file(path) == read_manifest(folder)["files"][WEIGHTS]["sha256"]
    fetched = [p for m, p, _ in server.requests[before:] if m == "GET" and "/resolve/" in p]
    assert len(fetched) == 1 and fetched[0].endswith(WEIGHTS)


def test_not_enough_disk_space_is_reported_before_downloading(hub, tmp_path, monkeypatch):
    server, url = hub
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"needs .* MB, 1\.0 KB free on .*org--tiny-zimage"):
        pull(REPO, _settings(tmp_path, url))
    assert not server.gets(".safetensors")


def test_export_from_a_fabricated_hf_cache_hardlinks_and_verifies(tiny_dir, tmp_path, monkeypatch):
    import hashlib

    commit = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "hub" / "models--acme--tiny"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "blobs").mkdir()
    for p in sorted(tiny_dir.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            big = p.suffix == ".safetensors"
            blob = (
                hashlib.sha256(data).hexdigest()
                if big
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            )
            (root / "blobs" / blob).write_bytes(data)
            link = root / "snapshots" / commit / p.relative_to(tiny_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(root / "blobs" / blob, link.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    r = subprocess.run(
        [*ZLORA, "models", "export", "acme/tiny", "--to", str(tmp_path / "plain")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"name_or_path: {tmp_path / 'plain'}" in r.stdout
    out = tmp_path / "plain"
    weights = out / WEIGHTS
    assert (
        not weights.is_symlink()
        and weights.stat().st_ino == (root / "snapshots" / commit / WEIGHTS).resolve().stat().st_ino
    )
    assert read_manifest(out)["commit"] == commit and (out / MANIFEST).is_file()
    rows = list_models(hub_settings(str(tmp_path / "none")))
    assert [(r["name"], r["complete"]) for r in rows] == [("acme/tiny", "yes")]
    blob = (root / "snapshots" / commit / "vae" / "config.json").resolve()
    blob.write_text(blob.read_text() + " ")  # a damaged cache
    with pytest.raises(UserError, match="does not match its blob hash"):
        export("acme/tiny", tmp_path / "plain2")


def test_cli_pull_through_a_mirror_endpoint_and_verify(hub, tmp_path):
    server, url = hub
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "ZLORA_MODELS_DIR": str(tmp_path / "m")}
    r = subprocess.run(
        [*ZLORA, "models", "pull", REPO, "--endpoint", url], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "complete and verified" in r.stdout and "name_or_path:" in r.stdout
    env["HF_ENDPOINT"] = url  # the environment variable works the same as the flag
    r = subprocess.run([*ZLORA, "models", "verify", REPO], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "all files match" in r.stdout
    r = subprocess.run([*ZLORA, "models", "list"], capture_output=True, text=True, env=env)
    assert REPO in r.stdout and "yes" in r.stdout
    r = subprocess.run(
        [*ZLORA, "models", "pull", "org/missing", "--endpoint", url], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2 and "no such model" in r.stderr and "Traceback" not in r.stderr


def test_verify_without_a_manifest_checks_against_the_hubs_hashes(hub, tmp_path):
    server, url = hub
    settings = _settings(tmp_path, url)
    folder = pull(REPO, settings)
    (folder / MANIFEST).unlink()
    assert verify(REPO, settings) == []  # LFS sha256 and git blob ids from the hub's tree listing
    (folder / "vae" / "config.json").write_text("{}")
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-1] ^= 0x10
    (folder / WEIGHTS).write_bytes(bytes(data))
    assert sorted(verify(REPO, settings)) == [
        f"{WEIGHTS}: wrong hash (differs from the hub)",
        "vae/config.json: wrong size (2 bytes, expected "
        f"{len(server.repos[REPO].files['vae/config.json'].data)})",
    ]
    with pytest.raises(UserError, match="no manifest to verify against"):
        verify(str(folder), settings)


def test_training_from_a_hub_reference_pulls_once_then_runs_offline(hub, tmp_path, make_config):
    from zlora.train.trainer import run_training

    server, url = hub
    models = str(tmp_path / "models")
    cfg = make_config(
        {
            "model": {"name_or_path": REPO},
            "hub": {"models_dir": models, "endpoint": url},
            "train": {"steps": 1},
        }
    )
    lora = run_training(cfg)
    run_json = (lora.parent / "run.json").read_text()
    assert (
        server.repos[REPO].commit in run_json
        and sha256_file(tmp_path / "models" / "org--tiny-zimage" / WEIGHTS) in run_json
    )
    before = len(server.requests)
    again = make_config(
        {
            "model": {"name_or_path": REPO},
            "hub": {"models_dir": models, "offline": True},
            "train": {"steps": 2},
            "job": {"name": "offline"},
        }
    )
    assert run_training(again).is_file() and len(server.requests) == before
