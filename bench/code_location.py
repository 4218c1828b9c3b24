"""How fast the code location loads: what the webserver, the daemon and every run worker pay first.

    python bench/code_location.py

Figures, printed as `key: value` lines (median of 5 fresh processes each):
  definitions_import_s    `import ai_assets.definitions` in a new interpreter (target <= 5)
  definitions_validate_s  `dagster definitions validate -m ai_assets.definitions` end to end (target <= 5)
  heavy_modules_loaded    torch / sentence_transformers / transformers / ragas / llama_cpp / peft imported by
                          loading the code location (target 0: they load lazily, in the steps that use them)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sentence_transformers", "transformers", "ragas", "llama_cpp", "peft")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    import os

    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "DAGSTER_HOME": home, "AI_ASSETS_DATA_DIR": str(Path(home) / "data")}
        probe = f"import sys, ai_assets.definitions; print(sum(m in sys.modules for m in {HEAVY!r}))"
        imports, heavy = [], set()
        for _ in range(5):
            seconds, out = timed([sys.executable, "-c", probe], env)
            imports.append(seconds)
            heavy.add(int(out.strip()))
        dagster = str(Path(sys.executable).parent / "dagster")
        validates = [
            timed([dagster, "definitions", "validate", "-m", "ai_assets.definitions"], env)[0] for _ in range(5)
        ]
    print(f"definitions_import_s: {statistics.median(imports):.3f}")
    print(f"definitions_validate_s: {statistics.median(validates):.3f}")
    print(f"heavy_modules_loaded: {max(heavy)}")


if __name__ == "__main__":
    main()
