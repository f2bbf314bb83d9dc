"""Load-test results merged (``asyncdicom bench merge``, :mod:`asyncdicom.loadtest.merge`):
the histogram and rate arithmetic on hand-written results, two real runs against an in-process
SCP merged and compared with one run of the same total load, and the command's errors."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from hdrh.histogram import HdrHistogram

from asyncdicom import AE
from asyncdicom.cli.main import build_parser
from asyncdicom.errors import BenchResultError, IncompatibleRuns
from asyncdicom.loadtest import LoadResult, RunInfo, Timeline, merge_runs, read_result
from tests.cli_main import run_main
from tests.test_bench import bench_cli, serving
from tests.test_cli import err, out, run_cli

#: a wall-clock time to build hand-written runs at (2026-12-08 00:00:00 UTC)
T0 = 1_796_688_000.0


def run_info(operation: str = "echo", rate: float | None = 100.0, **kw: Any) -> RunInfo:
    kw.setdefault("associations", 2)
    kw.setdefault("windows", (1,))
    return RunInfo(operation, (("SCP", "127.0.0.1", 11112),), rate=rate, **kw)


def uniform_run(
    started: float, seconds: float, per_s: float, *, bytes_per_op: int = 0, **kw: Any
) -> LoadResult:
    """A run of ``seconds`` (a multiple of 0.1) that finished ``per_s`` operations per second,
    evenly: the same count in each tenth of a second."""
    buckets = round(seconds * 10)
    per_bucket = per_s / 10
    timeline = Timeline(0.1, [per_bucket] * buckets, [per_bucket * bytes_per_op] * buckets)
    operations = round(per_s * seconds)
    return LoadResult(
        operations=operations,
        elapsed=seconds,
        bytes_sent=operations * bytes_per_op,
        started=started,
        timeline=timeline,
        run=run_info(**kw),
    )


def through_json(result: LoadResult, path: Path) -> LoadResult:
    """``result`` written as ``bench --json`` writes it and read back."""
    path.write_text(json.dumps(result.summary()))
    return read_result(path)


# ------------------------------------------------------------------------ histograms, counts


def nearest_rank(values: list[int], percentile: float) -> int:
    """The value at rank percentile x N / 100 of the sorted values (N chosen so that the rank
    is a whole number: then every usual definition of a percentile agrees)."""
    rank = percentile * len(values) / 100
    assert abs(rank - round(rank)) < 1e-9
    return sorted(values)[round(rank) - 1]


def test_merged_histograms_are_exactly_one_histogram_of_all_values(tmp_path: Path) -> None:
    """1000 latencies split unevenly over two runs, merged through their JSON files: the
    merged count, min, max and percentiles are those of the 1000 values, computed here from
    the values themselves.  They are whole microseconds below 2048, which a 3-significant-
    digit histogram holds without rounding (2048 sub-buckets of 1 us in its first bucket)."""
    values = [1 + (i * 389 + (i * i) % 97) % 2047 for i in range(1000)]
    one, two = uniform_run(T0, 1.0, 300), uniform_run(T0, 1.0, 700)
    for i, value in enumerate(values):
        (one if i % 10 < 3 else two).latency.record_value(value)
    one.errors_by_kind = {"aborted": 1, "timeout": 2}
    two.errors_by_kind = {"aborted": 4, "0xA700": 3}
    one.setup.record_value(1500)
    two.setup.record_value(700)
    merged = merge_runs(
        [through_json(one, tmp_path / "one.json"), through_json(two, tmp_path / "two.json")]
    )
    again = through_json(merged, tmp_path / "merged.json")  # what `merge --json` writes
    for result in (merged, again):
        assert result.latency.get_total_count() == 1000
        assert result.latency.get_min_value() == min(values)
        assert result.latency.get_max_value() == max(values)
        latency = result.summary()["latency_ms"]
        for name, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
            assert latency[name] == nearest_rank(values, p) / 1000, name
        assert latency["max"] == max(values) / 1000
        assert result.operations == 1000
        assert result.errors_by_kind == {"aborted": 5, "timeout": 2, "0xA700": 3}
        assert result.errors == 10
        assert result.setup.get_total_count() == 2
        assert result.summary()["association_setup_ms"]["max"] == 1.5
        assert result.summary()["association_setup_ms"]["p50"] == 0.7


def test_merged_histograms_of_long_latencies_match_one_histogram(tmp_path: Path) -> None:
    """Latencies from 2 ms to 40 s (rounded by the histogram to 3 significant digits): the
    merged histogram answers every percentile as one histogram fed all the values does, and
    each is within the histogram's 0.1 % of the value of that rank."""
    values = [2_000 + (i * 7_919_993) % 40_000_000 for i in range(1000)]
    one, two, three = (uniform_run(T0, 1.0, n) for n in (334, 333, 333))
    for i, value in enumerate(values):
        (one, two, three)[i % 3].latency.record_value(value)
    merged = merge_runs(
        [through_json(r, tmp_path / f"{n}.json") for n, r in enumerate((one, two, three))]
    )
    single = HdrHistogram(1, 3_600_000_000, 3)
    for value in values:
        single.record_value(value)
    for p in (0.0, 10.0, 50.0, 90.0, 99.0, 99.9, 100.0):
        got = merged.latency.get_value_at_percentile(p)
        assert got == single.get_value_at_percentile(p), p
        if p:
            assert 0 <= got - nearest_rank(values, p) <= nearest_rank(values, p) / 1000, p
    assert merged.latency.get_total_count() == single.get_total_count() == 1000
    assert merged.latency.get_max_value() == single.get_max_value()
    assert merged.latency.get_min_value() == single.get_min_value()


# ------------------------------------------------------------------------------------- rates


@pytest.mark.parametrize("offset", [0.5, 0.55, 0.123])
def test_rates_are_summed_over_the_common_window(offset: float) -> None:
    """Run A from T0 for 2 s at 100 operations/s, run B from T0 + offset for 2 s at 50/s (and
    1000 bytes each): their common window is [T0 + offset, T0 + 2 s]; in it A did 100/s and B
    50/s, so the merged rate is 150/s and 0.15 MB/s, whatever the window's length (a tenth of
    a second cut by the window's edge counts pro rata).  Counts are the runs' whole counts."""
    a = uniform_run(T0, 2.0, 100, bytes_per_op=1000)
    b = uniform_run(T0 + offset, 2.0, 50, bytes_per_op=1000)
    merged = merge_runs([a, b])
    assert merged.started == T0 + offset
    assert merged.elapsed == pytest.approx(2.0 - offset)
    assert merged.ops_per_s == pytest.approx(150.0)
    assert merged.mb_per_s == pytest.approx(0.15)
    assert merged.operations == 300 and merged.bytes_sent == 300_000
    assert merged.run == RunInfo(
        "echo", (("SCP", "127.0.0.1", 11112),), 4, (1,), 200.0, processes=2, runs=2
    )
    # the order of the results does not matter
    assert merge_runs([b, a]).ops_per_s == pytest.approx(150.0)


def test_a_merged_result_merges_again(tmp_path: Path) -> None:
    """Merging is associative: (A + B) + C is A + B + C, through the JSON files; and one
    result merged alone is itself."""
    a = uniform_run(T0, 3.0, 100)
    b = uniform_run(T0 + 0.25, 3.0, 40)
    c = uniform_run(T0 + 0.5, 2.0, 10)
    for run, value in ((a, 1000), (b, 2000), (c, 3000)):
        run.latency.record_value(value)
    ab = through_json(merge_runs([a, b]), tmp_path / "ab.json")
    stepwise = merge_runs([ab, through_json(c, tmp_path / "c.json")])
    at_once = merge_runs([a, b, c])
    for result in (stepwise, at_once):
        assert result.started == T0 + 0.5
        assert result.elapsed == pytest.approx(2.0)
        assert result.ops_per_s == pytest.approx(150.0)
        assert result.operations == 300 + 120 + 20
        assert result.run is not None and result.run.runs == 3
        assert result.latency.get_total_count() == 3
    alone = merge_runs([through_json(a, tmp_path / "a.json")])
    assert alone.summary()["ops_per_s"] == a.summary()["ops_per_s"] == 100.0
    assert alone.started == pytest.approx(T0, abs=1e-6) and alone.operations == 300


def test_runs_that_do_not_merge() -> None:
    a = uniform_run(T0, 1.0, 100)
    with pytest.raises(IncompatibleRuns, match=r"ended before .* started"):
        merge_runs([a, uniform_run(T0 + 1.5, 1.0, 100)], ["a.json", "late.json"])
    with pytest.raises(IncompatibleRuns, match=r"a\.json is a echo run and find\.json a find run"):
        merge_runs([a, uniform_run(T0, 1.0, 100, operation="find")], ["a.json", "find.json"])
    with pytest.raises(IncompatibleRuns, match=r"closed\.json a closed-loop one"):
        merge_runs([a, uniform_run(T0, 1.0, 100, rate=None)], ["a.json", "closed.json"])
    with pytest.raises(IncompatibleRuns, match="no results"):
        merge_runs([])


def test_a_file_that_is_no_bench_result(tmp_path: Path) -> None:
    good = uniform_run(T0, 1.0, 10).summary()
    cases: dict[str, Any] = {
        "not JSON": "{",
        "not a JSON object": [],
        "no 'run'": {"operations": 1},
        "no histograms": {k: v for k, v in good.items() if k != "histograms"},
        "no 'peers' in 'run'": {**good, "run": {"operation": "echo"}},
        "'histograms' is not what bench writes": {
            **good,
            "histograms": {"unit": "us", "latency": "garbage", "association_setup": ""},
        },
        "'timeline' is not what bench writes": {
            **good,
            "timeline": {"interval_s": 0, "operations": [], "bytes": []},
        },
    }
    for reason, content in cases.items():
        path = tmp_path / "r.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(BenchResultError, match=reason):
            read_result(path)


# ------------------------------------------------------------------- two real runs vs one


async def test_two_runs_merged_equal_one_run_of_their_load(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Two ``bench`` processes at 100 operations/s for 2 s each, at the same time, merged, and
    one at 200/s for 2 s, against one in-process SCP.

    Counts are exact (an open-loop run with a duration does rate x duration operations).  The
    rates: each open-loop run follows its fixed schedule whatever the peer does; a rate measured
    over a window differs from the schedule's only by the operations in flight at the window's
    edges (latency x rate: a stall of 100 ms on this shared machine moves ~20 of the ~300
    operations in the window) and by the pro-rata share of the tenth of a second cut by an
    edge: within 15 % of one run's rate.  Not summed (averaged: 100/s) would be far outside.
    The merged histogram holds every operation, its maximum is the larger of the two, its
    median lies between theirs."""
    scp = AE("SCP")
    load = ("--rate", "100", "--duration", "2", "--associations", "2")
    async with serving(scp) as server:
        port = str(server.port)

        async def half(name: str) -> None:
            result = await run_cli(
                "bench", "127.0.0.1", port, "--called-aet", "SCP", *load,
                "--json", str(tmp_path / name), "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert result.returncode == 0, err(result)

        async with anyio.create_task_group() as tg:
            tg.start_soon(half, "a.json")
            tg.start_soon(half, "b.json")
        whole = await bench_cli(
            port, "SCP", "--rate", "200", "--duration", "2", "--associations", "4",
            backend=anyio_backend, tmp_path=tmp_path,
        )  # fmt: skip
        assert whole.returncode == 0, err(whole)
    merge = await run_cli(
        "bench", "merge", "a.json", "b.json", "--json", "m.json", "--plot", "m.png", cwd=tmp_path
    )
    assert merge.returncode == 0, err(merge)
    assert "2 runs merged" in out(merge) and "latency" in out(merge)
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    merged = json.loads((tmp_path / "m.json").read_text())
    single = json.loads((tmp_path / "r.json").read_text())
    assert set(merged) == set(single)  # the shape of one run's result
    assert merged["operations"] == single["operations"] == 400
    assert merged["errors"] == single["errors"] == 0
    assert merged["run"]["runs"] == 2 and merged["run"]["associations"] == 4
    assert merged["run"]["rate"] == single["run"]["rate"] == 200.0
    assert merged["ops_per_s"] == pytest.approx(single["ops_per_s"], rel=0.15)
    assert merged["ops_per_s"] == pytest.approx(a["ops_per_s"] + b["ops_per_s"], rel=0.15)
    # the common window: from the later start to the earlier end (to the microsecond, the
    # files' resolution)
    when = {k: datetime.fromisoformat(v["started"][:-1]) for k, v in (("a", a), ("b", b))}
    ends = {k: datetime.fromisoformat(v["ended"][:-1]) for k, v in (("a", a), ("b", b))}
    assert datetime.fromisoformat(merged["started"][:-1]) == max(when.values())
    micro = timedelta(microseconds=2)
    assert abs(datetime.fromisoformat(merged["ended"][:-1]) - min(ends.values())) <= micro
    result = read_result(tmp_path / "m.json")
    assert result.latency.get_total_count() == 400
    parts = [a["latency_ms"], b["latency_ms"]]
    assert merged["latency_ms"]["max"] == max(p["max"] for p in parts)
    assert (
        min(p["p50"] for p in parts) <= merged["latency_ms"]["p50"] <= max(p["p50"] for p in parts)
    )


# ---------------------------------------------------------------------------- command line


def test_merge_and_a_load_test_parse_apart() -> None:
    """``bench merge FILE...`` merges; ``bench HOST PORT`` is a load test, also of a host
    written ``merge.``, or after an option."""
    from asyncdicom.cli import bench

    parser = build_parser("bench")
    merging = parser.parse_args(["bench", "merge", "a.json", "b.json", "--json", "m.json"])
    assert merging.func is bench.run_merge and merging.files == ["a.json", "b.json"]
    for argv in (
        ["bench", "merge.", "104", "--called-aet", "X"],
        ["bench", "--called-aet", "X", "merge", "104"],
        ["bench", "pacs", "104", "--called-aet", "X"],
    ):
        args = parser.parse_args(argv)
        assert args.func is bench.run and args.port == 104, argv


def write(tmp_path: Path, name: str, result: LoadResult) -> str:
    (tmp_path / name).write_text(json.dumps(result.summary()))
    return name


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["missing.json"], "argument FILE: missing.json: no such file"),
        (["text.json"], "argument FILE: text.json: not a bench result: not JSON"),
        (["other.json"], "argument FILE: other.json: not a bench result: no 'run'"),
        (["a.json", "find.json"], "cannot merge: a.json is a echo run and find.json a find run"),
        (["a.json", "late.json"], "cannot merge: a.json ended before late.json started"),
        ([], "the following arguments are required: FILE"),
        (
            ["104", "--called-aet", "X"],
            "unrecognized arguments: --called-aet X (a load test of a host named 'merge': "
            "write it 'merge.')",
        ),
    ],
)
def test_merge_usage_errors(tmp_path: Path, files: list[str], message: str) -> None:
    (tmp_path / "text.json").write_text("operations: 3\n")
    (tmp_path / "other.json").write_text('{"operations": 3}')
    write(tmp_path, "a.json", uniform_run(T0, 1.0, 100))
    write(tmp_path, "find.json", uniform_run(T0, 1.0, 100, operation="find"))
    write(tmp_path, "late.json", uniform_run(T0 + 5, 1.0, 100))
    result = run_main("bench", "merge", *files, "--json", "m.json", cwd=tmp_path)
    assert result.returncode == 2
    assert f"asyncdicom bench merge: error: {message}" in err(result), err(result)
    assert "Traceback" not in err(result)
    assert not (tmp_path / "m.json").exists()


def test_merge_reports_failed_operations_with_exit_1(tmp_path: Path) -> None:
    """A merge whose runs had failed operations says so as a run does: the counts by kind,
    exit status 1 (the merged file is written all the same); a short common window is warned
    about."""
    a, b = uniform_run(T0, 2.0, 100), uniform_run(T0 + 1.5, 2.0, 100)
    a.errors_by_kind = {"aborted": 2}
    b.errors_by_kind = {"aborted": 1, "0xA700": 4}
    write(tmp_path, "a.json", a)
    write(tmp_path, "b.json", b)
    result = run_main("bench", "merge", "a.json", "b.json", "--json", "m.json", cwd=tmp_path)
    assert result.returncode == 1
    assert "7 of 400 operations with 127.0.0.1:11112 failed (0xA700: 4, aborted: 3)" in err(result)
    assert "warning: the runs have 0.50 s in common, 25% of the shortest" in err(result)
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["errors_by_kind"] == {"0xA700": 4, "aborted": 3}
    assert merged["ops_per_s"] == pytest.approx(200.0)
    assert "errors aborted: 3" in out(result)


def test_chart_title_of_merged_runs() -> None:
    from datetime import timezone

    from asyncdicom.cli.bench import chart_title

    peers = (("A", "10.0.0.1", 104), ("B", "10.0.0.2", 104), ("C", "::1", 104))
    run = RunInfo("store", peers, associations=30, windows=(2, 4), rate=None, runs=3)
    when = datetime(2026, 12, 8, 9, 0, tzinfo=timezone.utc)
    assert chart_title(LoadResult(operations=12345), run, when).splitlines() == [
        "bench store: 3 peers",
        "12,345 operations, 3 runs, 30 associations x window 2/4, closed loop; 2026-12-08 09:00Z",
    ]
    two = RunInfo("echo", peers[1:], associations=1, windows=(1,), rate=250.0, runs=2)
    assert chart_title(LoadResult(operations=10), two, when).splitlines()[0] == (
        "bench echo: B at 10.0.0.2:104, C at [::1]:104"
    )
