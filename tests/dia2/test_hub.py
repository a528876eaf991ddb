"""dia2.hub.resolve_model_dir: local folders, the Hugging Face cache, offline mode and hub failures.

Network is loopback only: the "hub" is either a closed port or a tiny HTTP server in this process
(a few Hub API routes, enough for huggingface_hub.snapshot_download).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from dia2.hub import Dia2AssetError, resolve_model_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home in tmp_path, online, with the endpoint on a closed loopback port."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # Port 9 (discard) is closed on loopback: a connection attempt is refused at once.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return home


def _populate_cache(hub_cache: Path, repo_id: str, commit: str, files: dict[str, str]) -> Path:
    """Write huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo_dir = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    for rel, text in files.items():
        target = snapshot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def test_local_directory_is_returned_as_is(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    (ckpt / "mimi").mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"x")
    (ckpt / "mimi" / "config.json").write_text("{}")

    assert resolve_model_dir(ckpt) == ckpt
    assert resolve_model_dir(str(ckpt)) == ckpt
    got = resolve_model_dir(ckpt, allow_patterns=["config.json", "*.safetensors", "mimi/*"])
    assert got == ckpt


def test_local_directory_missing_files_is_named(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    with pytest.raises(Dia2AssetError, match=r"lacks required file\(s\): model\.safetensors"):
        resolve_model_dir(ckpt, allow_patterns=["config.json", "model.safetensors"])


def test_missing_local_path(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(Dia2AssetError, match="does not exist") as info:
        resolve_model_dir(missing)
    assert str(missing) in str(info.value)
    # The same path as a string must not be mistaken for a repo id.
    with pytest.raises(Dia2AssetError, match="does not exist"):
        resolve_model_dir(str(missing))


def test_file_instead_of_directory(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(Dia2AssetError, match="is a file, not a directory"):
        resolve_model_dir(f)


@pytest.mark.parametrize("ref", ["bad--name", "org/name.git", "", "a b/c"])
def test_invalid_ref(hf_env: Path, ref: str) -> None:
    with pytest.raises(Dia2AssetError, match="Invalid model reference"):
        resolve_model_dir(ref)


def test_offline_and_not_cached(hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Dia2AssetError) as info:
        resolve_model_dir("kyutai/mimi")
    msg = str(info.value)
    assert "not in the Hugging Face cache" in msg
    assert "HF_HUB_OFFLINE" in msg
    assert str(hf_env / "hub") in msg
    assert "unreachable" not in msg


def test_hub_unreachable(hf_env: Path) -> None:
    with pytest.raises(Dia2AssetError) as info:
        resolve_model_dir("nari-labs/Dia2-2B", allow_patterns=["config.json"])
    msg = str(info.value)
    assert "unreachable" in msg
    assert "http://127.0.0.1:9" in msg
    assert "HF_HUB_OFFLINE" in msg and "local" in msg


def test_cached_snapshot_resolves_offline(hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _populate_cache(
        hf_env / "hub",
        "kyutai/mimi",
        COMMIT,
        {"config.json": "{}", "model.safetensors": "weights"},
    )
    got = resolve_model_dir("kyutai/mimi", allow_patterns=["config.json", "*.safetensors"])
    assert got.resolve() == snapshot.resolve()
    assert (got / "config.json").read_text() == "{}"
    # An explicit commit hash finds the same snapshot without reading refs/.
    assert resolve_model_dir("kyutai/mimi", revision=COMMIT).resolve() == snapshot.resolve()


def test_cached_snapshot_via_hf_hub_cache(
    tmp_path: Path, hf_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_CACHE takes precedence over HF_HOME, as in huggingface_hub."""
    cache = tmp_path / "elsewhere"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _populate_cache(cache, "org/tiny", COMMIT, {"config.json": "{}"})
    assert resolve_model_dir("org/tiny").resolve() == snapshot.resolve()


def test_cached_snapshot_missing_requested_file(hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _populate_cache(hf_env / "hub", "org/tiny", COMMIT, {"config.json": "{}"})
    with pytest.raises(Dia2AssetError, match=r"lacks file\(s\): model\.safetensors"):
        resolve_model_dir("org/tiny", allow_patterns=["config.json", "model.safetensors"])


def test_cached_snapshot_is_used_when_hub_unreachable(hf_env: Path) -> None:
    """Online mode with a dead endpoint falls back to the cache, like huggingface_hub does."""
    snapshot = _populate_cache(hf_env / "hub", "org/tiny", COMMIT, {"config.json": "{}"})
    assert resolve_model_dir("org/tiny").resolve() == snapshot.resolve()


class _FakeHubHandler(http.server.BaseHTTPRequestHandler):
    """A few Hub API routes on loopback: serves repo ``org/tiny`` at COMMIT, or fails every request.

    ``error_code``/``status`` (class attributes, set per test) switch it to answering like the Hub does for
    a missing or gated repository.
    """

    error_code: str | None = None
    status = 200
    requests: list[str]

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        self.requests.append(f"{self.command} {path}")
        if self.error_code is not None:
            body = json.dumps({"error": self.error_code}).encode()
            self._send(
                self.status, body, {"X-Error-Code": self.error_code, "X-Error-Message": self.error_code}
            )
            return
        as_json = {"Content-Type": "application/json"}
        if path.startswith("/api/models/org/tiny/revision/"):
            info = {"id": "org/tiny", "sha": COMMIT, "siblings": [{"rfilename": f} for f in HUB_FILES]}
            self._send(200, json.dumps(info).encode(), as_json)
        elif path.startswith("/api/models/org/tiny/tree/"):
            tree = [
                {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for f, b in HUB_FILES.items()
            ]
            self._send(200, json.dumps(tree).encode(), as_json)
        elif path.startswith(f"/org/tiny/resolve/{COMMIT}/") and path.rsplit("/", 1)[1] in HUB_FILES:
            body = HUB_FILES[path.rsplit("/", 1)[1]]
            etag = '"' + hashlib.sha1(body).hexdigest() + '"'
            self._send(200, body, {"X-Repo-Commit": COMMIT, "ETag": etag})
        else:
            self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


HUB_FILES = {"config.json": b'{"tiny": true}', "model.safetensors": b"w" * 4096, "README.md": b"# tiny"}


@pytest.fixture
def fake_hub(hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_FakeHubHandler]]:
    handler = type("Handler", (_FakeHubHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_download_then_offline(
    fake_hub: type[_FakeHubHandler],
    hf_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A repo id is downloaded into the cache (only the files asked for), then found again offline."""
    with caplog.at_level(logging.INFO, logger="dia2.hub"):
        got = resolve_model_dir("org/tiny", allow_patterns=["config.json", "*.safetensors"])
    assert got.resolve() == (hf_env / "hub" / "models--org--tiny" / "snapshots" / COMMIT).resolve()
    assert sorted(p.name for p in got.iterdir()) == ["config.json", "model.safetensors"]
    assert (got / "model.safetensors").read_bytes() == HUB_FILES["model.safetensors"]
    assert f"GET /org/tiny/resolve/{COMMIT}/config.json" in fake_hub.requests
    assert not any("README.md" in r for r in fake_hub.requests)
    assert "Fetching org/tiny" in caplog.text

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub.requests.clear()
    again = resolve_model_dir("org/tiny", allow_patterns=["config.json", "*.safetensors"])
    assert again == got
    assert fake_hub.requests == []  # offline: not a single request


def test_repo_not_found(fake_hub: type[_FakeHubHandler]) -> None:
    fake_hub.error_code, fake_hub.status = "RepoNotFound", 404
    with pytest.raises(Dia2AssetError) as info:
        resolve_model_dir("nari-labs/no-such-model")
    msg = str(info.value)
    assert "was not found" in msg and "nari-labs/no-such-model" in msg
    assert "unreachable" not in msg


def test_gated_repo(fake_hub: type[_FakeHubHandler]) -> None:
    fake_hub.error_code, fake_hub.status = "GatedRepo", 403
    with pytest.raises(Dia2AssetError, match="gated repository"):
        resolve_model_dir("nari-labs/gated-model")


def test_revision_not_found(fake_hub: type[_FakeHubHandler]) -> None:
    fake_hub.error_code, fake_hub.status = "RevisionNotFound", 404
    with pytest.raises(Dia2AssetError, match="Revision 'v9' does not exist"):
        resolve_model_dir("org/tiny", revision="v9")
