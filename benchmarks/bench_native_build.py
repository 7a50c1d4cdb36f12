"""What the native step loops cost once: a cold build into an empty extension cache, then the load
of the cached library by a new process (each timed from after ``import torch``).

    python benchmarks/bench_native_build.py > results/speed/native_build.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = (
    "import time, torch; t = time.perf_counter(); "
    "from zf_lightning.models.zforcing.native import native_loops; "
    "assert native_loops() is not None, 'no build'; print(time.perf_counter() - t)"
)


def timed_load(cache: str) -> float:
    """Seconds a fresh process takes to get the native loops with ``cache`` as the extension cache."""
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=cache)
    done = subprocess.run([sys.executable, "-c", CODE], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout)


def main() -> dict[str, object]:
    out: dict[str, object] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="zf_ext_") as cache:
        out["cold_build_s"] = timed_load(cache)
        out["warm_load_s"] = timed_load(cache)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out["command"] = " ".join(sys.argv)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
