"""The router (asyncdicom.router): rules, the durable queue, forwarding, dead letters, order,
restart, and hostile input; in-process on both backends, with our own AE as the destinations.

The command line (usage errors, ``status``, SIGUSR1, ``kill -9`` with DCMTK senders) is in
tests/test_cli_router.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncdicom import AE
from asyncdicom.protocol import uids
from asyncdicom.protocol.messages import CStoreRQ
from asyncdicom.router.core import NO_ROUTE_STATUS, Router
from asyncdicom.router.queue import snapshot
from asyncdicom.router.rules import (
    Destination,
    RulesError,
    RuleSet,
    parse_destination,
    parse_rules,
)
from asyncdicom.storage.codec import encode_dataset
from asyncdicom.storage.synthetic import make_ct_instance

GUARD = 60.0
CT = (uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])
MR = (uids.MR_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])


# --------------------------------------------------------------------------- rules (pure)


A = Destination("ARCHIVE", "10.0.0.1", 104)
R = Destination("REVIEW", "10.0.0.2", 104)
R2 = Destination("REVIEW", "10.0.0.3", 11112)


def test_destination_spellings() -> None:
    assert parse_destination("ARCHIVE@10.0.0.1:104") == A
    assert parse_destination("PACS@[::1]:11112") == Destination("PACS", "::1", 11112)
    assert Destination("PACS", "::1", 11112).name == "PACS@[::1]:11112"
    assert "/" not in Destination("A/B", "h", 1).key
    for bad in ("ARCHIVE", "ARCHIVE@host", "@host:104", "A@h:0", "A@h:70000", "A" * 17 + "@h:1"):
        with pytest.raises(RulesError):
            parse_destination(bad)


def test_rules_route_by_each_condition() -> None:
    rules = parse_rules(
        "# a comment\n"
        "to ARCHIVE            # everything\n"
        "\n"
        "to REVIEW@10.0.0.2:104 modality=CT,MR calling=CT*\n"
        f"to REVIEW@10.0.0.3:11112 called=ROUTER2 sop-class={uids.MR_IMAGE_STORAGE}\n",
        [A, R, R2],
    )
    assert rules.needs_modality

    def route(**kw: str) -> tuple[Destination, ...]:
        values = {"calling": "X", "called": "ROUTER", "sop_class": uids.CT_IMAGE_STORAGE}
        values.update(kw)
        return rules.route(**values)  # type: ignore[arg-type]

    assert route() == (A,)
    assert route(calling="CT1", modality="CT") == (A, R)
    assert route(calling="CT1", modality="US") == (A,)
    assert route(calling="MR1", modality="MR") == (A,)
    assert route(called="ROUTER2", sop_class=uids.MR_IMAGE_STORAGE) == (A, R2)
    assert route(called="ROUTER2") == (A,)
    assert RuleSet((A, R)).route(calling="", called="", sop_class="") == (A, R)
    assert not RuleSet((A,)).needs_modality


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no rule"),
        ("# only a comment\n", "no rule"),
        ("send ARCHIVE\n", "line 1: a rule starts with 'to DESTINATION'"),
        ("to\n", "line 1"),
        ("to ARCHIVE\nto NOBODY\n", "line 2: no --forward destination has the AE title 'NOBODY'"),
        ("to REVIEW\n", "line 1: several --forward destinations have the AE title 'REVIEW'"),
        ("to X@1.2.3.4:5\n", "line 1: 'X@1.2.3.4:5' is not one of the --forward destinations"),
        ("to ARCHIVE colour=red\n", "line 1: unknown condition 'colour'"),
        ("to ARCHIVE modality\n", "line 1: 'modality' is not KEY=VALUE"),
        ("to ARCHIVE modality=CT modality=MR\n", "line 1: the condition 'modality' is given twice"),
        ("to ARCHIVE modality=CT,\n", "line 1: the condition 'modality' has an empty value"),
        ("\n\nto ARCHIVE,\n", "line 3: an empty destination name"),
    ],
)
def test_rules_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, [A, R, R2])
    assert message in str(caught.value)


# --------------------------------------------------------------------------- helpers


class Sink:
    """A destination: our own Storage SCP recording the SOP Instance UIDs it received, in
    order; ``status_for`` decides the answer to each UID (default Success)."""

    def __init__(self, status_for: Callable[[str], int] | None = None, **config: Any) -> None:
        self.received: list[str] = []
        #: the transfer syntax each instance came in
        self.syntaxes: list[str] = []
        self.status_for = status_for or (lambda uid: 0x0000)
        self._waiters: list[tuple[Callable[[list[str]], bool], anyio.Event]] = []
        self.ae = AE("SINK", accept_any_storage=True, **config)

        @self.ae.on_store
        async def on_store(request: Any) -> int:
            self.syntaxes.append(request.context.transfer_syntax)
            async for _ in request.chunks():
                pass
            uid = request.message.affected_sop_instance_uid
            status = self.status_for(uid)
            if status == 0x0000:
                self.received.append(uid)
                for predicate, event in self._waiters:
                    if predicate(self.received):
                        event.set()
            return status

    async def wait_for(self, predicate: Callable[[list[str]], bool]) -> None:
        if predicate(self.received):
            return
        event = anyio.Event()
        self._waiters.append((predicate, event))
        with anyio.fail_after(GUARD):
            await event.wait()

    @asynccontextmanager
    async def serving(self, port: int = 0) -> AsyncIterator[Destination]:
        async with self.ae.server("127.0.0.1", port) as server:
            yield Destination("SINK", "127.0.0.1", server.port)


def unused_port() -> int:
    """A port nothing listens on (a connection to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def instances(n: int, seed: int = 0, modality: str = "CT") -> list[Any]:
    out = []
    for i in range(n):
        ds = make_ct_instance(256, seed=seed + i, instance_number=i + 1)
        ds.Modality = modality
        out.append(ds)
    return out


async def send(port: int, datasets: list[Any], *, aet: str = "SENDER") -> list[int]:
    statuses = []
    with anyio.fail_after(GUARD):
        async with AE(aet).associate(
            "127.0.0.1", port, called_aet="ROUTER", contexts=[CT, MR]
        ) as assoc:
            for ds in datasets:
                statuses.append((await assoc.store(ds)).status)
    return statuses


@asynccontextmanager
async def router(queue: Path, rules: RuleSet, **options: Any) -> AsyncIterator[tuple[Router, int]]:
    options.setdefault("retry_delay", 0.01)
    options.setdefault("linger", 0.2)
    async with Router("ROUTER", queue, rules, **options) as r:
        async with r.ae.server("127.0.0.1", 0) as server:
            yield r, server.port


def queue_files(queue: Path) -> list[str]:
    """Every file left in the queue's incoming/, instances/ and out/ folders."""
    return sorted(
        str(p.relative_to(queue))
        for folder in ("incoming", "instances", "out")
        for p in (queue / folder).rglob("*")
        if p.is_file()
    )


pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- forwarding


async def test_every_instance_to_every_destination_in_order(tmp_path: Path) -> None:
    one, two = Sink(), Sink()
    data = instances(30)
    expected = [str(ds.SOPInstanceUID) for ds in data]
    async with one.serving() as d1, two.serving() as d2:
        async with router(tmp_path / "q", RuleSet((d1, d2))) as (_r, port):
            # two senders at once: each one's instances keep their order everywhere
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, port, data[:15])
                tg.start_soon(send, port, data[15:])
            for sink in (one, two):
                await sink.wait_for(lambda got: len(got) >= 30)
                assert sorted(sink.received) == sorted(expected)
                for part in (expected[:15], expected[15:]):
                    assert [u for u in sink.received if u in part] == part
            # both destinations saw the same order: the queue's
            assert one.received == two.received
    assert queue_files(tmp_path / "q") == []


async def test_rules_choose_the_destinations_and_unrouted_is_refused(tmp_path: Path) -> None:
    ct, mr = Sink(), Sink()
    async with ct.serving() as d1, mr.serving() as d2:
        d1, d2 = Destination("CTDEST", d1.host, d1.port), Destination("MRDEST", d2.host, d2.port)
        rules = parse_rules("to CTDEST modality=CT\nto MRDEST modality=MR calling=MOD1\n", [d1, d2])
        ct_data, mr_data = instances(3, modality="CT"), instances(3, seed=10, modality="MR")
        async with router(tmp_path / "q", rules) as (_r, port):
            assert await send(port, ct_data + mr_data, aet="MOD1") == [0] * 6
            # MR from another modality matches no rule: refused, nothing queued
            assert await send(port, instances(1, seed=20, modality="MR"), aet="MOD2") == [
                NO_ROUTE_STATUS
            ]
            await ct.wait_for(lambda got: len(got) >= 3)
            await mr.wait_for(lambda got: len(got) >= 3)
        assert ct.received == [str(ds.SOPInstanceUID) for ds in ct_data]
        assert mr.received == [str(ds.SOPInstanceUID) for ds in mr_data]
    assert queue_files(tmp_path / "q") == []


async def test_a_compressed_instance_is_decompressed_for_a_destination_that_wants_it(
    tmp_path: Path,
) -> None:
    """The router forwards with the proposal policy and the conversions of storescu: an RLE
    instance goes to a destination accepting only uncompressed syntaxes, decompressed."""
    from samples import sample

    from asyncdicom.protocol import uids

    sink = Sink(storage_transfer_syntaxes=uids.UNCOMPRESSED_TRANSFER_SYNTAXES)
    path = sample("MR_small_RLE.dcm")
    async with sink.serving() as dest:
        async with router(tmp_path / "q", RuleSet((dest,))) as (r, port):
            with anyio.fail_after(GUARD):
                async with AE("SENDER").associate(
                    "127.0.0.1",
                    port,
                    called_aet="ROUTER",
                    contexts=[(uids.MR_IMAGE_STORAGE, [uids.RLE_LOSSLESS])],
                ) as assoc:
                    assert (await assoc.store(path)).status == 0x0000
            await sink.wait_for(lambda got: len(got) >= 1)
            assert r.status()["destinations"][0]["dead_letters"] == 0
    assert sink.syntaxes == [uids.EXPLICIT_VR_LITTLE_ENDIAN]
    assert queue_files(tmp_path / "q") == []


@pytest.mark.parametrize("allow_lossy", [False, True])
async def test_lossy_only_destination_gets_a_new_instance_only_when_allowed(
    tmp_path: Path, allow_lossy: bool
) -> None:
    """A destination accepting only JPEG-LS near-lossless: an uncompressed MR is a dead letter
    (the reason says lossy), or, with ``allow_lossy``, goes out lossy as a new instance."""
    from samples import sample

    from asyncdicom.protocol import uids
    from asyncdicom.storage.reader import read_part10_for_send

    sink = Sink(storage_transfer_syntaxes=(uids.JPEG_LS_NEAR_LOSSLESS,))
    path = sample("MR_small.dcm")
    original = read_part10_for_send(path).sop_instance_uid
    async with sink.serving() as dest:
        async with router(tmp_path / "q", RuleSet((dest,)), allow_lossy=allow_lossy) as (r, port):
            with anyio.fail_after(GUARD):
                async with AE("SENDER").associate(
                    "127.0.0.1",
                    port,
                    called_aet="ROUTER",
                    contexts=[(uids.MR_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])],
                ) as assoc:
                    assert (await assoc.store(path)).status == 0x0000
                await r.wait_idle()  # delivered or dead-lettered
            dead = r.status()["destinations"][0]["dead_letters"]
    if allow_lossy:
        assert dead == 0
        assert sink.syntaxes == [uids.JPEG_LS_NEAR_LOSSLESS]
        assert sink.received != [original] and len(sink.received) == 1
    else:
        assert dead == 1 and sink.received == []
        (letter,) = (tmp_path / "q" / "dead" / dest.key).glob("*.json")
        assert "lossy" in json.loads(letter.read_text())["reason"]
    assert queue_files(tmp_path / "q") == []


async def test_a_refused_instance_is_a_dead_letter_with_its_reason(tmp_path: Path) -> None:
    data = instances(5)
    bad = str(data[2].SOPInstanceUID)
    sink = Sink(lambda uid: 0xA900 if uid == bad else 0x0000)
    async with sink.serving() as dest:
        async with router(tmp_path / "q", RuleSet((dest,))) as (r, port):
            assert await send(port, data) == [0] * 5
            await sink.wait_for(lambda got: len(got) >= 4)
            status = r.status()["destinations"][0]
    assert sink.received == [str(ds.SOPInstanceUID) for ds in data if str(ds.SOPInstanceUID) != bad]
    dead = tmp_path / "q" / "dead" / dest.key
    letters = sorted(dead.glob("*.dcm"))
    assert len(letters) == 1 and status["dead_letters"] == 1
    reason = json.loads(letters[0].with_suffix(".json").read_text())
    assert reason["status"] == "0xA900"
    assert reason["sop_instance_uid"] == bad
    assert reason["destination"] == dest.name
    assert "refused" in reason["reason"]
    # the dead letter is the instance itself
    import pydicom

    assert pydicom.dcmread(letters[0]).SOPInstanceUID == bad
    assert queue_files(tmp_path / "q") == []


async def test_a_destination_that_keeps_failing_dead_letters_after_retry_max(
    tmp_path: Path,
) -> None:
    down = Destination("DOWN", "127.0.0.1", unused_port())
    up = Sink()
    data = instances(2)
    async with up.serving() as dest:
        async with router(tmp_path / "q", RuleSet((dest, down)), retry_max=3) as (r, port):
            assert await send(port, data) == [0, 0]
            await up.wait_for(lambda got: len(got) >= 2)
            dead = tmp_path / "q" / "dead" / down.key
            with anyio.fail_after(GUARD):
                await r.wait_idle()
    reasons = [json.loads(p.read_text()) for p in sorted(dead.glob("*.json"))]
    assert [x["sop_instance_uid"] for x in reasons] == [str(ds.SOPInstanceUID) for ds in data]
    assert all(x["attempts"] == 3 and "refused" in x["reason"] for x in reasons), reasons
    assert queue_files(tmp_path / "q") == []


async def test_a_restart_resumes_in_order_and_status_reads_the_folder(tmp_path: Path) -> None:
    port = unused_port()
    dest = Destination("SINK", "127.0.0.1", port)
    queue = tmp_path / "q"
    data = instances(12)
    async with router(queue, RuleSet((dest,)), retry_delay=30.0) as (_r, rport):
        assert await send(rport, data) == [0] * 12
    snap = snapshot(queue)
    assert snap.instances == 12 and snap.running_pid is None
    assert [(d.name, d.queued, d.dead) for d in snap.destinations] == [(dest.name, 12, 0)]
    sink = Sink()
    async with sink.serving(port) as live:
        assert live == dest
        async with router(queue, RuleSet((dest,))) as (r, _port):
            assert r.resumed == 12
            await sink.wait_for(lambda got: len(got) >= 12)
    assert sink.received == [str(ds.SOPInstanceUID) for ds in data]
    assert queue_files(queue) == []


async def test_a_second_router_cannot_take_the_queue(tmp_path: Path) -> None:
    from asyncdicom.router.queue import QueueBusy

    dest = Destination("SINK", "127.0.0.1", unused_port())
    async with router(tmp_path / "q", RuleSet((dest,))):
        assert snapshot(tmp_path / "q").running_pid is not None
        with pytest.raises(QueueBusy):
            async with Router("R2", tmp_path / "q", RuleSet((dest,))):
                pass


async def test_a_data_set_that_cannot_be_saved_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    dest = Destination("SINK", "127.0.0.1", unused_port())
    ds = make_ct_instance(2000, seed=5)
    raw = encode_dataset(ds, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    async with router(tmp_path / "q", RuleSet((dest,)), retry_delay=30.0) as (r, port):
        with anyio.fail_after(GUARD):
            async with AE("SCU").associate(
                "127.0.0.1", port, called_aet="ROUTER", contexts=[CT]
            ) as assoc:
                context = assoc.find_context(uids.CT_IMAGE_STORAGE)
                assert context is not None

                async def store(data: bytes, sop_instance: str) -> Any:
                    return await assoc.request(
                        context,
                        CStoreRQ(
                            message_id=assoc.next_message_id(),
                            affected_sop_class_uid=uids.CT_IMAGE_STORAGE,
                            affected_sop_instance_uid=sop_instance,
                        ),
                        data,
                    )

                cut = await store(raw[:-10], str(ds.SOPInstanceUID))
                other = await store(raw, "1.2.826.0.1.3680043.18.10.98")
                empty = await store(b"", str(ds.SOPInstanceUID))
        assert r.refused == 3 and r.received == 0
    assert cut.status == 0xC000
    assert other.status == 0xA900
    assert empty.status >= 0xA000
    assert queue_files(tmp_path / "q") == []


# --------------------------------------------------------------------------- the start-up scan


def test_the_scan_undoes_what_a_kill_left_half_done(tmp_path: Path) -> None:
    """Each state a kill can leave between two steps of a commit, a delivery or a
    dead-lettering, made by hand: what was acknowledged stays queued (in order), the rest
    goes."""
    from asyncdicom.router.queue import DiskQueue
    from asyncdicom.storage.synthetic import write_ct_files

    root = tmp_path / "q"
    queue = DiskQueue.open(root, ["A", "B"])
    files = write_ct_files(tmp_path / "src", 4, 256)
    entries = []
    for i, f in enumerate(files, start=1):
        target = queue.incoming / f.name
        target.write_bytes(f.read_bytes())
        entries.append((i, target, ["A", "B"]))
    queue.commit(entries)
    queue.delivered("A", 1)
    queue.delivered("B", 1)  # seq 1: delivered everywhere, removed
    queue.delivered("A", 2)  # seq 2: still for B
    queue.close()
    # a kill after the last link went but before the instance did
    (root / "instances" / f"{4:020d}.dcm").unlink()  # seq 4: links without their instance
    (root / "instances" / f"{9:020d}.dcm").write_bytes(files[0].read_bytes())  # no link: done
    (root / "incoming" / "half.dcm").write_bytes(b"x")  # never committed
    (root / "incoming" / ".0123456789abcdef0123456789abcdef.part").write_bytes(b"x")
    (root / "dead" / "A").mkdir(parents=True)
    (root / "dead" / "A" / f"{3:020d}.json").write_text("{}")  # a reason whose move never came
    reopened = DiskQueue.open(root, ["A", "B"])
    try:
        assert [p.seq for p in reopened.pending["A"]] == [3]
        assert [p.seq for p in reopened.pending["B"]] == [2, 3]
        assert reopened.pending["B"][0].sop_instance_uid == files[1].stem
        assert reopened.next_seq > 3  # what arrives next goes after what is queued
    finally:
        reopened.close()
    assert sorted(p.name for p in (root / "instances").iterdir()) == [
        f"{2:020d}.dcm",
        f"{3:020d}.dcm",
    ]
    assert list((root / "incoming").iterdir()) == []
    assert list((root / "dead" / "A").iterdir()) == []
    assert sorted(p.name for p in (root / "out" / "A").iterdir()) == [f"{3:020d}.dcm"]


async def test_out_of_resources_is_retried_in_order_not_dead_lettered(tmp_path: Path) -> None:
    """0xA7xx (out of resources) is transient: the instance is sent again after the wait, on a
    new association, before the ones behind it; nothing goes to the dead-letter folder."""
    data = instances(4)
    busy = str(data[1].SOPInstanceUID)
    refusals = {busy: 2}

    def status_for(uid: str) -> int:
        if refusals.get(uid, 0) > 0:
            refusals[uid] -= 1
            return 0xA700
        return 0x0000

    sink = Sink(status_for)
    async with sink.serving() as dest:
        async with router(tmp_path / "q", RuleSet((dest,)), retry_max=3) as (r, port):
            assert await send(port, data) == [0] * 4
            await sink.wait_for(lambda got: len(got) >= 4)
            state = r.status()["destinations"][0]
    assert sink.received == [str(ds.SOPInstanceUID) for ds in data]
    assert refusals[busy] == 0
    assert state["dead_letters"] == 0 and "0xA700" in state["last_error"]
    assert not (tmp_path / "q" / "dead" / dest.key).exists()
    assert queue_files(tmp_path / "q") == []


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's remarks on the damaged file
async def test_a_queued_file_damaged_on_disk_is_a_dead_letter_the_rest_goes_on(
    tmp_path: Path,
) -> None:
    port = unused_port()
    dest = Destination("SINK", "127.0.0.1", port)
    queue = tmp_path / "q"
    data = instances(3)
    async with router(queue, RuleSet((dest,)), retry_delay=30.0) as (_r, rport):
        assert await send(rport, data) == [0] * 3
    damaged = sorted((queue / "out" / dest.key).glob("*.dcm"))[1]
    damaged.write_bytes(b"not DICOM at all")  # a hard link: the instance is damaged too
    sink = Sink()
    async with sink.serving(port), router(queue, RuleSet((dest,))) as (r, _port):
        await sink.wait_for(lambda got: len(got) >= 2)
        with anyio.fail_after(GUARD):
            await r.wait_idle()
    assert sink.received == [str(data[0].SOPInstanceUID), str(data[2].SOPInstanceUID)]
    (reason,) = (queue / "dead" / dest.key).glob("*.json")
    assert "not a readable DICOM file" in json.loads(reason.read_text())["reason"]
    assert queue_files(queue) == []
