"""The storage index on PostgreSQL: the schema, matching and retrieval of the SQLite index, for
archives whose nodes share one database.

:class:`PostgreSQLIndex` is an :class:`~asyncdicom.qr.index.Index`: the same four tables (the
column types are PostgreSQL's: ``BIGINT`` identities, ``BYTEA`` records), the same SQL for
C-FIND, C-GET and C-MOVE (:func:`~asyncdicom.qr.sql_filter`'s WHERE fragments run unchanged:
``LIKE`` is case-sensitive in PostgreSQL as it is made in SQLite), the same schema version
(kept in the table ``asyncdicom_schema``).

The driver is psycopg 3 with its connection pool, used synchronously: every index call runs
in a worker thread already (``anyio.to_thread.run_sync``, as for SQLite), which serves asyncio
and trio alike, whereas an asyncio driver (asyncpg, psycopg's async mode) would tie the
archive to asyncio.  A thread waiting for the database is what a query costs anyway; the pool
bounds the connections one process opens.

Several nodes writing at once: every patient, study and series row is written with ``INSERT
... ON CONFLICT (its unique key) DO UPDATE``, so two nodes adding one new study at once get
one row (the second waits for the first's row lock, then updates it); an instance stored twice
is one row.  A batch takes its row locks in one order (by Patient ID, Study, Series, SOP
Instance UID), and a transaction that nevertheless meets a deadlock, or a row another node
removed meanwhile, is run again (a bounded number of times).  Modalities in Study is computed
in the transaction that holds the study's row lock, so it includes every committed series.

Opening creates the schema in an empty database (under an advisory lock: nodes starting at
once create it once); a database holding an index of another schema version raises
:class:`~asyncdicom.qr.SchemaVersionError`, one holding other tables
:class:`~asyncdicom.qr.IndexDatabaseError` (give the index a database, or a schema with
``options=-csearch_path%3Dname`` in the URL, of its own).  PostgreSQL 15 or newer (``UNIQUE
NULLS NOT DISTINCT``: the patients without a Patient ID share one row, as in SQLite).

psycopg is imported when an index is opened: ``pip install 'asyncdicom[postgresql]'``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import IndexDatabaseError, SchemaVersionError
from .index import SCHEMA_VERSION, Connection, Dialect, Index, schema

__all__ = ["POSTGRESQL", "PostgreSQLIndex", "install_hint", "is_postgresql_url", "redacted"]

_T = TypeVar("_T")

#: the DDL of the schema on PostgreSQL
POSTGRESQL = Dialect(
    "postgresql",
    "pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    "BIGINT",
    "BYTEA",
    "UNIQUE NULLS NOT DISTINCT",
    'TEXT COLLATE "C"',
)

#: the key of the advisory lock held while the schema is created or checked
_SCHEMA_LOCK = 0x41444943  # "ADIC"
#: how many times a write transaction is run again after a deadlock or a concurrent removal
_RETRIES = 8

_URL_PREFIXES = ("postgresql://", "postgres://")


def is_postgresql_url(db: object) -> bool:
    """Whether ``db`` (an ``--db`` value, a ``db=`` argument) names a PostgreSQL database
    (``postgresql://...`` or ``postgres://...``) rather than an SQLite file."""
    return isinstance(db, str) and db.startswith(_URL_PREFIXES)


def install_hint() -> str | None:
    """None when psycopg and its pool can be imported, else what to install."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return (
            f"the PostgreSQL index needs psycopg 3 and psycopg_pool ({exc}): "
            "pip install 'asyncdicom[postgresql]'"
        )
    return None


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the index's SQL has no ``?`` or ``%`` of its
    own: values, patterns included, are parameters)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Con:
    """A psycopg connection with the index's placeholders (:class:`~.index.Connection`)."""

    __slots__ = ("_con",)

    def __init__(self, con: Any) -> None:
        self._con = con

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self._con.execute(_pg_sql(sql), parameters)


class PostgreSQLIndex(Index):
    """An index of stored instances in a PostgreSQL database, given by its URL
    (``postgresql://user:password@host:port/dbname``, libpq's parameters in the query string).

    ``pool_size`` connections at most are opened by this object (a C-FIND or an ingest batch
    holds one while its SQL runs); ``timeout`` is how long, in seconds, a call waits for a
    connection of the pool (and opening waits for the first one) before it fails.  Safe to
    call from several threads; several objects, in several processes or on several hosts,
    may use one database at once (see the module docstring).

    Raises:
        IndexDatabaseError: psycopg is not installed, the database cannot be reached, or it
            holds tables that are not an index.
        SchemaVersionError: the database holds an index of another schema version.
    """

    dialect = POSTGRESQL
    _sole_writer = False

    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 30.0) -> None:
        super().__init__()
        if hint := install_hint():
            raise IndexDatabaseError(hint)
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        self.url = url
        self.errors = (psycopg.Error, PoolTimeout)
        self._psycopg = psycopg
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=timeout,
            open=False,
            name="asyncdicom-index",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
            self._open()
        except (psycopg.Error, PoolTimeout) as exc:
            self._pool.close()
            raise IndexDatabaseError(f"{redacted(url)}: cannot open the index ({exc})") from None
        except BaseException:
            self._pool.close()
            raise

    def _open(self) -> None:
        with self._pool.connection() as raw, raw.transaction():
            con = _Con(raw)
            # one node at a time looks and creates: nodes starting at once create it once
            con.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            found = con.execute("SELECT to_regclass('asyncdicom_schema') IS NOT NULL").fetchone()
            if found[0]:
                row = con.execute("SELECT version FROM asyncdicom_schema").fetchone()
                version = int(row[0]) if row is not None else 0
            else:
                (tables,) = con.execute(
                    "SELECT count(*) FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                ).fetchone()
                if tables:
                    raise IndexDatabaseError(
                        f"{redacted(self.url)}: a database with other tables, not an index"
                    )
                con.execute("CREATE TABLE asyncdicom_schema (version INTEGER NOT NULL)")
                for statement in schema(self.dialect):
                    con.execute(statement)
                con.execute("INSERT INTO asyncdicom_schema (version) VALUES (?)", (SCHEMA_VERSION,))
                version = SCHEMA_VERSION
                self.created = True
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{redacted(self.url)}: index schema version {version}, this release reads "
                f"version {SCHEMA_VERSION}",
                found=version,
            )

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.close()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._pool.connection() as raw:
            yield _Con(raw)

    def _transaction(self, work: Callable[[Connection], _T]) -> _T:
        errors = self._psycopg.errors
        again = (errors.DeadlockDetected, errors.SerializationFailure, errors.ForeignKeyViolation)
        for attempt in range(_RETRIES + 1):
            try:
                with self._pool.connection() as raw, raw.transaction():
                    return work(_Con(raw))
            except again:
                # another writer held row locks in another order, or removed a row this
                # transaction referred to: all of it is rolled back, and done again
                if attempt == _RETRIES:
                    raise
        raise AssertionError("unreachable")

    def _upsert_row(
        self, con: Connection, table: str, unique: str, values: dict[str, object]
    ) -> int:
        names = list(values)
        updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n != unique)
        (pk,) = con.execute(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT ({unique}) DO UPDATE SET {updates} RETURNING pk",
            tuple(values.values()),
        ).fetchone()
        return int(pk)


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
