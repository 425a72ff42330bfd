"""Gateway store fixtures: every test runs on SQLite and on a real PostgreSQL, each with a fresh database.

PostgreSQL comes from `CCGATE_TEST_POSTGRES_URL` (what `.ci/run` exports), else a throwaway cluster started
here for the session. Without PostgreSQL the PostgreSQL cases skip -- except when `CI` is set: then they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_testing import StoreFactory
from postgres_cluster import URL_ENV, Cluster, start_cluster

from ccgate.storage.gateway import GatewayStore, KeyCipher, generate_secret_key

# read at import: the autouse `isolated_home` fixture clears CCGATE_* variables for each test
_GIVEN_URL = os.environ.get(URL_ENV)
_IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str | None]:
    """The maintenance URL of a PostgreSQL server, or None (skip) when there is none outside CI."""
    if _GIVEN_URL:
        yield _GIVEN_URL
        return
    try:
        cluster: Cluster | None = start_cluster()
    except RuntimeError as error:
        if _IN_CI:
            pytest.fail(f"PostgreSQL is required in CI: {error}")
        cluster = None
        reason = str(error)
    if cluster is None:
        yield None
        os.environ.setdefault("_CCGATE_PG_SKIP_REASON", reason)
        return
    try:
        yield cluster.url
    finally:
        cluster.stop()


async def _fresh_database(server: str) -> str:
    import asyncpg

    name = f"ccgate_test_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = server.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'gateway.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    if server is None:
        pytest.skip("PostgreSQL is not available (install the `postgresql` package or set CCGATE_TEST_POSTGRES_URL)")
    yield await _fresh_database(server)


@pytest.fixture
def cipher() -> KeyCipher:
    return KeyCipher(generate_secret_key())


@pytest.fixture
async def open_store(db_url: str, cipher: KeyCipher) -> AsyncIterator[StoreFactory]:
    """Opens stores on the test's database (each one is an "instance": its own pool or SQLite thread)."""
    opened: list[GatewayStore] = []

    async def factory(**kwargs: Any) -> GatewayStore:
        kwargs.setdefault("cipher", cipher)
        store = await GatewayStore.open(db_url, **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: StoreFactory) -> GatewayStore:
    return await open_store()
