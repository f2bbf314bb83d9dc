"""docs/conformance.md says what the code does.

The tables of the conformance statement that carry a ``<!-- conformance-table: NAME -->``
marker are parsed here and compared with what the apps really do: the A-ASSOCIATE-RQ each SCU
app builds (captured before anything connects), the acceptor configuration each SCP app
serves with (captured as it starts to listen), their option defaults, the matching rules and
the limits.  A change to the code or to the document alone fails a test here.
"""

from __future__ import annotations

import argparse
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID
from samples import sample

from asyncdicom import AE, AEConfig, presets
from asyncdicom.cli.main import build_parser
from asyncdicom.protocol import dimse, negotiation, uids
from asyncdicom.protocol.negotiation import AcceptorConfig
from asyncdicom.protocol.pdu import AssociateRQ
from asyncdicom.protocol.status import StatusCategory, category
from asyncdicom.qr.index import level_of
from asyncdicom.qr.matching import (
    INDEX_COLUMNS,
    QueryError,
    match_value,
    parse_query,
    parse_worklist_query,
)
from asyncdicom.services.commitment import CommitmentSCP
from asyncdicom.storage.synthetic import write_ct_files

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
UID_RE = re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d.])")
ROLES_RE = re.compile(r"SCU-role (\d), SCP-role (\d)")


# --------------------------------------------------------------------------- the document


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def table(name: str) -> list[dict[str, str]]:
    """The rows of the table after ``<!-- conformance-table: NAME -->``, as dicts by header."""
    lines = _text().splitlines()
    marker = f"<!-- conformance-table: {name} -->"
    assert lines.count(marker) == 1, f"{marker} must appear once in {DOC.name}"
    rows: list[list[str]] = []
    for line in lines[lines.index(marker) + 1 :]:
        stripped = line.strip()
        if stripped.startswith("|"):
            rows.append([c.strip() for c in stripped.strip("|").split("|")])
        elif rows:
            break
    header, _rule, *body = rows
    assert body, f"table {name} is empty"
    return [dict(zip(header, row, strict=True)) for row in body]


def uids_in(cell: str) -> tuple[str, ...]:
    return tuple(UID_RE.findall(cell))


def backticked(cell: str) -> str:
    found = re.findall(r"`([^`]*)`", cell)
    return found[0] if found else cell


def doc_roles(cell: str) -> tuple[bool, bool] | None:
    """A proposed context's Role cell: the role selection sub-item proposed, or None."""
    found = ROLES_RE.search(cell)
    if found is None:
        assert cell == "SCU", f"unexpected Role {cell!r}"
        return None
    return (found.group(1) == "1", found.group(2) == "1")


def name_key(name: str) -> str:
    """A SOP class name compared loosely: dashes, '(retired)' and case do not matter."""
    text = unicodedata.normalize("NFKC", name).replace("\N{EN DASH}", "-").replace("(retired)", "")
    text = re.sub(r"\(with `--worklist` only\)", "", text).replace("&", "and")
    text = " ".join(text.lower().split())
    return text.removesuffix(" sop class")


# --------------------------------------------------------------------------- the apps


class _Stop(Exception):
    """Raised where an app would touch the network: what it would do has been recorded."""


def _run_app(argv: list[str]) -> None:
    args: argparse.Namespace = build_parser().parse_args(argv)
    try:
        anyio.run(args.func, args)
    except BaseException as exc:  # the apps report errors their own way
        if not _contains_stop(exc):
            raise


def _contains_stop(exc: BaseException) -> bool:
    if isinstance(exc, _Stop):
        return True
    inner = getattr(exc, "exceptions", ())
    return any(_contains_stop(e) for e in inner) or (
        exc.__cause__ is not None and _contains_stop(exc.__cause__)
    )


@pytest.fixture
def proposals(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[AssociateRQ]]:
    """Every A-ASSOCIATE-RQ an app builds; building one stops the app before it connects."""
    seen: list[AssociateRQ] = []
    original = AE._build_rq

    def build(self: AE, *args: Any, **kwargs: Any) -> AssociateRQ:
        rq = original(self, *args, **kwargs)
        seen.append(rq)
        raise _Stop

    monkeypatch.setattr(AE, "_build_rq", build)
    yield seen


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[AcceptorConfig]]:
    """The acceptor configuration of an app that starts to listen (which stops it)."""
    seen: list[AcceptorConfig] = []

    async def serve(self: AE, *args: Any, **kwargs: Any) -> None:
        seen.append(self._acceptor_config())
        raise _Stop

    def server(self: AE, *args: Any, **kwargs: Any) -> None:
        seen.append(self._acceptor_config())
        raise _Stop

    monkeypatch.setattr(AE, "serve", serve)
    monkeypatch.setattr(AE, "server", server)
    yield seen


def contexts_of(rq: AssociateRQ) -> list[tuple[str, tuple[str, ...], tuple[bool, bool] | None]]:
    """(abstract syntax, transfer syntaxes, proposed (SCU, SCP) roles or None) per context."""
    roles = {r.sop_class_uid: (r.scu_role, r.scp_role) for r in rq.user_information.role_selections}
    return [
        (c.abstract_syntax, tuple(c.transfer_syntaxes), roles.get(c.abstract_syntax))
        for c in rq.presentation_contexts
    ]


def doc_contexts(rows: list[dict[str, str]]) -> list[tuple[str, tuple[str, ...], Any]]:
    return [(r["UID"], uids_in(r["Transfer Syntaxes"]), doc_roles(r["Role"])) for r in rows]


PEER = ["127.0.0.1", "104"]
QUERY = ["--level", "STUDY", "-k", "StudyInstanceUID=1.2.3"]


# --------------------------------------------------------------------------- SOP classes


def test_sop_class_table_names_and_uids_agree_with_the_dictionary(
    served: list[AcceptorConfig], tmp_path: Path
) -> None:
    rows = [r for r in table("sop-classes") if r["SOP Class UID"]]
    for row in rows:
        uid = row["SOP Class UID"]
        assert name_key(row["SOP Class Name"]) == name_key(UID(uid).name), uid
    # qrscp (with --worklist) is SCP of every non-storage SOP class of the table, and of no other
    (tmp_path / "wl").mkdir()
    _run_app(
        ["qrscp", "--port", "0", "--storage", str(tmp_path), "--worklist", str(tmp_path / "wl")]
    )
    (config,) = served
    storage = set(uids.storage_sop_classes())
    accepted = {c.abstract_syntax for c in config.supported} - storage
    assert accepted == {r["SOP Class UID"] for r in rows if "qrscp" in r["SCP"]}
    assert accepted == {r["SOP Class UID"] for r in rows}


def test_storage_sop_classes_are_those_of_the_installed_pydicom() -> None:
    rows = table("storage-sop-classes")
    assert [r["SOP Class UID"] for r in rows] == list(uids.storage_sop_classes())
    for row in rows:
        assert name_key(row["SOP Class Name"]) == name_key(UID(row["SOP Class UID"]).name)
    count = len(uids.storage_sop_classes())
    assert f'"All {count} storage SOP classes' in _text()
    assert "accepted by the STORE-SCP and the QR-SCP (pydicom 3.0)" in _text()


def test_storage_transfer_syntaxes_in_their_order() -> None:
    rows = table("storage-transfer-syntaxes")
    listed = tuple(r["UID"] for r in rows)
    assert listed == uids.ALL_TRANSFER_SYNTAXES == AEConfig().storage_transfer_syntaxes
    for row in rows:
        assert name_key(row["Transfer Syntax"]) == name_key(UID(row["UID"]).name)


def test_common_storage_list() -> None:
    assert tuple(r["SOP Class UID"] for r in table("common-storage")) == presets.COMMON_STORAGE


# --------------------------------------------------------------------------- accepted contexts


def _check_accepted(name: str, config: AcceptorConfig) -> None:
    storage_ts = tuple(r["UID"] for r in table("storage-transfer-syntaxes"))
    listed: set[str] = set()
    for row in table(name):
        role = row["Role"]
        roles = ("SCU" in role, "SCP" in role)
        syntaxes = uids_in(row["Transfer Syntaxes (in order of preference)"])
        if row["UID"] == "all storage":
            assert "storage transfer syntaxes" in row["Transfer Syntaxes (in order of preference)"]
            for uid in uids.storage_sop_classes():
                supported = config.supported_context(uid)
                assert supported is not None, uid
                assert supported.transfer_syntaxes == storage_ts, uid
                assert (supported.scu_role_allowed, supported.scp_role_allowed) == roles, uid
            continue
        uid = row["UID"]
        listed.add(uid)
        assert name_key(row["Abstract Syntax"]) == name_key(UID(uid).name), uid
        supported = config.supported_context(uid)
        assert supported is not None, f"{name}: {uid} is not accepted"
        assert supported.transfer_syntaxes == syntaxes, uid
        assert (supported.scu_role_allowed, supported.scp_role_allowed) == roles, uid
    # and nothing accepted that the table leaves out
    storage = set(uids.storage_sop_classes())
    extra = {c.abstract_syntax for c in config.supported} - storage - listed
    assert not extra, f"{name}: accepted but not in the table: {sorted(extra)}"
    assert config.supported_context("1.2.3.4.5.6.7.8") is None  # an unknown SOP class


def test_storescp_accepts_what_its_table_says(served: list[AcceptorConfig], tmp_path: Path) -> None:
    _run_app(["storescp", "--port", "0", "--output-dir", str(tmp_path / "out")])
    (config,) = served
    _check_accepted("accepted storescp", config)
    assert config.supported_context(uids.STUDY_ROOT_QR_FIND) is None
    # "Several contexts of one abstract syntax are each negotiated on their own"
    assert "each negotiated on their own" in " ".join(_text().split())
    rq = negotiation.build_associate_rq(
        negotiation.RequestorConfig(
            calling_ae_title="SCU", called_ae_title="STORESCP", implementation_class_uid="1.2.3"
        ),
        [
            negotiation.ContextRequest(uids.CT_IMAGE_STORAGE, (uids.JPEG_2000,)),
            negotiation.ContextRequest(uids.CT_IMAGE_STORAGE, (uids.IMPLICIT_VR_LITTLE_ENDIAN,)),
        ],
    )
    result = negotiation.negotiate(rq, config)
    assert isinstance(result, negotiation.Accepted)
    assert [c.transfer_syntax for c in result.association.contexts] == [
        uids.JPEG_2000,
        uids.IMPLICIT_VR_LITTLE_ENDIAN,
    ]


def test_router_accepts_what_its_table_says(served: list[AcceptorConfig], tmp_path: Path) -> None:
    queue = str(tmp_path / "q")
    _run_app(["router", "--port", "0", "--queue", queue, "--forward", "PACS@127.0.0.1:1"])
    (config,) = served
    _check_accepted("accepted router", config)
    assert config.supported_context(uids.STUDY_ROOT_QR_FIND) is None


def test_qrscp_accepts_what_its_table_says(served: list[AcceptorConfig], tmp_path: Path) -> None:
    (tmp_path / "wl").mkdir()
    argv = ["qrscp", "--port", "0", "--storage", str(tmp_path / "st")]
    _run_app([*argv, "--worklist", str(tmp_path / "wl")])
    (config,) = served
    _check_accepted("accepted qrscp", config)
    # without --worklist, the Modality Worklist is the one row that goes
    _run_app(argv)
    without = served[1]
    assert without.supported_context(uids.MODALITY_WORKLIST_FIND) is None
    assert "with `--worklist` only" in next(
        r["Abstract Syntax"]
        for r in table("accepted qrscp")
        if r["UID"] == uids.MODALITY_WORKLIST_FIND
    )


def test_stgcmtscu_listener_accepts_what_its_table_says(
    served: list[AcceptorConfig], tmp_path: Path
) -> None:
    (path,) = write_ct_files(tmp_path, 1, 1024)
    _run_app(["stgcmtscu", *PEER, "--called-aet", "QRSCP", "--listen-port", "0", str(path)])
    (config,) = served
    _check_accepted("accepted stgcmtscu --listen-port", config)


# --------------------------------------------------------------------------- proposed contexts


def test_echoscu_proposes_what_its_table_says(proposals: list[AssociateRQ]) -> None:
    _run_app(["echoscu", *PEER])
    (rq,) = proposals
    assert contexts_of(rq) == doc_contexts(table("proposed echoscu"))


def test_findscu_proposes_what_its_table_says(proposals: list[AssociateRQ]) -> None:
    rows = table("proposed findscu")
    assert [backticked(r["`--model`"]) for r in rows] == [
        "patient",
        "study",
        "patient-study",
        "mwl",
    ]
    for row in rows:
        model = backticked(row["`--model`"])
        level = [] if model == "mwl" else ["--level", "STUDY"]
        proposals.clear()
        _run_app(["findscu", *PEER, "--model", model, *level])
        (rq,) = proposals
        assert contexts_of(rq) == doc_contexts([row]), model
        assert name_key(row["Abstract Syntax"]) == name_key(UID(row["UID"]).name)
    # the default model is the one the table marks
    proposals.clear()
    _run_app(["findscu", *PEER, "--level", "STUDY"])
    (default,) = [r for r in rows if "(default)" in r["`--model`"]]
    assert contexts_of(proposals[0]) == doc_contexts([default])


def _qr_rows(name: str, model: str) -> list[dict[str, str]]:
    return [r for r in table(name) if backticked(r["`--model`"]) == model]


def test_movescu_proposes_what_its_table_says(proposals: list[AssociateRQ]) -> None:
    for model in ("patient", "study", "patient-study"):
        proposals.clear()
        _run_app(["movescu", *PEER, "--model", model, *QUERY, "--move-dest", "DEST"])
        (rq,) = proposals
        assert contexts_of(rq) == doc_contexts(_qr_rows("proposed movescu", model)), model


def test_getscu_proposes_what_its_table_says(proposals: list[AssociateRQ], tmp_path: Path) -> None:
    storage_ts = tuple(r["UID"] for r in table("storage-transfer-syntaxes"))
    (storage_row,) = [r for r in table("proposed getscu") if r["UID"] == "storage"]
    storage_roles = doc_roles(storage_row["Role"])
    common = [r["SOP Class UID"] for r in table("common-storage")]
    for model in ("patient", "study", "patient-study"):
        proposals.clear()
        _run_app(["getscu", *PEER, "--model", model, *QUERY, "--output-dir", str(tmp_path / "out")])
        (rq,) = proposals
        got = contexts_of(rq)
        qr = doc_contexts(_qr_rows("proposed getscu", model))
        assert got[: len(qr)] == qr, model
        rest = got[len(qr) :]
        # 24 classes: two contexts each, the uncompressed syntaxes and the compressed ones
        assert [c[0] for c in rest] == [uid for uid in common for _ in range(2)]
        assert all(c[2] == storage_roles for c in rest)
        for first, second in zip(rest[::2], rest[1::2], strict=True):
            assert set(first[1]) | set(second[1]) == set(storage_ts)
            assert len(first[1]) == 3 and len(second[1]) == 18


@pytest.mark.parametrize(("classes", "per_class"), [(6, 19), (7, 2), (63, 2), (64, 1), (126, 1)])
def test_getscu_context_groups_follow_the_stated_thresholds(classes: int, per_class: int) -> None:
    # "19 contexts per class ... (up to 6 classes); ... 2 per class, up to 63 classes; ...
    # a single context with all 21 syntaxes per class (up to 126 classes)"
    text = " ".join(_text().split())
    for claim in ("19 contexts per class", "(up to 6 classes)", "up to 63 classes"):
        assert claim in text
    assert "up to 126 classes" in text and "all 21" in text
    storage = [f"1.2.3.{i}" for i in range(classes)]
    contexts = presets.retrieve_contexts("get", storage=storage)
    assert len(contexts) == 2 + per_class * classes <= negotiation.MAX_PRESENTATION_CONTEXTS
    if classes == 126:
        with pytest.raises(ValueError):
            presets.retrieve_contexts("get", storage=[*storage, "1.2.3.999"])


def test_stgcmtscu_proposes_what_its_table_says(
    proposals: list[AssociateRQ], tmp_path: Path
) -> None:
    (path,) = write_ct_files(tmp_path, 1, 1024)
    _run_app(["stgcmtscu", *PEER, "--called-aet", "QRSCP", str(path)])
    (rq,) = proposals
    assert contexts_of(rq) == doc_contexts(table("proposed stgcmtscu"))


def test_storescu_proposes_the_stated_layout(proposals: list[AssociateRQ], tmp_path: Path) -> None:
    rows = table("proposed storescu")
    assert len(rows) == 3
    fallback = uids_in(rows[1]["Transfer Syntaxes"])
    lossy = uids_in(rows[2]["Transfer Syntaxes"])
    files = [*write_ct_files(tmp_path, 2, 1024), sample("JPEG2000.dcm"), sample("MR_small.dcm")]
    _run_app(["storescu", *PEER, *map(str, files)])
    rq = proposals[0]
    got = contexts_of(rq)
    ct, mr, sc = uids.CT_IMAGE_STORAGE, uids.MR_IMAGE_STORAGE, uids.SECONDARY_CAPTURE_IMAGE_STORAGE
    pairs = {
        (ct, uids.EXPLICIT_VR_LITTLE_ENDIAN),
        (sc, uids.JPEG_2000),
        (mr, uids.EXPLICIT_VR_LITTLE_ENDIAN),
    }
    # one context per (SOP class, transfer syntax) pair, that syntax only, no role selection
    assert {(c[0], c[1][0]) for c in got[:3]} == pairs
    assert all(len(c[1]) == 1 and c[2] is None for c in got[:3])
    # then one fallback per SOP class with convertible files, in UID order (JPEG 2000 too:
    # the codecs are installed with the test extra)
    assert got[3:] == [(uid, fallback, None) for uid in sorted([ct, mr, sc])]
    # with --allow-lossy: one more per such SOP class, the lossy syntaxes (the codecs are
    # installed with the test extra, their encoders with them)
    _run_app(["storescu", *PEER, "--allow-lossy", *map(str, files)])
    with_lossy = contexts_of(proposals[-1])
    assert with_lossy[:6] == got
    assert with_lossy[6:] == [(uid, lossy, None) for uid in sorted([ct, mr, sc])]


@pytest.mark.parametrize(
    ("operation", "extra"),
    [
        ("echo", []),
        ("find", ["--model", "study"]),
        ("move", ["--model", "study", "--move-dest", "DEST"]),
        ("commit", []),
    ],
)
def test_bench_proposes_what_its_table_says(
    proposals: list[AssociateRQ], tmp_path: Path, operation: str, extra: list[str]
) -> None:
    (row,) = [r for r in table("proposed bench") if backticked(r["`--operation`"]) == operation]
    files = ["--files", str(write_ct_files(tmp_path, 1, 1024)[0])] if operation == "commit" else []
    _run_app(["bench", *PEER, "--called-aet", "X", "--operation", operation, *extra, *files])
    assert proposals, "bench built no A-ASSOCIATE-RQ"
    assert contexts_of(proposals[0]) == doc_contexts([row])


def test_commitment_report_association_proposes_what_its_table_says(
    proposals: list[AssociateRQ],
) -> None:
    # the association qrscp (CommitmentSCP) opens to a requestor that has left
    scp = CommitmentSCP(AE("QRSCP"), lambda refs: {}, peers={"SCU": ("127.0.0.1", 104)})
    origin = SimpleNamespace(peer_ae_title="SCU")

    async def report() -> None:
        await scp._report_on_new_association(origin, "1.2.3", 1, Dataset(), scp.log)  # type: ignore[arg-type]

    with pytest.raises(_Stop):
        anyio.run(report)
    (rq,) = proposals
    assert rq.called_ae_title == "SCU" and rq.calling_ae_title == "QRSCP"
    assert contexts_of(rq) == doc_contexts(table("proposed qrscp report"))


# --------------------------------------------------------------------------- AE titles, ports


def test_ae_titles_and_ports_are_the_apps_defaults() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rows = table("ae-titles")
    apps = [backticked(r["App"]) for r in rows]
    assert set(apps) == set(sub.choices) - {"users", "dicomdir"}  # no network
    for row in rows:
        app = backticked(row["App"])
        options = {a.dest: a for a in sub.choices[app]._actions}
        if app == "demo":
            text = Path(__file__).resolve().parents[1] / "asyncdicom" / "cli" / "demo.py"
            source = text.read_text(encoding="utf-8")
            for title in re.findall(r"`([^`]+)`", row["Local AE title (`--aet`)"]):
                assert f'"{title}"' in source
            continue
        assert options["aet"].default == backticked(row["Local AE title (`--aet`)"]), app
        called = row["Called AE title (`--called-aet`)"]
        if "called_aet" in options:
            action = options["called_aet"]
            if called == "required":
                assert action.required and action.default is None, app
            else:
                assert not action.required and action.default == backticked(called), app
        else:
            assert called == "—", app
        listen = row["Listening port"]
        if listen == "—":
            assert "port" not in options or options["port"].option_strings == [], app
            assert "listen_port" not in options, app
        else:
            flag = backticked(listen)
            action = options[flag.lstrip("-").replace("-", "_")]
            assert action.required == ("(required)" in listen), app
            assert action.default is None, app
        if row["Peer address"].startswith("`HOST PORT`"):
            assert options["host"].required and options["port"].option_strings == [], app
        elif "--move-destination" in row["Peer address"]:
            assert {"move_destination", "peer"} <= set(options), app


# --------------------------------------------------------------------------- limits


def test_stated_limits_are_the_code_limits() -> None:
    text = " ".join(_text().split())
    assert f"| Maximum PDU size received | {AEConfig().max_pdu_length} " in text
    assert (
        f"at most {dimse.DEFAULT_SEND_PDU_LIMIT} (1 MiB, also when the peer announces 0); "
        f"{negotiation.FALLBACK_MAX_PDU_LENGTH} when the peer sends no Maximum Length" in text
    )
    assert (
        f"| Maximum presentation contexts proposed | {negotiation.MAX_PRESENTATION_CONTEXTS} "
        in text
    )
    assert f"accepted | {AEConfig().max_associations} by default" in text
    assert f"| Implementation Class UID | {uids.IMPLEMENTATION_CLASS_UID} " in text
    assert f"| Implementation Version Name | {uids.IMPLEMENTATION_VERSION_NAME} |" in text


# --------------------------------------------------------------------------- matching


def _element(tag: int, value: Any) -> DataElement:
    return DataElement(tag, dictionary_VR(tag), value)


#: a tag of each VR of the matching-types table, and a value stored in it
EXAMPLES: dict[str, tuple[int, str]] = {
    "AE": (0x00400001, "CTSTATION"),
    "CS": (0x00080060, "CTXX"),
    "LO": (0x00100020, "ID12345"),
    "SH": (0x00080050, "ACC12345"),
    "PN": (0x00100010, "DOE^JOHN"),
    "LT": (0x00104000, "SOME COMMENT"),
    "ST": (0x00080081, "SOME ADDRESS"),
    "UT": (0x0008030E, "SOME TEXT"),
    "UR": (0x0008010E, "http://example.org/x"),
    "UC": (0x00080119, "SOME CHARS"),
    "DA": (0x00080020, "20200615"),
    "TM": (0x00080030, "101500"),
    "DT": (0x0008002A, "20200615101500"),
    "UI": (0x0020000D, "1.2.840.99.1"),
    "IS": (0x00200011, "42"),
    "DS": (0x00180050, "2.5"),
}


#: a range around each date/time example value, and one that ends before it
RANGES = {
    "DA": ("20200101-20201231", "-20191231"),
    "TM": ("1000-1100", "-0900"),
    "DT": ("20200101-20201231", "-20191231"),
}


def _matches(tag: int, key: str, stored: str) -> bool | None:
    """Whether key matches stored; None when the key is refused as meaningless."""
    try:
        element = _element(tag, key)
    except ValueError:  # pydicom cannot even encode it (a "*" in an IS, say)
        return None
    try:
        return match_value(element, _element(tag, stored))
    except QueryError:
        return None


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's remarks on invalid keys
def test_matching_types_per_vr() -> None:
    for row in table("matching-types"):
        for vr in (v.strip() for v in row["VR"].split(",")):
            if vr == "SQ":
                continue
            tag, value = EXAMPLES[vr]
            assert dictionary_VR(tag) == vr
            assert _matches(tag, value, value) is True, vr
            assert _matches(tag, "", value) is True, vr  # universal
            yes = row["Wild card `*` `?`"].startswith("Yes")
            assert (_matches(tag, value[:2] + "*", value) is True) == yes, vr
            inside, before = RANGES.get(vr, ("A-Z", "-A"))
            if row["Range `A-B`"].startswith("Yes"):
                assert _matches(tag, inside, value) is True, vr
                assert _matches(tag, before, value) is False, vr
            else:
                assert _matches(tag, inside, value) is not True, vr
            listed = row["List (backslash)"].startswith("Yes")
            other = "1.2.840.99.2" if vr == "UI" else ("7" if vr in ("IS", "DS") else "OTHER")
            assert (_matches(tag, f"{other}\\{value}", value) is True) == listed, vr
    # sequence matching: one item of keys, any stored item matching all of them
    (sq,) = [r for r in table("matching-types") if r["VR"] == "SQ"]
    assert sq["Sequence"].startswith("Yes")
    key = Dataset()
    key.ScheduledStationAETitle = "CT*"
    stored = [Dataset(), Dataset()]
    stored[0].ScheduledStationAETitle = "MR1"
    stored[1].ScheduledStationAETitle = "CT1"
    tag = 0x00400100
    assert match_value(
        DataElement(tag, "SQ", Sequence([key])), DataElement(tag, "SQ", Sequence(stored))
    )


def test_qr_key_table_levels_vrs_and_index() -> None:
    rows = table("qr-keys")
    indexed: set[int] = set()
    for row in rows:
        tag = int(row["Tag"].strip("()").replace(",", ""), 16)
        assert dictionary_VR(tag) == row["VR"], row["Attribute"]
        assert name_key(row["Attribute"]) == name_key(DataElement(tag, row["VR"], None).name), row[
            "Attribute"
        ]
        if "computed" not in row["In the index"]:
            assert level_of(tag) == row["Level"], row["Attribute"]
        if "index" in row["In the index"]:
            indexed.add(tag)
    assert indexed == set(INDEX_COLUMNS)


def test_worklist_keys_match_as_stated() -> None:
    rows = table("worklist-keys")
    item = Dataset()
    step = Dataset()
    for row in rows:
        tag = int(row["Tag"].strip("()").replace(",", ""), 16)
        assert dictionary_VR(tag) == row["VR"], row["Attribute"]
        vr = row["VR"]
        value = {"DA": "20200615", "TM": "101500", "UI": "1.2.840.99.7", "PN": "DOE^JANE"}.get(
            vr, "VAL"
        )
        (step if row["In the Scheduled Procedure Step Sequence"] == "yes" else item).add(
            DataElement(tag, vr, value)
        )
    item.ScheduledProcedureStepSequence = [step]
    for row in rows:
        tag = int(row["Tag"].strip("()").replace(",", ""), 16)
        in_step = row["In the Scheduled Procedure Step Sequence"] == "yes"
        source = step if in_step else item
        for value, expected in ((source[tag].value, True), ("NOPE", False)):
            if row["VR"] in ("DA", "TM") and value == "NOPE":
                value = "19990101" if row["VR"] == "DA" else "000000"
            if row["VR"] == "UI" and value == "NOPE":
                value = "1.2.840.99.8"
            query = Dataset()
            target = Dataset() if in_step else query
            target.add(DataElement(tag, row["VR"], value))
            if in_step:
                query.ScheduledProcedureStepSequence = [target]
            parsed = parse_worklist_query(query)
            assert parsed.matches(item) is expected, (row["Attribute"], value)


def test_character_sets_and_person_names_as_stated() -> None:
    text = " ".join(_text().split())
    section = text[text.index("## 6. Support of character sets") : text.index("## 7. Security")]
    terms = re.findall(r"ISO_IR \d+|GB18030|GBK", section)
    assert len(terms) >= 15
    for term in terms:
        assert term in python_encoding, term
    for ir in re.search(r"ISO 2022 IR ([\d, ]+) and", section).group(1).split(","):  # type: ignore[union-attr]
        assert f"ISO 2022 IR {ir.strip()}" in python_encoding

    def record(charset: str, name: str) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.PatientID = "1"
        return ds

    def query(name: str, charset: str | None = None) -> Any:
        q = Dataset()
        q.QueryRetrieveLevel = "PATIENT"
        if charset is not None:
            q.SpecificCharacterSet = charset
        q.PatientName = name
        return parse_query(q, "patient")

    # a UTF-8 key matches a Latin-1 value with the same characters
    latin1 = record("ISO_IR 100", "MÜLLER^HANS")
    assert query("MÜLLER^HANS", "ISO_IR 192").matches(latin1)
    # the examples of section 6, literally
    assert "`DOE^JOHN` matches neither `Doe^John` nor `DOE^JOHN^^^`" in section
    assert not query("DOE^JOHN").matches(record("ISO_IR 100", "Doe^John"))
    assert not query("DOE^JOHN").matches(record("ISO_IR 100", "DOE^JOHN^^^"))
    assert "a family name alone matches only with a wild card (`DOE*`)" in section
    assert not query("DOE").matches(record("ISO_IR 100", "DOE^JOHN"))
    assert query("DOE*").matches(record("ISO_IR 100", "DOE^JOHN"))


# --------------------------------------------------------------------------- statuses

#: the first word of a Meaning cell, and the class of status codes it names (PS3.7 Annex C)
_MEANING_WORDS = {
    "success": StatusCategory.SUCCESS,
    "pending": StatusCategory.PENDING,
    "cancel": StatusCategory.CANCEL,
    "warning": StatusCategory.WARNING,
    "refused": StatusCategory.FAILURE,
    "error": StatusCategory.FAILURE,
    "failed": StatusCategory.FAILURE,
    "failure": StatusCategory.FAILURE,
}


def _status_rows() -> Iterator[tuple[int, str]]:
    """(code, meaning) of every row of every status table of the statement."""
    header: list[str] | None = None
    for line in _text().splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in stripped.strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(cells[0]) <= set("-:") or "Meaning" not in header:
            continue
        if not re.search(r"status", header[0], re.IGNORECASE):
            continue
        meaning = cells[header.index("Meaning")]
        for code in re.findall(r"0x[0-9A-F]{4}\b", cells[0]):
            yield int(code, 16), meaning


def test_status_tables_name_the_class_of_each_code() -> None:
    seen = 0
    for code, meaning in _status_rows():
        word = re.split(r"[\s:,]", meaning.strip().lower(), maxsplit=1)[0]
        if word in _MEANING_WORDS:
            assert category(code) is _MEANING_WORDS[word], f"0x{code:04X} {meaning}"
            seen += 1
    assert seen >= 40  # every status table of the statement is read
