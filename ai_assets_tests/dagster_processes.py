"""Dagster's own long-running processes, started as a user starts them: `dagster dev`, `dagster-webserver`,
`dagster-daemon`, each with a private DAGSTER_HOME, on 127.0.0.1, on a free port.

Each runs in its own process group so that stopping it also stops what it started (code servers, run
workers). Output goes to a log file whose tail is quoted whenever something does not come up in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx

from ai_assets_tests.corpora import REPO_ROOT

BIN = Path(sys.executable).parent
WORKSPACE = REPO_ROOT / "workspace.yaml"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_dagster_home(folder: Path, config: str | None = None, extra: str = "") -> Path:
    """A DAGSTER_HOME holding the repository's dagster.yaml (or `config`), with `extra` YAML appended."""
    folder.mkdir(parents=True, exist_ok=True)
    text = config if config is not None else (REPO_ROOT / "dagster.yaml").read_text()
    (folder / "dagster.yaml").write_text(text + ("\n" + extra if extra else ""))
    return folder


def process_env(home: Path, **overrides: str) -> dict[str, str]:
    """The environment of a Dagster process: ours, a private DAGSTER_HOME, the repository importable."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(overrides)
    return env


def wait_for(condition: Callable[[], T], what: str, timeout_s: float, interval_s: float = 0.5,
             describe: Callable[[], str] = lambda: "") -> T:  # fmt: skip
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{describe()}")
        time.sleep(interval_s)


class DagsterProcess:
    """One started Dagster command; `stop()` is a graceful SIGINT, `kill()` a SIGKILL of its whole group."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO_ROOT) -> None:
        self.args = args
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {' '.join(self.args[:2])} log tail ({self.log}) ---\n{text[-chars:]}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"{self.args[0]} exited with {self.proc.returncode}\n{self.tail()}")

    def stop(self, grace_s: float = 20) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self._log_file.close()


def server_info(port: int) -> dict | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def graphql(port: int, query: str, variables: dict | None = None, timeout_s: float = 60) -> dict:
    """A GraphQL query against the webserver (what the UI itself sends); raises on GraphQL errors."""
    response = httpx.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout_s
    )
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]


LOCATION_STATUS = """
query { workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""


def code_location_loaded(port: int) -> bool:
    """True once the webserver has loaded every code location of its workspace without error."""
    try:
        entries = graphql(port, LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
    except (httpx.HTTPError, AssertionError):
        return False
    for entry in entries:
        error = entry["locationOrLoadError"]
        if error and error["__typename"] == "PythonError":
            raise AssertionError(f"code location {entry['name']} failed to load: {error['message']}")
    return bool(entries) and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries)


def start_webserver(home: Path, env: dict[str, str], *, with_daemon: bool = True, timeout_s: float = 180,
                    log_dir: Path | None = None,
                    workspace: Path = WORKSPACE) -> tuple[DagsterProcess, int]:  # fmt: skip
    """Start `dagster dev` (or `dagster-webserver` alone) and return it and its port once its code locations
    have loaded; the caller stops it. `webserver()` is the same as a context manager."""
    port = free_port()
    log = (log_dir or home) / ("dagster_dev.log" if with_daemon else "webserver.log")
    if with_daemon:
        args = [str(BIN / "dagster"), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    else:
        args = [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    process = DagsterProcess(args, env, log)
    try:

        def ready() -> bool:
            process.check_alive()
            return server_info(port) is not None and code_location_loaded(port)

        wait_for(ready, f"the webserver on port {port}", timeout_s, 1.0, process.tail)
    except BaseException:
        process.stop()
        raise
    return process, port


@contextmanager
def webserver(home: Path, env: dict[str, str], *, with_daemon: bool = True, timeout_s: float = 180,
              log_dir: Path | None = None,
              workspace: Path = WORKSPACE) -> Iterator[tuple[DagsterProcess, int]]:  # fmt: skip
    """`dagster dev -w workspace.yaml` (webserver + daemon), or `dagster-webserver` alone; yields it and its port."""
    process, port = start_webserver(
        home, env, with_daemon=with_daemon, timeout_s=timeout_s, log_dir=log_dir, workspace=workspace
    )
    try:
        yield process, port
    finally:
        process.stop()


OLDEST_HEARTBEAT = """
import dagster as dg
instance = dg.DagsterInstance.get()
beats = instance.get_daemon_heartbeats()
print(min((beats[kind].timestamp if kind in beats else 0) for kind in instance.get_required_daemon_types()))
"""


def start_daemon(home: Path, env: dict[str, str], *, timeout_s: float = 180, log_dir: Path | None = None,
                 workspace: Path = WORKSPACE) -> DagsterProcess:  # fmt: skip
    """Start `dagster-daemon run -w workspace.yaml` and return it once every required daemon has sent a
    heartbeat; the caller stops it. `daemon()` is the same as a context manager."""
    process = DagsterProcess(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env, (log_dir or home) / "daemon.log"
    )
    try:
        started = time.time()

        def healthy() -> bool:
            # Heartbeats of this daemon, not of an earlier one of the same DAGSTER_HOME.
            process.check_alive()
            check = subprocess.run([sys.executable, "-c", OLDEST_HEARTBEAT], env=env, capture_output=True, text=True,
                                   timeout=60)  # fmt: skip
            return check.returncode == 0 and float(check.stdout.strip() or 0) > started

        wait_for(healthy, "the daemon's heartbeats", timeout_s, 2.0, process.tail)
    except BaseException:
        process.stop()
        raise
    return process


@contextmanager
def daemon(home: Path, env: dict[str, str], *, timeout_s: float = 180, log_dir: Path | None = None,
           workspace: Path = WORKSPACE) -> Iterator[DagsterProcess]:  # fmt: skip
    """`dagster-daemon run -w workspace.yaml`; yields once every required daemon has sent a heartbeat."""
    process = start_daemon(home, env, timeout_s=timeout_s, log_dir=log_dir, workspace=workspace)
    try:
        yield process
    finally:
        process.stop()
