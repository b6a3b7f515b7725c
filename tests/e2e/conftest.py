from __future__ import annotations

import pytest

from registry.ledger.keys import SigningKey
from tests.helpers import LiveServer
from tests.world import World, build_world


@pytest.fixture
def world(server: LiveServer, admin_key: SigningKey) -> World:
    return build_world(server.url, admin_key)
