"""Parties, their keys and accounts over HTTP: registration, key rotation, account opening."""

from __future__ import annotations

import hashlib

from registry.domain.instructions import MAX_ACTIVE_KEYS
from registry.ledger.keys import SigningKey
from tests.world import ADMIN, World, expect_error


def test_party_registration(world: World) -> None:
    key = SigningKey.from_seed(b"n" * 32)
    answer = world.submit(ADMIN, "party.register", {
        "party_id": "jp-trading-house", "name": "Japanese trading house (illustrative)",
        "role": "participant", "country": "JP", "public_keys": [key.public_key.to_b64()],
    })
    assert answer["kind"] == "party.register"
    assert answer["result"] == {"party_id": "jp-trading-house", "key_ids": [key.public_key.key_id]}
    assert answer["tree_size"] == answer["seq"] + 1 == world.tree_size()
    party = world.http.get("/v1/parties/jp-trading-house")
    assert (party["role"], party["country"], party["created_seq"]) == ("participant", "JP",
                                                                       answer["seq"])
    assert party["keys"] == [{"key_id": key.public_key.key_id,
                              "public_key": key.public_key.to_b64(),
                              "added_seq": answer["seq"], "revoked_seq": None}]
    # The new party can act at once with its own key.
    world.keys["jp-trading-house"] = key
    world.submit(ADMIN, "account.open", {"account_id": "JP-TH-1", "holder": "jp-trading-house",
                                         "name": "trading house holding"})
    assert world.holdings("JP-TH-1", reader="jp-trading-house")["total_active"] == 0
    # Refusals leave everything as it was.
    other = SigningKey.from_seed(b"p" * 32).public_key.to_b64()
    body = {"party_id": "kh-gov", "name": "Again", "role": "government", "country": "KH",
            "public_keys": [other]}
    with world.unchanged():
        world.refuse(ADMIN, "party.register", body, status=409, code="conflict")
        world.refuse("kh-gov", "party.register", {**body, "party_id": "kh-new"},
                     status=403, code="forbidden")
        world.refuse(ADMIN, "party.register", {**body, "party_id": "kh-new", "role": "king"},
                     status=422, code="invalid_request")
        world.refuse(ADMIN, "party.register",
                     {**body, "party_id": "kh-new", "public_keys": ["A" * 44]},
                     status=422, code="invalid_request")
        # A weak key (a point of small order: here all zero bytes), against which anyone can
        # make signatures that verify, is no key.
        world.refuse(ADMIN, "party.register",
                     {**body, "party_id": "kh-new", "public_keys": ["A" * 43 + "="]},
                     status=422, code="invalid_request")
        world.refuse("kh-water", "party.key_add",
                     {"party_id": "kh-water", "public_key": "A" * 43 + "="},
                     status=422, code="invalid_request")


def test_key_rotation(world: World) -> None:
    old, new = world.keys["kh-water"], SigningKey.from_seed(b"r" * 32)
    # The party adds a key itself, signing with its current key.
    world.submit("kh-water", "party.key_add",
                 {"party_id": "kh-water", "public_key": new.public_key.to_b64()})
    # Both keys work now; the new one signs an instruction and a private read.
    world.keys["kh-water"] = new
    world.submit("kh-water", "report.submit", {
        "report_id": "KH004-MR1", "project_id": "KH004", "period_start": "2024-01-01",
        "period_end": "2024-06-30", "reductions": 10, "document_sha256": "a" * 64})
    assert world.active("KH-WATER-1") == 0
    # Revoke the old key, signed with the new one.
    revoked = world.submit("kh-water", "party.key_revoke",
                           {"party_id": "kh-water", "key_id": old.public_key.key_id})
    keys = {k["key_id"]: k for k in world.http.get("/v1/parties/kh-water")["keys"]}
    assert keys[old.public_key.key_id]["revoked_seq"] == revoked["seq"]
    assert keys[new.public_key.key_id]["revoked_seq"] is None
    # The old key is refused for instructions and for reads.
    world.keys["kh-water"] = old
    error = world.refuse("kh-water", "report.submit", {
        "report_id": "KH004-MR2", "project_id": "KH004", "period_start": "2024-07-01",
        "period_end": "2024-12-31", "reductions": 10, "document_sha256": "b" * 64},
        status=401, code="key_revoked")
    assert old.public_key.key_id in error["message"]
    expect_error(world.read("/v1/accounts/KH-WATER-1/holdings", party="kh-water"),
                 401, "key_revoked")
    # The last active key cannot be revoked: the party would be locked out.
    world.keys["kh-water"] = new
    error = world.refuse("kh-water", "party.key_revoke",
                         {"party_id": "kh-water", "key_id": new.public_key.key_id},
                         status=409, code="invalid_state")
    assert "last active key" in error["message"]
    # Revoking the revoked key again is refused too.
    world.refuse("kh-water", "party.key_revoke",
                 {"party_id": "kh-water", "key_id": old.public_key.key_id},
                 status=409, code="invalid_state")
    # Only the party itself adds keys: not another party, and not an administrator either
    # (a key the registry could add would let it sign transfers in the holder's name).
    third = SigningKey.from_seed(b"t" * 32)
    for intruder in ("jp-buyer", ADMIN):
        world.refuse(intruder, "party.key_add",
                     {"party_id": "kh-water", "public_key": third.public_key.to_b64()},
                     status=403, code="forbidden")
    # And the published API says so: it promises an administrator nothing it then refuses.
    add_key = world.http.get("/openapi.json")["paths"]["/v1/party-keys"]["post"]
    assert "administrator" not in add_key["description"], add_key["description"]
    world.submit("kh-water", "party.key_add",
                 {"party_id": "kh-water", "public_key": third.public_key.to_b64()})
    world.keys["kh-water"] = third
    assert world.active("KH-WATER-1") == 0
    # A key already registered (here, to another party) cannot be added again.
    world.refuse("kh-water", "party.key_add",
                 {"party_id": "kh-water",
                  "public_key": world.keys["jp-buyer"].public_key.to_b64()},
                 status=409, code="conflict")


def test_account_opening(world: World) -> None:
    answer = world.submit(ADMIN, "account.open",
                          {"account_id": "JP-BUYER-2", "holder": "jp-buyer", "name": "second"})
    assert answer["result"] == {"account_id": "JP-BUYER-2"}
    accounts = {a["id"]: a for a in world.http.get("/v1/accounts")["data"]}
    assert accounts["JP-BUYER-2"] == {
        "id": "JP-BUYER-2", "holder": "jp-buyer", "kind": "holding", "name": "second",
        "unit_id": None, "created_seq": answer["seq"]}
    assert {a: accounts[a]["kind"] for a in ("RETIREMENT", "CANCELLATION", "BUF-KH005-FU1")} == {
        "RETIREMENT": "retirement", "CANCELLATION": "cancellation", "BUF-KH005-FU1": "buffer"}
    holdings = world.holdings("JP-BUYER-2", reader="jp-buyer")
    assert holdings["total_active"] == 0 and holdings["blocks"]["count"] == 0
    with world.unchanged():
        body = {"account_id": "JP-BUYER-3", "holder": "jp-buyer", "name": "third"}
        world.refuse(ADMIN, "account.open", {**body, "account_id": "JP-BUYER-2"},
                     status=409, code="conflict")
        world.refuse("jp-buyer", "account.open", body, status=403, code="forbidden")
        world.refuse(ADMIN, "account.open", {**body, "holder": "nobody"},
                     status=404, code="not_found")
        for holder in ("lrqa", "auditor"):
            world.refuse(ADMIN, "account.open", {**body, "holder": holder},
                         status=422, code="invalid_request")
        world.refuse(ADMIN, "account.open", {**body, "account_id": "lower-case"},
                     status=422, code="invalid_request")


def test_a_party_holds_a_bounded_number_of_keys_and_the_list_shows_those_it_signs_with(
    world: World,
) -> None:
    seeds = (hashlib.sha256(b"kh-water key %d" % i).digest() for i in range(64))
    first = world.keys["kh-water"]
    for _ in range(MAX_ACTIVE_KEYS - 1):
        key = SigningKey.from_seed(next(seeds))
        world.submit("kh-water", "party.key_add",
                     {"party_id": "kh-water", "public_key": key.public_key.to_b64()})
    # With as many active keys as a party may hold, another is refused until one goes.
    extra = SigningKey.from_seed(next(seeds)).public_key.to_b64()
    with world.unchanged():
        error = world.refuse("kh-water", "party.key_add",
                             {"party_id": "kh-water", "public_key": extra},
                             status=409, code="invalid_state")
    assert f"{MAX_ACTIVE_KEYS} active keys" in error["message"]
    world.keys["kh-water"] = key
    world.submit("kh-water", "party.key_revoke",
                 {"party_id": "kh-water", "key_id": first.public_key.key_id})
    world.submit("kh-water", "party.key_add", {"party_id": "kh-water", "public_key": extra})
    # The party's own read keeps its whole key history; the list, only the keys in use.
    own = world.http.get("/v1/parties/kh-water")["keys"]
    assert len(own) == MAX_ACTIVE_KEYS + 1
    assert [k["key_id"] for k in own if k["revoked_seq"] is not None] == [
        first.public_key.key_id]
    listed = next(p for p in world.http.get("/v1/parties", params={"limit": 500})["data"]
                  if p["id"] == "kh-water")
    assert listed["keys"] == [k for k in own if k["revoked_seq"] is None]
    assert len(listed["keys"]) == MAX_ACTIVE_KEYS
