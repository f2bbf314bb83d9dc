"""Run the atheris fuzzing campaign: every harness in this folder, one after the other.

    python tests/fuzz/run.py [--seconds 60] [--rss-limit-mb 1024] [--only codec ...]
                             [--corpus DIR] [--artifacts DIR] [--nice 10]

Each harness (``fuzz_<name>.py``) runs for ``--seconds`` (libFuzzer's ``-max_total_time``)
under a memory limit (``-rss_limit_mb``) and a per-input time limit (``-timeout``), starting
from a seed corpus of valid PDUs and sessions that its ``seeds()`` function builds; the corpus
goes to a temporary folder unless ``--corpus`` names one to keep (one sub-folder per harness).
A crash (an exception other than the documented typed errors, a failed property, a per-input
timeout or running out of memory) makes this script exit with status 1 after the other
harnesses have run, printing the path of the reproducer libFuzzer wrote (``--artifacts``,
default a new temporary folder) and the command that replays it.  Needs atheris
(``pip install -e .[fuzz]``).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: harness name -> libFuzzer -max_len (the negotiation seeds include a 64 KiB boundary RQ)
HARNESSES = {
    "codec": 8192,
    "negotiation": 70000,
    "dimse": 8192,
    "acceptor": 16384,
    "dataset": 16384,
}


def write_seeds(name: str, corpus: Path) -> int:
    """Write the harness's seed inputs into ``corpus``; returns how many."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    module = importlib.import_module(f"fuzz_{name}")
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = module.seeds()
    for i, data in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(data)
    return len(seeds)


def run_one(name: str, args: argparse.Namespace, corpus: Path, artifacts: Path) -> dict[str, str]:
    """Fuzz one harness; returns what happened (status, executions, reproducer, log)."""
    seeds = write_seeds(name, corpus)
    log = artifacts / f"{name}.log"
    command = [
        sys.executable,
        str(HERE / f"fuzz_{name}.py"),
        str(corpus),
        f"-max_total_time={args.seconds}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-timeout={args.timeout}",
        f"-max_len={HARNESSES[name]}",
        f"-artifact_prefix={artifacts}/{name}-",
        "-print_final_stats=1",
    ]
    if args.nice:
        command = ["nice", "-n", str(args.nice), *command]
    print(f"==== {name}: {seeds} seed(s), {args.seconds} s", flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        # the harness's own limits end it; this bound only catches a hung interpreter
        try:
            rc = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=args.seconds * 2 + 120
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    took = time.monotonic() - started
    text = log.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    reproducers = re.findall(r"Test unit written to (\S+)", text)
    result = {
        "name": name,
        "rc": str(rc),
        "executions": runs[-1] if runs else "?",
        "seconds": f"{took:.0f}",
        "reproducer": reproducers[-1] if reproducers else "",
        "log": str(log),
    }
    print(
        f"---- {name}: exit {rc}, {result['executions']} executions in {result['seconds']} s",
        flush=True,
    )
    if rc != 0:
        tail = "\n".join(text.splitlines()[-40:])
        print(f"CRASH in {name} (log {log}):\n{tail}", flush=True)
        if result["reproducer"]:
            print(f"reproducer: {result['reproducer']}", flush=True)
            print(f"replay: {sys.executable} {HERE / f'fuzz_{name}.py'} {result['reproducer']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="per harness (default 60)")
    parser.add_argument("--rss-limit-mb", type=int, default=1024, help="default 1024")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input (default 10)")
    parser.add_argument("--only", nargs="+", choices=sorted(HARNESSES), help="these harnesses")
    parser.add_argument("--corpus", type=Path, help="keep the corpora here (default: temporary)")
    parser.add_argument("--artifacts", type=Path, help="crash reproducers and logs go here")
    parser.add_argument("--nice", type=int, default=0, help="run the harnesses under nice -n N")
    args = parser.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed (pip install -e '.[fuzz]')", file=sys.stderr)
        return 2
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="asyncdicom-fuzz-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    temporary = None if args.corpus else Path(tempfile.mkdtemp(prefix="asyncdicom-corpus-"))
    corpora = args.corpus or temporary
    assert corpora is not None
    results = []
    try:
        for name in args.only or list(HARNESSES):
            results.append(run_one(name, args, corpora / name, artifacts))
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    print("\n==== summary")
    for r in results:
        status = "ok" if r["rc"] == "0" else f"CRASH (exit {r['rc']}) {r['reproducer']}"
        print(f"{r['name']:12} {r['executions']:>10} executions {r['seconds']:>5} s  {status}")
    print(f"logs and reproducers: {artifacts}")
    return 0 if all(r["rc"] == "0" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
