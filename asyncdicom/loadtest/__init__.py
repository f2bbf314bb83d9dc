"""Load testing a DICOM node: the engine behind ``asyncdicom bench``, as a Python API.

>>> spec = LoadSpec("127.0.0.1", 11112, called_aet="STORESCP", operation="echo",
...                 associations=10, window=4, rate=500, duration=5)
>>> result = await run_load(spec)                       # in this process
>>> result = await run_in_processes(spec, processes=2)  # spread over worker processes
>>> result.summary()["latency_ms"]["p99"]
>>> merged = merge_runs([read_result("host1.json"), read_result("host2.json")])

See :mod:`asyncdicom.loadtest.engine` for the model (closed and open loop, coordinated
omission), :mod:`.newuids` for ``new_uids``, :mod:`.chart` for the latency chart and
:mod:`.merge` for results of several hosts merged into one.
"""

from __future__ import annotations

from .chart import write_percentile_chart
from .engine import (
    LoadGenerator,
    LoadResult,
    LoadSpec,
    Operation,
    RunInfo,
    Timeline,
    classify,
    new_histogram,
    percentiles,
    run_load,
)
from .merge import BenchResultError, IncompatibleRuns, merge_runs, read_result
from .newuids import UIDPatchError
from .processes import WorkerFailed, run_in_processes

__all__ = [
    "BenchResultError",
    "IncompatibleRuns",
    "LoadGenerator",
    "LoadResult",
    "LoadSpec",
    "Operation",
    "RunInfo",
    "Timeline",
    "UIDPatchError",
    "WorkerFailed",
    "classify",
    "merge_runs",
    "new_histogram",
    "percentiles",
    "read_result",
    "run_in_processes",
    "run_load",
    "write_percentile_chart",
]
