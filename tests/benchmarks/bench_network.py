"""Network benchmarks: asyncdicom vs pynetdicom vs DCMTK, every peer in its own process.

Run: ``python tests/benchmarks/bench_network.py [--quick] [--only NAME ...] [--repeat R]``

Measurements (names for ``--only``):

* ``echo``: C-ECHO round trips per second on one association.  Generator: ``loadgen.py echo``
  (asyncdicom's AE API, its own process) against our ``storescp`` (asyncio and trio), the
  pynetdicom SCP and DCMTK ``storescp``; DCMTK ``echoscu --repeat N`` against each as a second
  generator (its rate is N / process wall time, so it includes process start and association).
* ``assoc``: sequential (associate, one C-ECHO, release) per second, ``loadgen.py assoc-echo``.
* ``concurrent``: 300 associations at once against one of our ``storescp`` processes, each with
  a few C-ECHOs and one C-STORE of a small instance.
* ``idle``: 10 000 idle associations held by one of our ``storescp`` processes: server RSS per
  association and the server's CPU while they idle.
* ``store-recv``: DCMTK ``storescu +sd`` sends N x 0.5 MB to each SCP (to disk and ``--ignore``).
* ``store-send``: our ``asyncdicom storescu``, DCMTK ``storescu`` and the pynetdicom SCU send the
  same files to DCMTK ``storescp --ignore``.
* ``bigstore``: DCMTK ``storescu`` sends 64 MB instances to our ``storescp --output-dir``; the
  server's peak RSS (VmHWM) is read from /proc.

Fairness: DCMTK processes get ``TCP_NODELAY=1`` (DCMTK 3.6.7 leaves Nagle's algorithm on
otherwise, see :func:`harness.peers.dcmtk_env`); pynetdicom processes get
``--tcp-nodelay`` (pynetdicom never sets TCP_NODELAY itself); asyncdicom sets it always.  Every
receiver announces a maximum PDU of 131072 bytes (DCMTK's largest allowed value), so every sender
uses the same PDU size.  Throughput figures are the best of ``--repeat`` runs.  All traffic goes
to 127.0.0.1; every subprocess has a timeout; servers and temporary folders are cleaned up.

Results: a rich table on stdout and ``bench-results/network.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

# The peer harness lives in tests/harness (not in the installed package): run as a script,
# this file puts tests/ on sys.path itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.peers import (
    LOCALHOST,
    DcmtkStoreSCP,
    PynetdicomSCP,
    dcmtk_env,
    echoscu_command,
    find_dcmtk_program,
    free_port,
    pynetdicom_scu_command,
    require_dcmtk,
    storescu_command,
    wait_for_port,
)

from asyncdicom.storage.synthetic import write_ct_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LOADGEN = HERE / "loadgen.py"
PY = sys.executable
MAX_PDU = 131072  # every receiver announces this (DCMTK storescp's maximum)
NAMES = ("echo", "assoc", "concurrent", "idle", "store-recv", "store-send", "bigstore")


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One measured figure."""

    group: str
    server: str
    client: str
    value: float | None
    unit: str
    note: str = ""
    runs: list[float] = field(default_factory=list)


@dataclass
class Target:
    """One target of the issue: a ratio asyncdicom / other and its threshold."""

    name: str
    ours: float | None
    other: float | None
    required: float
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.other:
            return None
        return self.ours / self.other

    @property
    def met(self) -> bool | None:
        r = self.ratio
        return None if r is None else r >= self.required


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.targets: list[Target] = []
        self.details: dict[str, Any] = {}
        self.errors: list[str] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        shown = "FAILED" if row.value is None else f"{row.value:,.1f} {row.unit}"
        print(f"  {row.group:<12} {row.server:<28} {row.client:<26} {shown} {row.note}", flush=True)
        return row

    def value(self, group: str, server: str, client: str) -> float | None:
        for r in self.rows:
            if (r.group, r.server, r.client) == (group, server, client):
                return r.value
        return None


# --------------------------------------------------------------------------- processes


def _raise_nofile() -> None:
    """preexec_fn / own process: soft RLIMIT_NOFILE up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Proc:
    """A finished subprocess."""

    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool = False


def run(cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> Proc:
    """Run ``cmd`` to completion (killed after ``timeout`` s); wall time from spawn to exit."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Proc(None, out, err, time.perf_counter() - start, timed_out=True)
    return Proc(done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def last_json(text: str, prefix: str = "") -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith(prefix + "{"):
            with contextlib.suppress(json.JSONDecodeError):
                parsed: dict[str, Any] = json.loads(line[len(prefix) :])
                return parsed
    return None


class OurSCP:
    """``python -m asyncdicom storescp`` in its own process."""

    def __init__(
        self,
        output_dir: Path | None,
        *,
        backend: str = "asyncio",
        max_associations: int = 1000,
        log_dir: Path,
    ) -> None:
        self.output_dir = output_dir
        self.backend = backend
        self.max_associations = max_associations
        self.log_path = log_dir / f"our-storescp-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> OurSCP:
        for _attempt in range(5):
            self.port = free_port()
            cmd = [
                PY,
                "-m",
                "asyncdicom",
                "storescp",
                "--host",
                LOCALHOST,
                "--port",
                str(self.port),
                "--backend",
                self.backend,
                "--max-pdu",
                str(MAX_PDU),
                "--max-associations",
                str(self.max_associations),
            ]
            cmd += (
                ["--ignore"]
                if self.output_dir is None
                else ["--output-dir", os.fspath(self.output_dir)]
            )
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_raise_nofile,
                    cwd=ROOT,
                )
            try:
                wait_for_port(LOCALHOST, self.port, timeout=20.0, proc=self.proc)
                return self
            except Exception:
                self.stop()
                if "Address already in use" not in self.log_path.read_text("utf-8", "replace"):
                    raise
        raise RuntimeError("our storescp did not start")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def server(kind: str, output_dir: Path | None, log_dir: Path, **kw: Any) -> Iterator[Any]:
    """Start one SCP: ``ours`` / ``ours-trio`` / ``pynetdicom`` / ``dcmtk``; yields it (has
    ``port`` and ``pid``)."""
    srv: Any
    if kind in ("ours", "ours-trio"):
        srv = OurSCP(
            output_dir,
            backend="trio" if kind == "ours-trio" else "asyncio",
            log_dir=log_dir,
            **kw,
        )
        with srv:
            yield srv
    elif kind == "pynetdicom":
        with PynetdicomSCP(output_dir=output_dir, max_pdu=MAX_PDU, **kw) as srv:
            yield srv
    elif kind == "dcmtk":
        with DcmtkStoreSCP(output_dir=output_dir, max_pdu=MAX_PDU, **kw) as srv:
            yield srv
    else:
        raise ValueError(kind)


SERVER_LABEL = {
    "ours": "asyncdicom storescp (asyncio)",
    "ours-trio": "asyncdicom storescp (trio)",
    "pynetdicom": "pynetdicom SCP",
    "dcmtk": "DCMTK storescp",
}


#: async backend of the load generator (the same for every server); trio measured ~5-10 %
#: faster than asyncio for this client on this machine
LOADGEN_BACKEND = "trio"


def _set_loadgen_backend(backend: str) -> None:
    global LOADGEN_BACKEND
    LOADGEN_BACKEND = backend


def loadgen(op: str, port: int, *args: str, timeout: float) -> tuple[dict[str, Any] | None, Proc]:
    p = run(
        [PY, os.fspath(LOADGEN), op, LOCALHOST, str(port), *args, "--backend", LOADGEN_BACKEND],
        timeout=timeout,
    )
    return last_json(p.stdout), p


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of ``pid`` in KiB, exact, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def best(values: list[float]) -> float | None:
    return max(values) if values else None


# --------------------------------------------------------------------------- measurements


@dataclass
class Config:
    quick: bool
    repeat: int
    echo_count: int
    echo_seconds: float
    assoc_count: int
    assoc_seconds: float
    concurrent: int
    idle: int
    instances: int
    instance_bytes: int
    big_count: int
    big_bytes: int


def bench_echo(cfg: Config, res: Results, log_dir: Path) -> None:
    print("C-ECHO on one association", flush=True)
    for kind in ("ours", "ours-trio", "pynetdicom", "dcmtk"):
        with server(kind, None, log_dir) as srv:
            rates: list[float] = []
            for _ in range(cfg.repeat):
                out, p = loadgen(
                    "echo",
                    srv.port,
                    "--count",
                    str(cfg.echo_count),
                    "--max-seconds",
                    str(cfg.echo_seconds),
                    timeout=cfg.echo_seconds + 60,
                )
                if out is None or out.get("failed") or "rate_per_s" not in out:
                    res.errors.append(
                        f"echo loadgen vs {kind}: {p.stdout[-300:]} {p.stderr[-500:]}"
                    )
                    continue
                rates.append(float(out["rate_per_s"]))
            res.add(
                Row(
                    "echo",
                    SERVER_LABEL[kind],
                    "loadgen (asyncdicom)",
                    best(rates),
                    "echo/s",
                    runs=rates,
                )
            )
            # DCMTK echoscu as a second generator: sized to take about echo_seconds / 2
            guess = best(rates) or 200.0
            n = int(max(100, min(cfg.echo_count, guess * cfg.echo_seconds / 2)))
            rates2: list[float] = []
            for _ in range(cfg.repeat):
                p = run(
                    echoscu_command(LOCALHOST, srv.port, repeat=n, timeout=30),
                    timeout=cfg.echo_seconds * 4 + 60,
                    env=dcmtk_env(),
                )
                if p.returncode != 0:
                    res.errors.append(f"echoscu vs {kind}: rc={p.returncode} {p.stderr[-500:]}")
                    continue
                rates2.append(n / p.wall_s)
            res.add(
                Row(
                    "echo",
                    SERVER_LABEL[kind],
                    "DCMTK echoscu --repeat",
                    best(rates2),
                    "echo/s",
                    note=f"N={n}, process wall time",
                    runs=rates2,
                )
            )
    ours = res.value("echo", SERVER_LABEL["ours"], "loadgen (asyncdicom)")
    res.targets.append(
        Target(
            "C-ECHO/s vs pynetdicom SCP (loadgen)",
            ours,
            res.value("echo", SERVER_LABEL["pynetdicom"], "loadgen (asyncdicom)"),
            10.0,
        )
    )
    res.targets.append(
        Target(
            "C-ECHO/s vs DCMTK storescp (loadgen)",
            ours,
            res.value("echo", SERVER_LABEL["dcmtk"], "loadgen (asyncdicom)"),
            0.5,
        )
    )


def bench_assoc(cfg: Config, res: Results, log_dir: Path) -> None:
    print("associate + C-ECHO + release, sequential", flush=True)
    for kind in ("ours", "pynetdicom", "dcmtk"):
        with server(kind, None, log_dir) as srv:
            rates: list[float] = []
            for _ in range(cfg.repeat):
                out, p = loadgen(
                    "assoc-echo",
                    srv.port,
                    "--count",
                    str(cfg.assoc_count),
                    "--max-seconds",
                    str(cfg.assoc_seconds),
                    timeout=cfg.assoc_seconds + 60,
                )
                if out is None or out.get("failed") or "rate_per_s" not in out:
                    res.errors.append(
                        f"assoc loadgen vs {kind}: {p.stdout[-300:]} {p.stderr[-500:]}"
                    )
                    continue
                rates.append(float(out["rate_per_s"]))
            res.add(
                Row(
                    "assoc",
                    SERVER_LABEL[kind],
                    "loadgen (asyncdicom)",
                    best(rates),
                    "assoc/s",
                    runs=rates,
                )
            )
    res.targets.append(
        Target(
            "associate+echo+release/s vs pynetdicom SCP",
            res.value("assoc", SERVER_LABEL["ours"], "loadgen (asyncdicom)"),
            res.value("assoc", SERVER_LABEL["pynetdicom"], "loadgen (asyncdicom)"),
            20.0,
        )
    )


def bench_concurrent(cfg: Config, res: Results, log_dir: Path, tmp: Path) -> None:
    print(f"{cfg.concurrent} concurrent associations", flush=True)
    small = tmp / "small"
    [small_file] = write_ct_files(small, 1, 16 * 1024)
    out_dir = tmp / "concurrent-out"
    with server("ours", out_dir, log_dir) as srv:
        out, p = loadgen(
            "concurrent",
            srv.port,
            "--associations",
            str(cfg.concurrent),
            "--echoes",
            "3",
            "--store",
            os.fspath(small_file),
            "--max-seconds",
            "120",
            timeout=180,
        )
        hwm = vm_hwm_kb(srv.pid)
    files = [f for f in out_dir.iterdir() if f.suffix == ".dcm"] if out_dir.exists() else []
    shutil.rmtree(out_dir, ignore_errors=True)
    if out is None or "wall_s" not in out:
        res.errors.append(f"concurrent: {p.stdout[-300:]} {p.stderr[-500:]}")
        res.add(Row("concurrent", SERVER_LABEL["ours"], "loadgen", None, "s"))
        return
    failures = int(out["failed"])
    res.details["concurrent"] = {**out, "files_written": len(files), "server_vmhwm_kb": hwm}
    res.add(
        Row(
            "concurrent",
            SERVER_LABEL["ours"],
            f"loadgen, {cfg.concurrent} assoc",
            float(out["wall_s"]),
            "s wall",
            note=f"failures {failures}, stores {out['stores_ok']}, files {len(files)}",
        )
    )
    res.add(
        Row("concurrent", SERVER_LABEL["ours"], "failed associations", float(failures), "count")
    )


def bench_idle(cfg: Config, res: Results, log_dir: Path) -> None:
    print(f"{cfg.idle} idle associations", flush=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    n = cfg.idle
    if hard != resource.RLIM_INFINITY and hard - 200 < n:
        n = hard - 200
        res.errors.append(f"idle: RLIMIT_NOFILE hard limit {hard}: using {n} associations")
    info: dict[str, Any] = {"requested": cfg.idle, "associations": n, "nofile_hard": hard}
    with server("ours", None, log_dir, max_associations=n + 100) as srv:
        ps = psutil.Process(srv.pid)
        warm, _ = loadgen("echo", srv.port, "--count", "10", timeout=60)  # import lazy modules
        info["warmup"] = warm
        rss_before = ps.memory_info().rss
        client = subprocess.Popen(
            [
                PY,
                os.fspath(LOADGEN),
                "idle",
                LOCALHOST,
                str(srv.port),
                "--associations",
                str(n),
                "--max-seconds",
                "300",
                "--hold-seconds",
                "120",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            opened = _read_prefixed(client, "OPEN ", timeout=330)
            info["open"] = opened
            if opened is None:
                raise RuntimeError("the idle load generator printed no OPEN line")
            time.sleep(1.0)  # let the last A-ASSOCIATE-ACs leave the server's queues
            rss_open = ps.memory_info().rss
            fds = ps.num_fds()
            cpu0 = ps.cpu_times()
            ccpu0 = psutil.Process(client.pid).cpu_times()
            t0 = time.perf_counter()
            time.sleep(5.0)
            cpu1 = ps.cpu_times()
            ccpu1 = psutil.Process(client.pid).cpu_times()
            dt = time.perf_counter() - t0
            busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            cbusy = (ccpu1.user - ccpu0.user) + (ccpu1.system - ccpu0.system)
            assert client.stdin is not None
            client.stdin.write(b"release\n")
            client.stdin.flush()
            done = _read_prefixed(client, "DONE ", timeout=330)
            info["done"] = done
            client.wait(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(timeout=10)
    opened_n = int(opened.get("opened", 0))
    per_assoc = (rss_open - rss_before) / opened_n if opened_n else None
    info.update(
        rss_before=rss_before,
        rss_open=rss_open,
        server_fds=fds,
        idle_cpu_s=busy,
        idle_window_s=dt,
        server_idle_cpu_percent=100 * busy / dt,
        client_idle_cpu_percent=100 * cbusy / dt,
        rss_per_association=per_assoc,
    )
    res.details["idle"] = info
    res.add(
        Row(
            "idle",
            SERVER_LABEL["ours"],
            f"loadgen, {n} idle assoc",
            float(opened_n),
            "open",
            note=f"failed {opened.get('failed')}, opened in {opened['open_s']:.1f} s, "
            f"server fds {fds}",
        )
    )
    res.add(
        Row(
            "idle",
            SERVER_LABEL["ours"],
            "RSS per association",
            per_assoc / 1024 if per_assoc else None,
            "KiB",
            note=f"RSS {rss_before / 2**20:.1f} -> {rss_open / 2**20:.1f} MiB",
        )
    )
    res.add(
        Row(
            "idle",
            SERVER_LABEL["ours"],
            f"idle CPU over {dt:.1f} s",
            100 * busy / dt,
            "% of a core",
            note=f"{busy * 1000:.0f} ms CPU",
        )
    )


def _read_prefixed(proc: subprocess.Popen[bytes], prefix: str, timeout: float) -> Any:
    """The JSON after ``prefix`` on the next matching stdout line of ``proc`` (bounded wait)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = proc.stdout.readline().decode("utf-8", "replace")
            if not line:
                return None
            if line.startswith(prefix):
                return json.loads(line[len(prefix) :])
        return None
    finally:
        sel.close()


def _count_received(folder: Path) -> int:
    return sum(1 for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def bench_store_recv(cfg: Config, res: Results, log_dir: Path, data: Path, tmp: Path) -> None:
    total = sum(f.stat().st_size for f in data.iterdir())
    print(f"C-STORE receive: DCMTK storescu, {cfg.instances} x {cfg.instance_bytes} B", flush=True)
    for kind in ("ours", "dcmtk", "pynetdicom"):
        for to_disk in (True, False):
            out_dir = tmp / f"recv-{kind}" if to_disk else None
            mbs: list[float] = []
            ips: list[float] = []
            for _ in range(cfg.repeat):
                if out_dir is not None:
                    shutil.rmtree(out_dir, ignore_errors=True)
                    out_dir.mkdir(parents=True)
                with server(kind, out_dir, log_dir) as srv:
                    p = run(
                        storescu_command(
                            LOCALHOST, srv.port, [data], required_only=True, timeout=60
                        ),
                        timeout=900,
                        env=dcmtk_env(),
                    )
                received = _count_received(out_dir) if out_dir is not None else cfg.instances
                if p.returncode != 0 or received != cfg.instances:
                    res.errors.append(
                        f"store-recv {kind} disk={to_disk}: rc={p.returncode} received "
                        f"{received}/{cfg.instances} {p.stderr[-400:]}"
                    )
                    continue
                mbs.append(total / 1e6 / p.wall_s)
                ips.append(cfg.instances / p.wall_s)
            if out_dir is not None:
                shutil.rmtree(out_dir, ignore_errors=True)
            where = "to disk" if to_disk else "--ignore"
            res.add(
                Row(
                    "store-recv",
                    f"{SERVER_LABEL[kind]} {where}",
                    "DCMTK storescu",
                    best(mbs),
                    "MB/s",
                    note=f"{best(ips) or 0:,.0f} inst/s",
                    runs=mbs,
                )
            )
    for where in ("to disk", "--ignore"):
        ours = res.value("store-recv", f"{SERVER_LABEL['ours']} {where}", "DCMTK storescu")
        res.targets.append(
            Target(
                f"C-STORE receive MB/s {where} vs DCMTK storescp",
                ours,
                res.value("store-recv", f"{SERVER_LABEL['dcmtk']} {where}", "DCMTK storescu"),
                0.5,
            )
        )
        res.targets.append(
            Target(
                f"C-STORE receive MB/s {where} vs pynetdicom SCP",
                ours,
                res.value("store-recv", f"{SERVER_LABEL['pynetdicom']} {where}", "DCMTK storescu"),
                3.0,
            )
        )


def bench_store_send(cfg: Config, res: Results, log_dir: Path, data: Path) -> None:
    total = sum(f.stat().st_size for f in data.iterdir())
    print("C-STORE send to DCMTK storescp --ignore", flush=True)
    senders: dict[str, Callable[[int], tuple[list[str], dict[str, str] | None]]] = {
        "asyncdicom storescu": lambda port: (
            [
                PY,
                "-m",
                "asyncdicom",
                "storescu",
                LOCALHOST,
                str(port),
                os.fspath(data),
                "--called-aet",
                "STORESCP",
            ],
            None,
        ),
        "DCMTK storescu": lambda port: (
            storescu_command(LOCALHOST, port, [data], required_only=True, timeout=60),
            dcmtk_env(),
        ),
        "pynetdicom SCU": lambda port: (
            pynetdicom_scu_command(
                "store",
                LOCALHOST,
                port,
                os.fspath(data),
                "--tcp-nodelay",
                "--max-pdu",
                str(MAX_PDU),
            ),
            None,
        ),
    }
    for name, build in senders.items():
        walls: list[float] = []
        inner: list[float] = []
        for _ in range(cfg.repeat):
            with server("dcmtk", None, log_dir) as srv:
                cmd, env = build(srv.port)
                p = run(cmd, timeout=900, env=env)
            if p.returncode != 0:
                res.errors.append(
                    f"store-send {name}: rc={p.returncode} {p.stdout[-300:]} {p.stderr[-400:]}"
                )
                continue
            walls.append(total / 1e6 / p.wall_s)
            js = last_json(p.stdout)
            if js and js.get("mb_per_s"):
                inner.append(float(js["mb_per_s"]))
            elif "MB/s)" in p.stdout:
                inner.append(float(p.stdout.rsplit("(", 1)[1].split()[0]))
        note = "process wall time"
        if inner:
            note += f"; self-reported {best(inner):,.1f} MB/s (excludes start-up)"
        res.add(
            Row(
                "store-send",
                "DCMTK storescp --ignore",
                name,
                best(walls),
                "MB/s",
                note=note,
                runs=walls,
            )
        )
    ours = res.value("store-send", "DCMTK storescp --ignore", "asyncdicom storescu")
    res.targets.append(
        Target(
            "C-STORE send MB/s vs DCMTK storescu",
            ours,
            res.value("store-send", "DCMTK storescp --ignore", "DCMTK storescu"),
            0.5,
        )
    )
    res.targets.append(
        Target(
            "C-STORE send MB/s vs pynetdicom SCU",
            ours,
            res.value("store-send", "DCMTK storescp --ignore", "pynetdicom SCU"),
            5.0,
        )
    )


def bench_bigstore(cfg: Config, res: Results, log_dir: Path, tmp: Path) -> None:
    print(f"{cfg.big_count} x {cfg.big_bytes >> 20} MiB to disk: peak RSS", flush=True)
    big = tmp / "big"
    write_ct_files(big, cfg.big_count, cfg.big_bytes)
    total = sum(f.stat().st_size for f in big.iterdir())
    for kind in ("ours", "dcmtk"):
        out_dir = tmp / f"big-out-{kind}"
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with server(kind, out_dir, log_dir) as srv:
                base = vm_hwm_kb(srv.pid)
                p = run(
                    storescu_command(LOCALHOST, srv.port, [big], required_only=True, timeout=60),
                    timeout=900,
                    env=dcmtk_env(),
                )
                hwm = vm_hwm_kb(srv.pid)
            received = _count_received(out_dir)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        ok = p.returncode == 0 and received == cfg.big_count
        if not ok:
            res.errors.append(
                f"bigstore {kind}: rc={p.returncode} received {received} {p.stderr[-400:]}"
            )
        res.add(
            Row(
                "bigstore",
                f"{SERVER_LABEL[kind]} to disk",
                "DCMTK storescu",
                hwm / 1024 if hwm and ok else None,
                "MiB peak RSS",
                note=f"VmHWM; {base / 1024 if base else 0:.1f} MiB after start; "
                f"{total / 1e6 / p.wall_s:,.0f} MB/s",
            )
        )
    shutil.rmtree(big, ignore_errors=True)


# --------------------------------------------------------------------------- environment


def environment() -> dict[str, Any]:
    def ver(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "not installed"

    dcmtk = run(["storescp", "--version"], timeout=10).stdout.splitlines()
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "anyio": ver("anyio"),
        "trio": ver("trio"),
        "pydicom": ver("pydicom"),
        "pynetdicom": ver("pynetdicom"),
        "asyncdicom": ver("asyncdicom"),
        "psutil": ver("psutil"),
        "dcmtk": dcmtk[0].strip("$ ").strip() if dcmtk else "?",
        "dcmtk_path": find_dcmtk_program("storescp"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


# --------------------------------------------------------------------------- main


def print_tables(res: Results, env: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=220)
    t = Table(title="Network: asyncdicom vs pynetdicom vs DCMTK (127.0.0.1)")
    for col in ("test", "server", "client", "value", "unit", "note"):
        t.add_column(col, justify="right" if col == "value" else "left")
    for r in res.rows:
        t.add_row(
            r.group,
            r.server,
            r.client,
            "FAILED" if r.value is None else f"{r.value:,.1f}",
            r.unit,
            r.note,
        )
    console.print(t)
    tt = Table(title="Targets (ratio = asyncdicom / other)")
    for col in ("target", "ours", "other", "ratio", "required", "met"):
        tt.add_column(col)
    for g in res.targets:
        tt.add_row(
            g.name,
            "-" if g.ours is None else f"{g.ours:,.1f}",
            "-" if g.other is None else f"{g.other:,.1f}",
            "-" if g.ratio is None else f"{g.ratio:.2f}x",
            f">= {g.required}x",
            {True: "yes", False: "NO", None: "?"}[g.met],
        )
    console.print(tt)
    console.print(f"environment: {json.dumps(env)}; load generator backend: {LOADGEN_BACKEND}")
    for e in res.errors:
        console.print(f"[red]problem:[/red] {e}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts for a fast run")
    ap.add_argument(
        "--loadgen-backend",
        choices=("asyncio", "trio"),
        default="trio",
        help="async backend of the load generator, the same for every server (default trio)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        choices=NAMES,
        metavar="NAME",
        help=f"run only these ({', '.join(NAMES)})",
    )
    ap.add_argument("--repeat", type=int, default=None, help="runs per figure (best is kept)")
    ap.add_argument("--output", type=Path, default=ROOT / "bench-results" / "network.json")
    args = ap.parse_args(argv)
    _set_loadgen_backend(args.loadgen_backend)
    require_dcmtk(("storescp", "storescu", "echoscu"))
    _raise_nofile()
    q = args.quick
    cfg = Config(
        quick=q,
        repeat=args.repeat or (1 if q else 3),
        echo_count=2000 if q else 20000,
        echo_seconds=5.0 if q else 10.0,
        assoc_count=300 if q else 3000,
        assoc_seconds=5.0 if q else 10.0,
        concurrent=300,
        idle=1000 if q else 10000,
        instances=200 if q else 1000,
        instance_bytes=512 * 1024,
        big_count=2 if q else 5,
        big_bytes=64 * 1024 * 1024,
    )
    only = set(args.only or NAMES)
    env = environment()
    res = Results()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="asyncdicom-bench-"))
    log_dir = tmp / "logs"
    log_dir.mkdir()
    try:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("echo", lambda: bench_echo(cfg, res, log_dir)),
            ("assoc", lambda: bench_assoc(cfg, res, log_dir)),
            ("concurrent", lambda: bench_concurrent(cfg, res, log_dir, tmp)),
            ("idle", lambda: bench_idle(cfg, res, log_dir)),
        ]
        data = tmp / "instances"
        if only & {"store-recv", "store-send"}:
            print(f"writing {cfg.instances} x {cfg.instance_bytes} B instances", flush=True)
            write_ct_files(data, cfg.instances, cfg.instance_bytes)
        steps += [
            ("store-recv", lambda: bench_store_recv(cfg, res, log_dir, data, tmp)),
            ("store-send", lambda: bench_store_send(cfg, res, log_dir, data)),
            ("bigstore", lambda: bench_bigstore(cfg, res, log_dir, tmp)),
        ]
        for name, step in steps:
            if name not in only:
                continue
            try:
                step()
            except Exception as exc:  # one broken measurement must not lose the others
                res.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print_tables(res, env)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": asdict(cfg),
        "environment": env,
        "elapsed_s": elapsed,
        "rows": [asdict(r) for r in res.rows],
        "targets": [{**asdict(t), "ratio": t.ratio, "met": t.met} for t in res.targets],
        "details": res.details,
        "problems": res.errors,
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
    }
    args.output.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results written to {args.output} ({elapsed:.0f} s)")
    return 0 if not res.errors else 1


if __name__ == "__main__":
    sys.exit(main())
