"""What a party signs names the registry it is for.

Every recorded instruction is public (GET /v1/entries). A company can hold accounts in two
registries built on this software, say Cambodia's and another country's, under the same party
id and the same key. An instruction it signed for one must do nothing at the other; nor may a
signed read of one be replayed at the other.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.client import read_auth_headers
from registry.config import Settings
from registry.ledger.canonical import canonical_bytes
from registry.ledger.keys import SigningKey, b64encode
from registry.service.setup import FirstAdministrator, initialise
from tests.audit.bundles import entry_of
from tests.conftest import ADMIN
from tests.helpers import StepClock, start_server
from tests.world import World, build_world, expect_error, issue_jcm

OTHER_ORIGIN = "jp.carbon-registry.example/ledger"
HOLDINGS = "/v1/accounts/KH-WATER-1/holdings"


def transfer(quantity: int) -> dict[str, object]:
    return {"account": "KH-WATER-1", "batch": "KH-JCM-KH004-2024-00001", "quantity": quantity,
            "to_account": "JP-BUYER-1"}


@pytest.fixture
def other(tmp_path: Path, admin_key: SigningKey) -> Iterator[World]:
    """A second registry, of another origin, with the same parties, keys and accounts, and
    the same batch issued."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'other.db'}", origin=OTHER_ORIGIN,
                        key_file=tmp_path / "other-keys" / "registry-key.pem")
    registry = initialise(
        settings, admin=FirstAdministrator(party_id=ADMIN, public_key=admin_key.public_key),
        insecure_dev_key=True, clock=StepClock(),
    )
    try:
        with start_server(registry) as live:
            world = build_world(live.url, admin_key)
            issue_jcm(world)
            yield world
            world.http.http.close()
    finally:
        registry.engine.dispose()


def test_an_instruction_recorded_by_one_registry_does_nothing_at_another(
    world: World, other: World
) -> None:
    issue_jcm(world)
    seq = world.submit("kh-water", "credits.transfer", transfer(100))["seq"]
    # Anyone reads the signed instruction off the first registry's public ledger ...
    page = world.http.get("/v1/entries", params={"start": seq, "limit": 1})
    payload = entry_of(base64.b64decode(page["data"][0]["envelope"])).payload
    recorded = {"instruction": payload["instruction"], "signature": payload["signature"]}
    assert recorded["instruction"]["registry"] == world.origin
    # ... and sends it to the other, where kh-water has the same key and 800 credits.
    with other.unchanged():
        error = expect_error(other.post_raw("/v1/transfers", recorded), 422, "wrong_registry")
    assert error["message"] == (
        f"the instruction is for registry {world.origin!r}; this is registry {OTHER_ORIGIN!r}"
    )
    assert error["details"] == {"registry": world.origin, "this_registry": OTHER_ORIGIN}
    assert other.active("KH-WATER-1") == 800
    # What kh-water signs for the other registry is carried out there, and only there.
    other.submit("kh-water", "credits.transfer", transfer(100))
    assert other.active("KH-WATER-1") == 700 and world.active("KH-WATER-1") == 700


def test_an_instruction_naming_no_registry_is_refused(world: World) -> None:
    issue_jcm(world)
    water = world.as_("kh-water")
    instruction = water.sign("credits.transfer", transfer(10))["instruction"]
    del instruction["registry"]
    unbound = {"instruction": instruction,
               "signature": b64encode(world.keys["kh-water"].sign(canonical_bytes(instruction)))}
    with world.unchanged():
        error = expect_error(world.post_raw("/v1/transfers", unbound), 422, "invalid_request")
    assert error["message"] == "body.instruction.registry: Field required"


def test_a_signed_read_is_good_at_its_own_registry_only(world: World, other: World) -> None:
    headers = read_auth_headers(world.keys["kh-water"], registry=OTHER_ORIGIN, actor="kh-water",
                                method="GET", path=HOLDINGS)
    assert other.http.http.get(HOLDINGS, headers=headers).status_code == 200
    error = expect_error(world.http.http.get(HOLDINGS, headers=headers), 401, "bad_signature")
    assert "registry" in error["message"]


def test_the_registry_says_its_origin(world: World, other: World) -> None:
    """A client learns what to sign for from GET /v1/keys, as `registry sign --registry` is
    told it (the first line of the registry's checkpoints)."""
    for registry in (world, other):
        keys = registry.http.get("/v1/keys")
        assert keys["origin"] == registry.checkpoint().splitlines()[0]
    assert world.http.get("/v1/keys")["origin"] != other.http.get("/v1/keys")["origin"]
