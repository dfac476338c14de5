from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from loadtest import pgcluster
from relay.control.app import ControlPlane
from tests.control.helpers import make_config, threaded_control_plane


@pytest.fixture
def threaded_cp(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane on a background thread (records only), for the synchronous gs2 SDK."""
    with threaded_control_plane(make_config(tmp_path, provisioner="none")) as cp:
        yield cp


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """An in-process control plane whose local provisioner starts stand-in relays."""
    plane = ControlPlane(make_config(tmp_path))
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pgcluster.PostgresServer]:
    """One PostgreSQL server for the session (RELAY_TEST_POSTGRES_DSN's, or a throw-away one,
    removed at the end). Without one the tests that need it skip, saying why; where
    RELAY_REQUIRE_POSTGRES is set (CI) they fail instead."""
    reason = pgcluster.unavailable()
    if reason is not None:
        if os.environ.get(pgcluster.REQUIRE_ENV):
            pytest.fail(f"PostgreSQL is required here ({pgcluster.REQUIRE_ENV}) but: {reason}")
        print(f"PostgreSQL tests skipped: {reason}")
        pytest.skip(f"no PostgreSQL: {reason}")
    with pgcluster.server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: pgcluster.PostgresServer) -> str:
    """A fresh database of its own for each test."""
    return postgres_server.create_database()
