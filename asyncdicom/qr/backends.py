"""Opening the index an ``--db`` value or a ``db=`` argument names: an SQLite file (the
embedded default) or a PostgreSQL database (a ``postgresql://`` URL)."""

from __future__ import annotations

import os

from .index import Index, SQLiteIndex
from .postgres import PostgreSQLIndex, is_postgresql_url

__all__ = ["open_index"]


def open_index(db: str | os.PathLike[str], *, pool_size: int = 4, timeout: float = 30.0) -> Index:
    """The index of ``db``: a :class:`~asyncdicom.qr.postgres.PostgreSQLIndex` for a
    ``postgresql://`` (or ``postgres://``) URL, with ``pool_size`` connections at most and
    ``timeout`` seconds to wait for one; else a :class:`~asyncdicom.qr.SQLiteIndex` on the file
    ``db`` (created if needed; the pool options do not apply).

    Raises:
        IndexDatabaseError: the database cannot be opened or is not an index (psycopg missing
            for a URL: the message says what to install).
        SchemaVersionError: it holds an index of another schema version.
    """
    if is_postgresql_url(db):
        return PostgreSQLIndex(str(db), pool_size=pool_size, timeout=timeout)
    return SQLiteIndex(os.fspath(db))
