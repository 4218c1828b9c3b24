"""The vector-store resource: the embedded store locks its folder per process (a second process waits, then
fails clearly), and a Qdrant server that cannot be used is named with the setting to fix."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_assets.lib.vector_store import StoreLockedError
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.qdrant import QdrantResource, QdrantServerError


def qdrant(data_dir: Path, **fields: object) -> QdrantResource:
    """A Qdrant resource whose data folder (the embedded Qdrant's default home) is `data_dir`."""
    return QdrantResource(data_folder=DataFolderResource(path=str(data_dir)), **fields)  # type: ignore[arg-type]


HOLD = """
import sys, time
from pathlib import Path
from ai_assets.lib.vector_store.edge import EdgeStore
store = EdgeStore(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
store.close()
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_waits_for_the_folder_lock(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "qdrant", 2.0)
    started = time.monotonic()
    resource = qdrant(tmp_path / "data", path=str(tmp_path / "qdrant"), lock_timeout_s=60)
    try:
        assert resource.get_store().collections() == []
        assert time.monotonic() - started >= 1.0  # it really waited for the other process
    finally:
        resource.close()
        holder.wait()


def test_lock_timeout_names_the_folder_and_the_way_out(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "qdrant", 10.0)
    try:
        with pytest.raises(
            StoreLockedError, match=r"QDRANT_PATH\) stayed locked by another process \(pid \d+\).*QDRANT_URL"
        ):
            qdrant(tmp_path / "data", path=str(tmp_path / "qdrant"), lock_timeout_s=1).get_store()
    finally:
        holder.kill()
        holder.wait()


def test_alias_swap_is_one_operation(tmp_path: Path) -> None:
    resource = qdrant(tmp_path / "data", path=str(tmp_path / "qdrant"), alias="kb")
    try:
        assert resource.alias_target() is None
        assert resource.ensure_collection("kb-one", 8) is True
        assert resource.ensure_collection("kb-one", 8) is False
        assert resource.point_alias_at("kb-one") is None
        resource.ensure_collection("kb-two", 8)
        assert resource.point_alias_at("kb-two") == "kb-one"
        assert resource.alias_target() == "kb-two"
        with pytest.raises(ValueError, match="8-d vectors, the model makes 16-d"):
            resource.ensure_collection("kb-two", 16)
    finally:
        resource.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A port on 127.0.0.1 that is bound but not listening: connecting to it is refused, and no other
    process can start listening on it while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_server_names_the_url_the_variable_and_the_way_out(refused_url: str, data_dir: Path) -> None:
    resource = qdrant(data_dir, url=refused_url, api_key="qk-secret-value")
    with pytest.raises(QdrantServerError) as caught:
        resource.alias_target()  # the first operation any step does
    message = str(caught.value)
    assert f"Could not connect to the Qdrant server at {refused_url} (QDRANT_URL)" in message
    assert "Connection refused" in message
    assert "unset QDRANT_URL to use the embedded Qdrant" in message and str(data_dir / "qdrant") in message
    assert "qk-secret-value" not in message


def test_credentials_in_the_url_stay_out_of_the_message(refused_url: str, data_dir: Path) -> None:
    with_password = refused_url.replace("http://", "http://admin:hunter2@")
    with pytest.raises(QdrantServerError) as caught:
        qdrant(data_dir, url=with_password).get_store()
    assert "hunter2" not in str(caught.value) and refused_url in str(caught.value)


class _JsonServer(http.server.BaseHTTPRequestHandler):
    """Records every GET path and answers it with `answer(path)`: (status, JSON body)."""

    requests: list[str] = []

    def answer(self, path: str) -> tuple[int, bytes]:
        raise NotImplementedError

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        type(self).requests.append(self.path)
        status, body = self.answer(self.path)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Answer(_JsonServer):
    status = 401

    def answer(self, path: str) -> tuple[int, bytes]:
        return self.status, b'{"status": {"error": "Must provide an API key"}}'


@pytest.mark.parametrize(("status", "advice"), [(401, "QDRANT_API_KEY"), (404, "root URL")])
def test_a_refusing_server_says_which_setting_to_fix(status: int, advice: str, data_dir: Path) -> None:
    handler = type("Handler", (_Answer,), {"status": status, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(QdrantServerError) as caught:
            qdrant(data_dir, url=url).get_store()
    finally:
        server.shutdown()
        server.server_close()
    assert f"The Qdrant server at {url} (QDRANT_URL) answered {status}" in str(caught.value)
    assert advice in str(caught.value)
    assert "/collections" in handler.requests  # the probe really reached the server


class _Healthy(_JsonServer):
    """Answers the two requests a new server client makes the way a Qdrant server does."""

    requests: list[str] = []

    def answer(self, path: str) -> tuple[int, bytes]:
        if path == "/collections":
            return 200, b'{"result": {"collections": []}, "status": "ok", "time": 0.0}'
        return 200, b'{"title": "qdrant - vector search engine", "version": "1.16.0"}'


def test_a_reachable_server_is_probed_once_then_used(data_dir: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    resource = qdrant(data_dir, url=f"http://127.0.0.1:{server.server_address[1]}")
    try:
        store = resource.get_store()
        assert resource.get_store() is store and store.kind == "server"
        assert _Healthy.requests == ["/collections", "/"]
    finally:
        resource.close()
        server.shutdown()
        server.server_close()


def test_empty_settings_mean_the_embedded_qdrant_in_the_data_folder(tmp_path: Path) -> None:
    # Unset QDRANT_URL / QDRANT_API_KEY / QDRANT_PATH reach the resource as "" (settings.apply_defaults).
    resource = qdrant(tmp_path / "data", url="", api_key="", path="")
    assert resource.is_local and resource.local_path == (tmp_path / "data" / "qdrant").resolve()
    assert resource.location == str(tmp_path / "data" / "qdrant")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"QDRANT_PATH='.*a_file': exists and is not a folder"):
        qdrant(tmp_path / "data", path=str(tmp_path / "a_file")).local_path  # noqa: B018 - resolving is the check
