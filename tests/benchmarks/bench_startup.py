"""Start-up: wall time of one ``echoscu`` process, start to exit, against a local SCP.

``python tests/benchmarks/bench_startup.py [--runs N]`` (default 15 runs of each, interleaved:
asyncdicom, pynetdicom, DCMTK, asyncdicom, ...).  The SCP is DCMTK ``storescp`` on 127.0.0.1
with ``TCP_NODELAY=1`` (without it, each C-ECHO waits for a delayed ACK and measures that
instead); every client sends one C-ECHO on one association.  Also measured: ``python -c pass``
(the interpreter alone), ``import asyncdicom``, and ``asyncdicom echoscu --help``.

Prints the median and the best of the runs per command, and the ratios to DCMTK and pynetdicom;
writes ``bench-results/startup.json``.  The figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.peers import DcmtkStoreSCP

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def wall(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``argv`` to its exit (it must exit with status 0)."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed: {done.stderr.decode(errors='replace')}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    env.pop("TCP_NODELAY", None)
    with DcmtkStoreSCP() as scp:
        port = str(scp.port)
        commands = {
            "python -c pass": [PY, "-c", "pass"],
            "import asyncdicom": [PY, "-c", "import asyncdicom"],
            "asyncdicom echoscu --help": [PY, "-m", "asyncdicom", "echoscu", "--help"],
            "asyncdicom echoscu": [PY, "-m", "asyncdicom", "echoscu", "127.0.0.1", port],
            "pynetdicom echoscu": [PY, "-m", "pynetdicom", "echoscu", "127.0.0.1", port],
            "DCMTK echoscu": ["echoscu", "127.0.0.1", port],
        }
        for argv in commands.values():  # warm the caches (bytecode, page cache) once
            wall(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(wall(argv, env))
    load = os.getloadavg()
    result = {
        name: {"median_s": statistics.median(v), "best_s": min(v), "runs": v}
        for name, v in times.items()
    }
    print(f"load average before/after: {load[0]:.2f}")
    print(f"{'command':28} {'median s':>9} {'best s':>8}")
    for name, r in result.items():
        print(f"{name:28} {r['median_s']:9.3f} {r['best_s']:8.3f}")
    ours = result["asyncdicom echoscu"]["median_s"]
    for other in ("pynetdicom echoscu", "DCMTK echoscu"):
        print(f"asyncdicom / {other}: {ours / result[other]['median_s']:.2f}x the time")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "startup.json").write_text(json.dumps({"load": load, "results": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
