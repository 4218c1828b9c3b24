"""The installed llama.cpp is the portable build the README's commands make, not a CPU-specific one.

pip compiles llama-cpp-python with llama.cpp's default `GGML_NATIVE=ON`, which targets every instruction
the build machine's CPU advertises; machines of this project's kind advertise AVX-512/AMX variants the VM
cannot execute, and the server then dies with SIGILL on its first completion. pip's wheel cache is keyed
by the sdist alone, so such a wheel built anywhere on the machine is silently reused by later installs.
This test catches it in CI, before any inference test meets the SIGILL.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys

import pytest

# x86-64-v3, what `-DGGML_NATIVE=OFF` compiles for (ggml's INS_ENB defaults), plus non-ISA build flags.
PORTABLE_X86 = {"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"}
NOT_INSTRUCTION_SETS = {"LLAMAFILE", "OPENMP", "REPACK", "ACCELERATE", "KLEIDIAI"}
REINSTALL = (
    f'CMAKE_ARGS="-DGGML_NATIVE=OFF" {sys.executable} -m pip install --force-reinstall --no-cache-dir '
    "--no-deps llama-cpp-python==0.3.36"
)


def compiled_cpu_features() -> set[str]:
    """The CPU features llama.cpp was compiled with, as its own system info reports them (`NAME = 1`)."""
    info = subprocess.run(
        [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = next((line for line in info.splitlines() if line.lstrip().startswith("CPU :")), info)
    return {name for name, on in re.findall(r"([A-Z0-9_]+) = (\d)", cpu) if on == "1"}


def test_llama_cpp_is_compiled_for_portable_x86_64() -> None:
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the portability rule is about x86-64 instruction sets")
    features = compiled_cpu_features()
    assert "AVX2" in features, f"unexpected llama.cpp system info: {sorted(features)}"
    extra = features - PORTABLE_X86 - NOT_INSTRUCTION_SETS
    assert not extra, (
        f"llama-cpp-python was compiled for this CPU's extra instructions {sorted(extra)} (GGML_NATIVE), "
        f"probably a wheel reused from pip's cache; rebuild it portable with:\n  {REINSTALL}"
    )
