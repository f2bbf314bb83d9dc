"""Query/Retrieve without I/O: C-FIND identifier validation, PS3.4 C.2.2.2 attribute matching,
response identifiers, and the translation of a query into a portable SQL WHERE fragment.

Nothing in :mod:`.matching` reads a file, a socket or a clock; an SCP (in memory, or the qrscp
on its SQLite index) calls these functions with the identifier it received and the records it
holds.  :mod:`.index` is that index: :class:`SQLiteIndex` (synchronous, thread-safe), the
embedded default; :mod:`.postgres` the same on PostgreSQL (:class:`PostgreSQLIndex`), for nodes
sharing one database; :func:`open_index` opens the one a file name or URL names.
"""

from __future__ import annotations

from .backends import open_index
from .index import SCHEMA_VERSION, Index, IndexDatabaseError, SchemaVersionError, SQLiteIndex
from .matching import (
    INDEX_COLUMNS,
    LEVELS,
    MODELS,
    WORKLIST_MODEL,
    IdentifierMismatch,
    ModelNotSupported,
    Query,
    QueryError,
    SqlColumn,
    SqlFilter,
    UnableToProcess,
    index_value,
    match_value,
    parse_query,
    parse_worklist_query,
    sql_filter,
)
from .postgres import PostgreSQLIndex

__all__ = [
    "INDEX_COLUMNS",
    "LEVELS",
    "MODELS",
    "SCHEMA_VERSION",
    "WORKLIST_MODEL",
    "IdentifierMismatch",
    "Index",
    "IndexDatabaseError",
    "ModelNotSupported",
    "PostgreSQLIndex",
    "Query",
    "QueryError",
    "SQLiteIndex",
    "SchemaVersionError",
    "SqlColumn",
    "SqlFilter",
    "UnableToProcess",
    "index_value",
    "match_value",
    "open_index",
    "parse_query",
    "parse_worklist_query",
    "sql_filter",
]
