"""Entry point of a load-test worker process (``python -m asyncdicom.loadtest.worker``), see
:mod:`asyncdicom.loadtest.processes`; kept apart so that running it does not import it twice."""

from __future__ import annotations

import base64
import pickle
import sys
import time

import anyio

from .processes import worker_main

__all__ = ["main"]


def main() -> None:
    """Entry point of a worker process (see the module docstring)."""
    payload = sys.stdin.readline()
    spec, offset, backend = pickle.loads(base64.b64decode(payload))
    started = time.perf_counter()
    try:
        anyio.run(worker_main, spec, offset, backend=backend)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # the parent turns it into one error line
        print(f"error worker failed after {time.perf_counter() - started:.1f} s: {exc!r}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
