"""The storage index of the qrscp: stored instances indexed in SQLite for C-FIND, C-GET, C-MOVE.

:class:`SQLiteIndex` keeps four tables, one per Query/Retrieve level (``patient``, ``study``,
``series``, ``instance``), each with the key columns of :data:`~asyncdicom.qr.INDEX_COLUMNS`
that belong to its level (values from :func:`~asyncdicom.qr.index_value`, so that the WHERE
fragments of :func:`~asyncdicom.qr.sql_filter` apply unchanged) and a ``record`` column: the
attributes of that level as an Explicit VR Little Endian data set, used for the keys the SQL
cannot express and for the response identifiers.  The SQL is portable apart from the pragmas
run when a connection opens.

The optional return keys counting the entities under an entity (Number of Patient Related
Studies and the like, PS3.4 C.3.4) and SOP Classes in Study are computed when a query asks for
them, by subqueries on the parent-key indexes, never stored: adding an instance costs nothing
more, and the values cannot drift from the rows.  A value given for one of them is matched
exactly (in Python, as every key without a column); values of these attributes in a stored
header are ignored.

The schema carries a version (``PRAGMA user_version``); a file written by a newer or unknown
schema raises :class:`SchemaVersionError` instead of being changed.

Thread safety: one connection is opened with ``check_same_thread=False`` and every operation
holds an internal lock, so the index may be called from any thread, for example through
``anyio.to_thread.run_sync`` from the event loop.  :meth:`SQLiteIndex.find` runs its SQL under
the lock when first advanced, then matches and yields without holding it.
"""

from __future__ import annotations

import functools
import io
import sqlite3
import threading
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol, TypeVar, cast

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from ..errors import IndexDatabaseError, SchemaVersionError
from .matching import INDEX_COLUMNS, LEVELS, Query, SqlColumn, index_value, sql_filter
from .records import encode_explicit_le
from .wire import Element, ResponseEncoder, SlowPath, parse_explicit_le

__all__ = [
    "SCHEMA_VERSION",
    "Added",
    "IndexDatabaseError",
    "SQLiteIndex",
    "SchemaVersionError",
]

#: the version of the schema this module writes and reads
SCHEMA_VERSION = 1

_LEVEL_ORDER = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_TABLES = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
_PARENT_FK = {"STUDY": "patient_pk", "SERIES": "study_pk", "IMAGE": "series_pk"}

SPECIFIC_CHARACTER_SET = 0x00080005
MODALITY = 0x00080060
MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062

#: the optional return keys counted at query time (PS3.4 C.3.4, C.6.1.1, C.6.2.1): tag ->
#: (the table whose row is counted for, a portable scalar subquery counting for that row)
_COUNTS: dict[int, tuple[str, str]] = {
    0x00201200: (  # Number of Patient Related Studies
        "patient",
        "SELECT count(*) FROM study AS c_study WHERE c_study.patient_pk = patient.pk",
    ),
    0x00201202: (  # Number of Patient Related Series
        "patient",
        "SELECT count(*) FROM series AS c_series JOIN study AS c_study "
        "ON c_study.pk = c_series.study_pk WHERE c_study.patient_pk = patient.pk",
    ),
    0x00201204: (  # Number of Patient Related Instances
        "patient",
        "SELECT count(*) FROM instance AS c_instance JOIN series AS c_series "
        "ON c_series.pk = c_instance.series_pk JOIN study AS c_study "
        "ON c_study.pk = c_series.study_pk WHERE c_study.patient_pk = patient.pk",
    ),
    0x00201206: (  # Number of Study Related Series
        "study",
        "SELECT count(*) FROM series AS c_series WHERE c_series.study_pk = study.pk",
    ),
    0x00201208: (  # Number of Study Related Instances
        "study",
        "SELECT count(*) FROM instance AS c_instance JOIN series AS c_series "
        "ON c_series.pk = c_instance.series_pk WHERE c_series.study_pk = study.pk",
    ),
    0x00201209: (  # Number of Series Related Instances
        "series",
        "SELECT count(*) FROM instance AS c_instance WHERE c_instance.series_pk = series.pk",
    ),
}

#: the attributes the index computes: never taken from a stored header
_COMPUTED = frozenset({MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY, *_COUNTS})

# Patient Study module attributes (group 0010 but study level)
_PATIENT_STUDY = frozenset({0x00101010, 0x00101020, 0x00101030, 0x001021B0})

_STUDY_TAGS = frozenset(
    {
        0x0020000D,  # Study Instance UID
        0x00080020,  # Study Date
        0x00080030,  # Study Time
        0x00080050,  # Accession Number
        0x00080051,  # Issuer of Accession Number Sequence
        0x00080061,  # Modalities in Study
        0x00080090,  # Referring Physician's Name
        0x00081030,  # Study Description
        0x00081032,  # Procedure Code Sequence
        0x00081048,  # Physician(s) of Record
        0x00081060,  # Name of Physician(s) Reading Study
        0x00081080,  # Admitting Diagnoses Description
        0x00081110,  # Referenced Study Sequence
        0x00200010,  # Study ID
        0x00201070,  # Other Study Numbers
    }
    | _PATIENT_STUDY
)

_SERIES_TAGS = frozenset(
    {
        0x0020000E,  # Series Instance UID
        0x00080060,  # Modality
        0x00080021,  # Series Date
        0x00080031,  # Series Time
        0x0008103E,  # Series Description
        0x00081050,  # Performing Physician's Name
        0x00081070,  # Operators' Name
        0x00180015,  # Body Part Examined
        0x00181030,  # Protocol Name
        0x00200011,  # Series Number
        0x00200060,  # Laterality
        0x00400244,  # Performed Procedure Step Start Date
        0x00400245,  # Performed Procedure Step Start Time
        0x00400275,  # Request Attributes Sequence
    }
)

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def level_of(tag: int) -> str:
    """The Query/Retrieve level an attribute belongs to in this index: Patient module
    attributes (group 0010 apart from the Patient Study module) at PATIENT, the usual study
    and series attributes at STUDY and SERIES, everything else at IMAGE."""
    if tag in _STUDY_TAGS:
        return "STUDY"
    if tag in _SERIES_TAGS:
        return "SERIES"
    if tag >> 16 == 0x0010:
        return "PATIENT"
    return "IMAGE"


@functools.cache
def _columns_of(level: str) -> dict[int, SqlColumn]:
    # (cached: computed for every level of every instance indexed; callers do not change it)
    return {tag: col for tag, col in INDEX_COLUMNS.items() if level_of(tag) == level}


class Added(NamedTuple):
    """What :meth:`SQLiteIndex.add_many` did with one instance."""

    #: True for an instance not indexed before
    new: bool
    #: the path the instance was indexed with before (None for a new instance)
    previous_path: str | None


class _Selection(NamedTuple):
    """The rows of a query's SQL: (level pk, Modalities in Study, study pk, the ``counts``,
    the records from the top level down); SOP Classes in Study by study pk when asked for;
    the tags the SQL left to Python."""

    rows: list[tuple[object, ...]]
    counts: tuple[int, ...]
    sop_classes: dict[int, list[str]] | None
    residual: tuple[int, ...]


def _decode(blob: bytes) -> Dataset:
    return read_dataset(io.BytesIO(blob), False, True)


_T = TypeVar("_T")
_I = TypeVar("_I", bound="Index")


def _lock_order(
    prepared: Sequence[tuple[Dataset, str, dict[str, Any], _Rows] | ValueError],
) -> list[int]:
    """The order in which to add a batch's instances when other writers add at the same time:
    by Patient ID, Study, Series and SOP Instance UID, so that every writer takes the row locks
    of a patient, study and series in one order (two batches taking them in opposite orders
    would deadlock).  Copies of one SOP Instance keep their order (the last one wins)."""
    keys: dict[object, tuple[str, ...]] = {}
    order: list[tuple[tuple[str, ...], int]] = []
    for n, item in enumerate(prepared):
        if isinstance(item, ValueError):
            continue
        header, _path, _parts, rows = item
        sop = rows["IMAGE"]["sop_instance_uid"]
        if sop not in keys:
            patient = header.get(LEVELS["PATIENT"])
            keys[sop] = (
                "" if patient is None else str(patient.value),
                str(rows["STUDY"]["study_instance_uid"]),
                str(rows["SERIES"]["series_instance_uid"]),
                str(sop),
            )
        order.append((keys[sop], n))
    order.sort()
    return [n for _key, n in order]


#: the elements of one level's record, in tag order (raw ones as read, when not decoded yet)
_Record = list[DataElement | RawDataElement]
#: (level, unique key) -> (pk, fingerprint of the row's attributes): the rows written already
_Known = dict[tuple[str, object], tuple[int, int]]
#: level -> the column values of that level's row, for the levels already computed
_Rows = dict[str, dict[str, str | int | None]]


#: Available Transfer Syntax UID (0008,3002)
AVAILABLE_TRANSFER_SYNTAX_UID = 0x00083002


def _split(header: Dataset) -> dict[str, _Record]:
    """The header's public, non-binary attributes, by level (Specific Character Set in every
    level so that each record decodes on its own).  Elements are taken as pydicom holds them:
    raw ones are not decoded (:func:`~asyncdicom.qr.records.encode_explicit_le` copies them)."""
    parts: dict[str, _Record] = {level: [] for level in _LEVEL_ORDER}
    charset = None
    for tag in header.keys():  # noqa: SIM118 (tags: iterating a Dataset decodes elements)
        group = tag >> 16
        if group in (0x0002, 0xFFFE) or group % 2 == 1 or tag & 0xFFFF == 0:
            continue  # meta, delimiters, private, group lengths
        elem = header.get_item(tag)
        vr = elem.VR
        if vr is None:  # raw, implicit VR: the VR comes from decoding
            elem = header[tag]
            vr = elem.VR
        if vr in _BINARY_VRS:
            continue
        if tag == SPECIFIC_CHARACTER_SET:
            charset = elem
            continue
        if tag in _COMPUTED:
            continue
        parts[level_of(int(tag))].append(elem)
    # Available Transfer Syntax UID (0008,3002), PS3.4 C.6.1.1.5: the syntax the instance is
    # stored in, which a retrieve can be proposed in (getscu --discover)
    meta = getattr(header, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if syntax and AVAILABLE_TRANSFER_SYNTAX_UID not in header:
        parts["IMAGE"].append(DataElement(AVAILABLE_TRANSFER_SYNTAX_UID, "UI", syntax))
        parts["IMAGE"].sort(key=lambda e: int(e.tag))
    if charset is not None:
        for elements in parts.values():
            elements.insert(0, charset)  # (0008,0005) precedes every level's attributes
    return parts


def _row_values(level: str, header: Dataset) -> dict[str, str | int | None]:
    values: dict[str, str | int | None] = {}
    for tag, col in _columns_of(level).items():
        if tag == MODALITIES_IN_STUDY:
            continue  # kept up to date from the series of the study
        elem = header.get(tag)
        value = elem.value if elem is not None else None
        values[col.name] = index_value(col.vr, value)
        if col.folded:
            values[col.folded] = index_value(col.vr, value, fold=True)
    return values


@dataclass(frozen=True)
class Dialect:
    """What the schema's DDL says differently in one SQL engine: the primary key column, the
    type of an integer column (IS values), of a text column, of the record column, and the
    unique constraint of a level's key.  Everything else (the tables, the indexes, the
    matching SQL of :func:`~asyncdicom.qr.sql_filter`) is the same text on every engine."""

    name: str
    primary_key: str
    integer: str
    blob: str
    #: the constraint on a level's unique key; on PostgreSQL, NULLS NOT DISTINCT: the patients
    #: without a Patient ID share one row, as SQLite's index finds them (``IS ?``) before
    #: inserting
    unique: str
    #: a text column: compared byte by byte, as SQLite's BINARY collation does (on
    #: PostgreSQL, COLLATE "C": whatever the database's locale, ``LIKE 'ab%'`` and the date
    #: ranges can then use the column's B-tree index, and order is the same as in SQLite)
    text: str = "TEXT"


SQLITE = Dialect("sqlite", "pk INTEGER PRIMARY KEY", "INTEGER", "BLOB", "UNIQUE")


def schema(dialect: Dialect = SQLITE) -> list[str]:
    """The statements creating the tables and indexes of schema :data:`SCHEMA_VERSION`."""
    statements: list[str] = []
    for level in _LEVEL_ORDER:
        table = _TABLES[level]
        defs = [dialect.primary_key]
        if level in _PARENT_FK:
            parent = _TABLES[_LEVEL_ORDER[_LEVEL_ORDER.index(level) - 1]]
            defs.append(f"{_PARENT_FK[level]} {dialect.integer} NOT NULL REFERENCES {parent} (pk)")
        unique = INDEX_COLUMNS[LEVELS[level]].name
        for col in _columns_of(level).values():
            kind = dialect.integer if col.vr == "IS" else dialect.text
            defs.append(f"{col.name} {kind}{' ' + dialect.unique if col.name == unique else ''}")
            if col.folded:
                defs.append(f"{col.folded} {dialect.text}")
        if level == "IMAGE":
            defs.append(f"path {dialect.text} NOT NULL")
        defs.append(f"record {dialect.blob} NOT NULL")
        statements.append(f"CREATE TABLE {table} ({', '.join(defs)})")
        if level in _PARENT_FK:
            fk = _PARENT_FK[level]
            statements.append(f"CREATE INDEX {table}_{fk} ON {table} ({fk})")
        for col in _columns_of(level).values():
            if col.name != unique:
                statements.append(f"CREATE INDEX {table}_{col.name} ON {table} ({col.name})")
            if col.folded:
                statements.append(f"CREATE INDEX {table}_{col.folded} ON {table} ({col.folded})")
    return statements


class Connection(Protocol):
    """What an index runs its SQL on: ``execute`` with ``?`` placeholders (sqlite3's
    paramstyle, that of :func:`~asyncdicom.qr.sql_filter`), giving a cursor with
    ``fetchone`` and ``fetchall``.  sqlite3's connection is one; the PostgreSQL index wraps
    psycopg's."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...


class Index:
    """The index of stored instances, on an SQL engine: what :class:`SQLiteIndex` and
    :class:`~asyncdicom.qr.postgres.PostgreSQLIndex` share (the schema's tables, adding,
    matching, retrieving).  A subclass says how to get a connection for reading and for one
    write transaction, and how to insert-or-update one row.

    Thread safety: every method may be called from any thread (the event loop calls them
    through ``anyio.to_thread.run_sync``).
    """

    #: the SQL dialect of the schema
    dialect: Dialect = SQLITE
    #: the exceptions of the database driver: a write that failed for such a reason is an
    #: out-of-resources condition, not bad data
    errors: tuple[type[Exception], ...] = ()
    #: whether this object is the only writer of its database, so that a patient, study or
    #: series row it wrote with the same attributes need not be written again in a later
    #: transaction (with other writers, only in the transaction that wrote it: the row stays
    #: locked until that one commits)
    _sole_writer = True
    #: whether the schema was created when this index was opened (a new, empty database)
    created = False

    def __init__(self) -> None:
        # (level, unique key) -> (pk, fingerprint of the row written): a patient, study or
        # series row whose attributes did not change is not rewritten (most instances of a
        # series share them; encoding the record is the bulk of the cost of adding).  Valid
        # while this connection is the only writer; cleared on rollback and deletions.
        self._known: _Known = {}

    # -- what a subclass provides ---------------------------------------------------------------

    def _reading(self) -> AbstractContextManager[Connection]:
        """A connection to read with, for the duration of the ``with`` block."""
        raise NotImplementedError

    def _transaction(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in one write transaction: committed when it returns, rolled back (and
        the exception raised) when it raises."""
        raise NotImplementedError

    def _upsert_row(
        self, con: Connection, table: str, unique: str, values: dict[str, object]
    ) -> int:
        """Insert the row of ``table`` whose ``unique`` column holds ``values[unique]``, or
        update the one there; its pk."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connections."""
        raise NotImplementedError

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self: _I) -> _I:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- adding ---------------------------------------------------------------------------------

    def add(self, header: Dataset, path: str) -> bool:
        """Index one stored instance from its header (Pixel Data not needed) and its file path.

        Creates or reuses the patient, study and series rows (their attributes are refreshed
        from this header) and keeps Modalities in Study up to date.  Returns True for a new
        instance, False when the SOP Instance UID was already indexed: its row is updated.

        Raises:
            ValueError: the header has no SOP, Series or Study Instance UID.
        """
        (result,) = self.add_many([(header, path)])
        if isinstance(result, Exception):
            raise result
        return result.new

    def add_many(self, items: Sequence[tuple[Dataset, str]]) -> list[Added | ValueError]:
        """Index several stored instances, as :meth:`add` does, in one transaction (one commit
        for the whole batch: much faster than one :meth:`add` each).

        Returns one result per item, in order: :class:`Added` (``new``, and the
        ``previous_path`` of a re-added instance), or the ValueError of a header without a
        SOP, Series or Study Instance UID (that item is skipped, the others are indexed).

        Raises:
            Exception: one of :attr:`errors`: the database refused the batch, which is rolled
                back as a whole.
        """
        prepared: list[tuple[Dataset, str, dict[str, _Record], _Rows] | ValueError] = []
        for header, path in items:
            try:
                prepared.append((header, path, *self._prepare(header)))
            except ValueError as exc:
                prepared.append(exc)
            except Exception as exc:  # pydicom decodes values lazily: garbage shows here
                prepared.append(ValueError(f"the header cannot be read: {exc}"))
        order = range(len(prepared)) if self._sole_writer else _lock_order(prepared)

        def work(con: Connection) -> list[Added | ValueError]:
            known: _Known = self._known if self._sole_writer else {}
            results: list[Added | ValueError | None] = [
                item if isinstance(item, ValueError) else None for item in prepared
            ]
            for n in order:
                item = prepared[n]
                if not isinstance(item, ValueError):
                    results[n] = self._add(con, known, *item)
            return cast("list[Added | ValueError]", results)

        try:
            return self._transaction(work)
        except BaseException:
            self._known.clear()
            raise

    @staticmethod
    def _prepare(header: Dataset) -> tuple[dict[str, _Record], _Rows]:
        """The header's records by level, and the column values of the study, series and
        instance rows (each computed once per instance: reading them decodes elements)."""
        parts = _split(header)
        rows: _Rows = {}
        for level in ("STUDY", "SERIES", "IMAGE"):
            column = INDEX_COLUMNS[LEVELS[level]].name
            rows[level] = values = _row_values(level, header)
            if values[column] is None:
                raise ValueError(f"the header has no {column.replace('_', ' ')}")
        return parts, rows

    def _upsert(
        self,
        con: Connection,
        level: str,
        header: Dataset,
        record: _Record,
        extra: dict[str, object],
        rows: _Rows,
    ) -> int:
        row_values = rows.get(level)
        if row_values is None:
            row_values = _row_values(level, header)
        values: dict[str, object] = {**row_values, **extra}
        values["record"] = encode_explicit_le(record, header)
        return self._upsert_row(con, _TABLES[level], INDEX_COLUMNS[LEVELS[level]].name, values)

    def _add(
        self,
        con: Connection,
        known: _Known,
        header: Dataset,
        path: str,
        parts: dict[str, _Record],
        rows: _Rows,
    ) -> Added:
        sop = rows["IMAGE"]["sop_instance_uid"]
        old = con.execute(
            "SELECT series.pk, series.study_pk, instance.path FROM instance JOIN series "
            "ON series.pk = instance.series_pk WHERE sop_instance_uid = ?",
            (sop,),
        ).fetchone()
        patient_pk, _ = self._upsert_parent(
            con, known, "PATIENT", header, parts["PATIENT"], {}, rows
        )
        study_pk, _ = self._upsert_parent(
            con, known, "STUDY", header, parts["STUDY"], {"patient_pk": patient_pk}, rows
        )
        series_pk, series_written = self._upsert_parent(
            con, known, "SERIES", header, parts["SERIES"], {"study_pk": study_pk}, rows
        )
        self._upsert(
            con, "IMAGE", header, parts["IMAGE"], {"series_pk": series_pk, "path": path}, rows
        )
        if series_written:
            self._refresh_modalities(con, study_pk)
        if old is not None and int(old[0]) != series_pk:
            self._prune(con, known, int(old[0]), int(old[1]))
        return Added(new=old is None, previous_path=None if old is None else str(old[2]))

    def _upsert_parent(
        self,
        con: Connection,
        known_rows: _Known,
        level: str,
        header: Dataset,
        record: _Record,
        extra: dict[str, object],
        rows: _Rows,
    ) -> tuple[int, bool]:
        """:meth:`_upsert` for a patient, study or series row, skipped when ``known_rows``
        says it was written with the same attributes: (pk, whether it was written)."""
        elem = header.get(LEVELS[level])
        key = (level, None if elem is None else str(elem.value))
        fingerprint = hash(
            (tuple((e.tag, e.VR, repr(e.value)) for e in record), tuple(extra.items()))
        )
        known = known_rows.get(key)
        if known is not None and known[1] == fingerprint and key[1] is not None:
            return known[0], False
        pk = self._upsert(con, level, header, record, extra, rows)
        if len(known_rows) >= 16384:
            known_rows.clear()
        known_rows[key] = (pk, fingerprint)
        return pk, True

    @staticmethod
    def _refresh_modalities(con: Connection, study_pk: int) -> None:
        rows = con.execute(
            "SELECT DISTINCT modality FROM series WHERE study_pk = ? AND modality IS NOT NULL",
            (study_pk,),
        ).fetchall()
        joined = "\\".join(sorted(str(m) for (m,) in rows)) or None
        con.execute("UPDATE study SET modalities_in_study = ? WHERE pk = ?", (joined, study_pk))

    @classmethod
    def _prune(cls, con: Connection, known: _Known, series_pk: int, study_pk: int) -> None:
        """Remove the rows an updated instance left empty."""
        known.clear()
        con.execute(
            "DELETE FROM series WHERE pk = ? AND NOT EXISTS "
            "(SELECT 1 FROM instance WHERE series_pk = ?)",
            (series_pk, series_pk),
        )
        row = con.execute("SELECT patient_pk FROM study WHERE pk = ?", (study_pk,)).fetchone()
        if row is None:  # gone already (another writer pruned it)
            return
        (patient_pk,) = row
        con.execute(
            "DELETE FROM study WHERE pk = ? AND NOT EXISTS "
            "(SELECT 1 FROM series WHERE study_pk = ?)",
            (study_pk, study_pk),
        )
        cls._refresh_modalities(con, study_pk)
        con.execute(
            "DELETE FROM patient WHERE pk = ? AND NOT EXISTS "
            "(SELECT 1 FROM study WHERE patient_pk = ?)",
            (patient_pk, patient_pk),
        )

    # -- querying -------------------------------------------------------------------------------

    def _select(self, query: Query) -> _Selection:
        """The rows passing the SQL part of ``query``, with what is needed to build their
        records."""
        levels = _LEVEL_ORDER[: _LEVEL_ORDER.index(query.level) + 1]
        # only the columns of the joined tables: a key of a lower level is left to Python
        # (and matches only universally, the record lacking it)
        columns = {tag: col for tag, col in INDEX_COLUMNS.items() if level_of(tag) in levels}
        filt = sql_filter(query, columns)
        tables = [_TABLES[level] for level in levels]
        joins = tables[0]
        for level in levels[1:]:
            parent = _TABLES[_LEVEL_ORDER[_LEVEL_ORDER.index(level) - 1]]
            table = _TABLES[level]
            joins += f" JOIN {table} ON {table}.{_PARENT_FK[level]} = {parent}.pk"
        asked = set(query.keys)
        # the counts the query asks for, of its entity or of one above; a count of a lower
        # level is left out (returned empty and matching only universally, as any key below)
        counts = tuple(
            tag for tag, (table, _) in _COUNTS.items() if tag in asked and table in tables
        )
        sop_classes = SOP_CLASSES_IN_STUDY in asked and "study" in tables
        selected = [
            f"{tables[-1]}.pk",
            "study.modalities_in_study" if "study" in tables else "NULL",
            "study.pk" if "study" in tables else "NULL",
            *(f"({_COUNTS[tag][1]})" for tag in counts),
            *(f"{t}.record" for t in tables),
        ]
        sql = (
            f"SELECT {', '.join(selected)} FROM {joins} WHERE {filt.where} ORDER BY {tables[-1]}.pk"
        )
        with self._reading() as con:
            rows = con.execute(sql, filt.params).fetchall()
            classes = self._sop_classes(con, {int(r[2]) for r in rows}) if sop_classes else None
        return _Selection(rows, counts, classes, filt.residual)

    @staticmethod
    def _sop_classes(con: Connection, study_pks: set[int]) -> dict[int, list[str]]:
        """SOP Classes in Study of each study (sorted UIDs)."""
        classes: dict[int, list[str]] = {}
        pks = sorted(study_pks)
        chunk = 500
        for start in range(0, len(pks), chunk):
            part = pks[start : start + chunk]
            rows = con.execute(
                "SELECT DISTINCT series.study_pk, instance.sop_class_uid FROM instance "
                "JOIN series ON series.pk = instance.series_pk WHERE series.study_pk IN "
                f"({', '.join('?' * len(part))}) AND instance.sop_class_uid IS NOT NULL",
                part,
            ).fetchall()
            for study_pk, uid in rows:
                classes.setdefault(int(study_pk), []).append(str(uid))
        for uids in classes.values():
            uids.sort()
        return classes

    @staticmethod
    def _record(row: tuple[object, ...], selection: _Selection) -> Dataset:
        counts = selection.counts
        record = Dataset()
        for blob in row[3 + len(counts) :]:
            assert isinstance(blob, bytes)
            record.update(_decode(blob))
        modalities = row[1]
        if isinstance(modalities, str):
            record.add(DataElement(MODALITIES_IN_STUDY, "CS", modalities.split("\\")))
        for tag, value in zip(counts, row[3 : 3 + len(counts)], strict=True):
            record.add(DataElement(tag, "IS", cast(int, value)))
        if selection.sop_classes is not None:
            uids = selection.sop_classes.get(cast(int, row[2]))
            if uids:
                record.add(DataElement(SOP_CLASSES_IN_STUDY, "UI", uids))
        return record

    def _matching(self, query: Query) -> Iterator[tuple[int, Dataset]]:
        selection = self._select(query)
        for row in selection.rows:
            record = self._record(row, selection)
            if query.matches(record, only=selection.residual):
                yield cast(int, row[0]), record

    def records(self, query: Query) -> Iterator[Dataset]:
        """The records matching ``query`` at its level: the attributes of the level and of the
        levels above (a STUDY record carries the patient's attributes and Modalities in
        Study), and those of the computed return keys the query asks for, of its level or one
        above: Number of Patient Related Studies, Series, Instances (0020,1200/1202/1204),
        Number of Study Related Series, Instances (0020,1206/1208), Number of Series Related
        Instances (0020,1209) and SOP Classes in Study (0008,0062)."""
        for _pk, record in self._matching(query):
            yield record

    def find(self, query: Query) -> Iterator[Dataset]:
        """The C-FIND response identifiers for ``query``, one per matching entity, in the order
        the entities were indexed."""
        for record in self.records(query):
            yield query.response(record)

    def find_encoded(self, query: Query, transfer_syntax: str) -> Iterator[bytes]:
        """The C-FIND response identifiers for ``query``, as :meth:`find` gives them, already
        encoded in ``transfer_syntax``: Implicit or Explicit VR Little Endian (see
        :data:`~asyncdicom.qr.wire.WIRE_SYNTAXES`), copied from the stored records without
        a pydicom data set per match, the same bytes pydicom writes for :meth:`find`'s data
        sets (:mod:`asyncdicom.qr.wire`).  A record that cannot be copied byte for byte
        (padding pydicom would remove, characters outside ASCII, a sequence key with item
        keys) is answered the pydicom way.

        Raises:
            ValueError: ``transfer_syntax`` is not one of those two.
        """
        encoder = ResponseEncoder(query, transfer_syntax)
        selection = self._select(query)
        for row in selection.rows:
            record: Dataset | None = None
            if selection.residual:
                record = self._record(row, selection)
                if not query.matches(record, only=selection.residual):
                    continue
            try:
                yield encoder.encode(self._elements(row, selection, encoder.wanted))
            except SlowPath:
                if record is None:
                    record = self._record(row, selection)
                from ..storage.codec import encode_dataset

                yield encode_dataset(query.response(record), transfer_syntax)

    @staticmethod
    def _elements(
        row: tuple[object, ...], selection: _Selection, wanted: Container[int] | None = None
    ) -> dict[int, Element]:
        """The elements of a row's record, as :meth:`_record` decodes them, still encoded
        (with ``wanted``: only the elements whose tags it holds)."""
        counts = selection.counts
        elements: dict[int, Element] = {}
        for blob in row[3 + len(counts) :]:
            assert isinstance(blob, bytes)
            elements.update(parse_explicit_le(blob, wanted))
        modalities = row[1]
        if isinstance(modalities, str):
            elements[MODALITIES_IN_STUDY] = Element("CS", modalities.encode("utf-8"))
        for tag, value in zip(counts, row[3 : 3 + len(counts)], strict=True):
            elements[tag] = Element("IS", str(cast(int, value)).encode("ascii"))
        if selection.sop_classes is not None:
            uids = selection.sop_classes.get(cast(int, row[2]))
            if uids:
                elements[SOP_CLASSES_IN_STUDY] = Element("UI", "\\".join(uids).encode("utf-8"))
        return elements

    def instances(self, query: Query) -> list[str]:
        """The file paths of the instances under the entities matching ``query`` (what a
        C-GET or C-MOVE with this identifier sends), in the order they were indexed."""
        pks = [pk for pk, _record in self._matching(query)]
        if not pks:
            return []
        joins = "instance"
        child = "IMAGE"
        for upper in ("SERIES", "STUDY", "PATIENT")[: 3 - _LEVEL_ORDER.index(query.level)]:
            table = _TABLES[upper]
            joins += f" JOIN {table} ON {table}.pk = {_TABLES[child]}.{_PARENT_FK[child]}"
            child = upper
        key = f"{_TABLES[query.level]}.pk"
        paths: list[str] = []
        chunk = 500
        with self._reading() as con:
            for start in range(0, len(pks), chunk):
                part = pks[start : start + chunk]
                rows = con.execute(
                    f"SELECT instance.path FROM {joins} WHERE {key} IN "
                    f"({', '.join('?' * len(part))}) ORDER BY instance.pk",
                    part,
                ).fetchall()
                paths.extend(str(p) for (p,) in rows)
        return paths

    def lookup_instances(self, sop_instance_uids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """SOP Instance UID -> (SOP Class UID, file path) of those of ``sop_instance_uids``
        that are indexed (for storage commitment: is it here, and is it what the requestor
        thinks it is)."""
        found: dict[str, tuple[str, str]] = {}
        uids = list(sop_instance_uids)
        with self._reading() as con:
            for start in range(0, len(uids), 500):
                part = uids[start : start + 500]
                rows = con.execute(
                    "SELECT sop_instance_uid, sop_class_uid, path FROM instance "
                    f"WHERE sop_instance_uid IN ({', '.join('?' * len(part))})",
                    part,
                ).fetchall()
                for uid, sop_class, path in rows:
                    found[str(uid)] = (str(sop_class or ""), str(path))
        return found

    def paths(self) -> dict[str, str]:
        """File path -> SOP Instance UID of every indexed instance (to compare the index with
        the files of its folder)."""
        with self._reading() as con:
            rows = con.execute("SELECT path, sop_instance_uid FROM instance").fetchall()
        return {str(path): str(uid) for path, uid in rows}

    def count(self) -> int:
        """The number of indexed instances."""
        with self._reading() as con:
            (n,) = con.execute("SELECT count(*) FROM instance").fetchone()
        return int(n)


class SQLiteIndex(Index):
    """An index of stored instances in one SQLite database (``":memory:"`` for a transient one).

    Opening an existing file keeps its data; a new or empty file gets the current schema.  File
    databases use WAL journaling.  Safe to call from several threads (one connection, one lock:
    :meth:`find` runs its SQL under the lock when first advanced, then matches and yields
    without holding it).

    Raises:
        SchemaVersionError: the file holds an index of another schema version.
        IndexDatabaseError: the file is not an index, or cannot be opened.
    """

    errors = (sqlite3.Error,)

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._lock = threading.Lock()
        self._con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # PRAGMA data_version when _known was last valid: it changes when another connection
        # (another process serving the same archive) commits, which makes _known stale
        self._data_version = -1
        try:
            self._open()
        except sqlite3.OperationalError as exc:  # locked, read-only, out of disk, ...
            self._con.close()
            raise IndexDatabaseError(f"{path}: cannot open the index ({exc})") from None
        except sqlite3.DatabaseError as exc:
            self._con.close()
            raise IndexDatabaseError(f"{path}: not an index database ({exc})") from None
        except IndexDatabaseError:
            self._con.close()
            raise

    def _open(self) -> None:
        con = self._con
        con.execute("PRAGMA case_sensitive_like = ON")
        con.execute("PRAGMA foreign_keys = ON")
        # with WAL, NORMAL syncs at checkpoints, not at every commit: a commit survives the
        # process dying, a power loss may take the last ones back (as for the stored files,
        # which are not synced either); FULL costs an fsync per commit
        con.execute("PRAGMA synchronous = NORMAL")
        (version,) = con.execute("PRAGMA user_version").fetchone()
        if version == 0:
            # a new file: create the schema under the write lock, after looking again (another
            # process opening the same new file, a worker of the same server, may have done it)
            con.execute("BEGIN IMMEDIATE")
            try:
                (version,) = con.execute("PRAGMA user_version").fetchone()
                if version == 0:
                    (tables,) = con.execute(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                    ).fetchone()
                    if tables:
                        raise IndexDatabaseError(f"{self.path}: a database, but not an index")
                    for statement in schema():
                        con.execute(statement)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    version = SCHEMA_VERSION
                    self.created = True
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path}: index schema version {version}, this release reads "
                f"version {SCHEMA_VERSION}",
                found=version,
            )
        if self.path != ":memory:":
            _set_wal(con)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._con.close()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._lock:
            yield self._con

    def _transaction(self, work: Callable[[Connection], _T]) -> _T:
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                (version,) = con.execute("PRAGMA data_version").fetchone()
                if version != self._data_version:
                    self._known.clear()
                    self._data_version = version
                result = work(con)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        return result

    def _upsert_row(
        self, con: Connection, table: str, unique: str, values: dict[str, object]
    ) -> int:
        row = con.execute(
            f"SELECT pk FROM {table} WHERE {unique} IS ?", (values[unique],)
        ).fetchone()
        names = list(values)
        if row is None:
            cursor = con.execute(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                tuple(values.values()),
            )
            assert cursor.lastrowid is not None
            return int(cursor.lastrowid)
        pk = int(row[0])
        con.execute(
            f"UPDATE {table} SET {', '.join(f'{n} = ?' for n in names)} WHERE pk = ?",
            (*values.values(), pk),
        )
        return pk


#: how long opening an index waits for another connection to let it switch to WAL, seconds
_WAL_WAIT = 10.0


def _set_wal(con: sqlite3.Connection) -> None:
    """Put the database in WAL mode (kept in the file: a no-op once done).  Switching needs
    the database to itself for a moment, and SQLite does not wait for that (it answers
    "database is locked" at once, busy timeout or not) when another connection, such as a
    worker of the same server opening the same new index, reads it just then: try again for
    a while."""
    import time

    deadline = time.monotonic() + _WAL_WAIT
    delay = 0.001
    while True:
        try:
            con.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)  # a worker thread or a process opening its index: not an event loop
        delay = min(delay * 2, 0.05)
