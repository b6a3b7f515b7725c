"""Fixtures shared by the suite: a database per test on SQLite and PostgreSQL, a registry, a server.

Every test that takes ``db_url`` runs twice: on a fresh SQLite file and, when
``REGISTRY_TEST_POSTGRES_URL`` is set, in a fresh PostgreSQL schema of its own (dropped after).
Without the variable the PostgreSQL half is skipped, and says why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.config import Settings
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from registry.service.setup import FirstAdministrator, initialise
from registry.store.db import scratch_schema
from tests.helpers import LiveServer, StepClock, start_server
from tests.world import World, build_world

POSTGRES_URL = os.environ.get("REGISTRY_TEST_POSTGRES_URL")
ORIGIN = "test.carbon-registry.example/ledger"
ADMIN = "kh-registry-admin"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL half skipped: set REGISTRY_TEST_POSTGRES_URL to run it")
    with scratch_schema(POSTGRES_URL, prefix="t") as url:
        yield url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_url, origin=ORIGIN, key_file=tmp_path / "keys" / "registry-key.pem"
    )


@pytest.fixture
def admin_key() -> SigningKey:
    return SigningKey.from_seed(b"A" * 32)


@pytest.fixture
def registry(settings: Settings, admin_key: SigningKey) -> Iterator[Registry]:
    reg = initialise(
        settings,
        admin=FirstAdministrator(party_id=ADMIN, public_key=admin_key.public_key),
        insecure_dev_key=True,
        clock=StepClock(),
    )
    yield reg
    reg.engine.dispose()


@pytest.fixture
def server(registry: Registry) -> Iterator[LiveServer]:
    with start_server(registry) as live:
        yield live


@pytest.fixture
def world(server: LiveServer, admin_key: SigningKey) -> Iterator[World]:
    """A small Cambodia–Japan registry built over HTTP (see tests/world.py)."""
    built = build_world(server.url, admin_key)
    yield built
    built.http.http.close()
