"""Fixtures running the index tests on both back ends: SQLite (in memory or a file) and
PostgreSQL (one private cluster per test process, a new database per index).

``make_index()`` gives a new, empty index of the test's back end (``index_backend``:
"sqlite" or "postgresql"); ``postgres_cluster`` is the session's cluster, started on first use
(a test needing it without the ``index_backend`` parameter marks itself
``requires_peer("postgresql")``).  Imported by tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from asyncdicom.qr import Index, PostgreSQLIndex, SQLiteIndex

from .postgres import PostgresCluster, running_cluster
from .requirements import require

__all__ = ["archive_db", "index_backend", "make_index", "postgres_cluster", "postgres_url"]

BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.requires_peer("postgresql")),
]


@pytest.fixture(scope="session")
def postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the test process (started on first use)."""
    require("postgresql")
    with running_cluster(tmp_path_factory.mktemp("postgresql")) as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A new, empty database of the session's cluster (dropped after the test): its URL."""
    url = postgres_cluster.database()
    yield url
    postgres_cluster.drop(url)


@pytest.fixture(params=BACKENDS)
def index_backend(request: pytest.FixtureRequest) -> str:
    """The index back end of the test: "sqlite" or "postgresql"."""
    return str(request.param)


@pytest.fixture
def make_index(index_backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], Index]]:
    """A factory of new, empty indexes of the test's back end (SQLite in memory, or a new
    PostgreSQL database each), closed after the test."""
    opened: list[Index] = []
    urls: list[str] = []
    cluster: PostgresCluster | None = (
        request.getfixturevalue("postgres_cluster") if index_backend == "postgresql" else None
    )

    def new() -> Index:
        index: Index
        if cluster is None:
            index = SQLiteIndex(":memory:")
        else:
            urls.append(cluster.database())
            index = PostgreSQLIndex(urls[-1], pool_size=4)
        opened.append(index)
        return index

    yield new
    for index in opened:
        index.close()
    if cluster is not None:
        for url in urls:
            cluster.drop(url)


@pytest.fixture
def archive_db(index_backend: str, request: pytest.FixtureRequest) -> str | None:
    """The ``db=`` argument of an Archive on the test's back end: None (the default SQLite
    file in the storage folder) or the URL of a new PostgreSQL database."""
    if index_backend == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))
