"""Reads over HTTP: private holdings, public records, a serial's story, pagination."""

from __future__ import annotations

from typing import Any

from registry.api.paths import AUTH_SIGNATURE
from registry.client import read_auth_headers
from tests.world import ADMIN, PRIVATE_PARTIES, World, expect_error, flip_first_byte, issue_jcm

BATCH = "KH-JCM-KH004-2024-00001"
HOLDINGS = "/v1/accounts/KH-WATER-1/holdings"


def test_holdings_are_private_to_holder_administrators_and_auditors(world: World) -> None:
    issue_jcm(world)
    for reader in ("kh-water", ADMIN, "auditor"):
        response = world.read(HOLDINGS, party=reader)
        assert response.status_code == 200, reader
        assert response.json()["total_active"] == 800
        assert response.json()["account"]["holder"] == "kh-water"
    # Other parties, even those on the same project, are refused; so is an unsigned read.
    for reader in ("kh-gov", "jp-buyer", "lrqa"):
        error = expect_error(world.read(HOLDINGS, party=reader), 403, "forbidden")
        assert "KH-WATER-1" in error["message"]
    error = expect_error(world.read(HOLDINGS), 401, "unauthenticated")
    assert "sign" in error["message"]
    # A signed read is bound to its path and its signer.
    client = world.http.http
    headers = read_auth_headers(world.keys["kh-water"], registry=world.origin, actor="kh-water",
                                method="GET",
                                path="/v1/accounts/KH-WATER-1/holdings")
    expect_error(client.get("/v1/accounts/KH-WATER-1/holdings", params={"limit": 1},
                            headers=headers), 401, "bad_signature")
    expect_error(client.get("/v1/accounts/JP-BUYER-1/holdings", headers=headers),
                 401, "bad_signature")
    tampered = {**headers, AUTH_SIGNATURE: flip_first_byte(headers[AUTH_SIGNATURE])}
    expect_error(client.get(HOLDINGS, headers=tampered), 401, "bad_signature")
    expect_error(client.get(HOLDINGS, headers={**headers, "X-Registry-Actor": "kh-gov"}),
                 401, "unauthenticated")
    expect_error(world.read("/v1/accounts/KH-NOBODY-1/holdings", party=ADMIN), 404, "not_found")


def test_public_records_and_a_serials_life_story(world: World) -> None:
    issue_jcm(world)
    issue = world.tree_size() - 1
    moved = world.submit("kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": BATCH, "range": {"start": 401, "end": 600},
        "to_account": "JP-BUYER-1"})
    retired = world.submit("jp-buyer", "credits.retire", {
        "account": "JP-BUYER-1", "batch": BATCH, "range": {"start": 450, "end": 460},
        "beneficiary": "Example Co.", "purpose": "corsia", "jurisdiction": "JP",
        "reason": "CORSIA offsetting requirement, 2024"})
    story = world.http.get(f"/v1/serials/{BATCH}-455")
    assert story["serial"] == f"{BATCH}-455"
    assert (story["batch"], story["number"]) == (BATCH, 455)
    assert story["now"] == {"block": f"{BATCH}-450-460", "batch": BATCH, "start": 450,
                            "end": 460, "quantity": 11, "account": "RETIREMENT",
                            "status": "retired"}
    assert story["history"] == [
        {"seq": issue, "kind": "credits.issue", "block": f"{BATCH}-1-800",
         "from_account": None, "to_account": "KH-WATER-1", "status": "active"},
        {"seq": moved["seq"], "kind": "credits.transfer", "block": f"{BATCH}-401-600",
         "from_account": "KH-WATER-1", "to_account": "JP-BUYER-1", "status": "active"},
        {"seq": retired["seq"], "kind": "credits.retire", "block": f"{BATCH}-450-460",
         "from_account": "JP-BUYER-1", "to_account": "RETIREMENT", "status": "retired"},
    ]
    # A serial next door never moved past the transfer.
    assert len(world.http.get(f"/v1/serials/{BATCH}-461")["history"]) == 2
    expect_error(world.read(f"/v1/serials/{BATCH}-1001"), 404, "not_found")
    expect_error(world.read("/v1/serials/KH-JCM-KH004-2024-00009-1"), 404, "not_found")
    for bad in (f"{BATCH}-0", f"{BATCH}-007", "KH004-1", "not-a-serial"):
        expect_error(world.read(f"/v1/serials/{bad}"), 422, "invalid_serial_id")
    # Public records by id; an unknown id is a 404 with the usual error body.
    for path in ("/v1/projects/KH404", "/v1/forest-units/KH404-FU1", "/v1/reports/KH404-MR1",
                 f"/v1/batches/{BATCH[:-1]}9", "/v1/retirements/RET-1", "/v1/parties/nobody"):
        expect_error(world.read(path), 404, "not_found")
    assert world.http.get("/v1/parties/kh-water")["keys"][0]["key_id"] == (
        world.keys["kh-water"].public_key.key_id)
    assert world.http.get("/v1/reports/KH004-MR1")["status"] == "issued"


def test_pagination(world: World) -> None:
    issue_jcm(world)
    for i in range(5):
        world.submit("kh-water", "credits.retire", {
            "account": "KH-WATER-1", "batch": BATCH, "quantity": 10 + i,
            "beneficiary": f"Beneficiary {i}", "purpose": "voluntary", "jurisdiction": "KH",
            "reason": "monthly offsetting"})

    def pages(path: str, limit: int, **params: Any) -> list[Any]:
        first = world.http.get(path, params={"limit": limit, **params})
        items, offset = list(first["data"]), limit
        while offset < first["count"]:
            page = world.http.get(path, params={"offset": offset, "limit": limit, **params})
            assert (page["offset"], page["limit"], page["count"]) == (offset, limit,
                                                                      first["count"])
            items += page["data"]
            offset += limit
        assert len(items) == first["count"]
        return items

    parties = world.http.get("/v1/parties", params={"limit": 500})
    assert parties["count"] == 1 + len(PRIVATE_PARTIES) == len(parties["data"])
    assert pages("/v1/parties", 3) == parties["data"]
    middle = world.http.get("/v1/parties", params={"offset": 2, "limit": 3})
    assert middle["data"] == parties["data"][2:5]
    assert world.http.get("/v1/parties", params={"offset": 100})["data"] == []
    retirements = pages("/v1/retirements", 2)
    assert [r["quantity"] for r in retirements] == [10, 11, 12, 13, 14]
    assert [r["beneficiary"] for r in retirements] == [f"Beneficiary {i}" for i in range(5)]
    assert len(pages("/v1/accounts", 4)) == 4 + 3
    # Holdings page through the holder's blocks: 1-60 is retired, so 61-800 remains as one.
    retire = world.holdings("RETIREMENT", limit=2, offset=3)
    assert retire["blocks"]["count"] == 5 and len(retire["blocks"]["data"]) == 2
    assert [b["block"] for b in retire["blocks"]["data"]] == [f"{BATCH}-34-46", f"{BATCH}-47-60"]
    # Each page says the ledger's size it was read at: a client paging through sees when the
    # registry moved in between (its pages may then disagree) and starts again.
    before = world.holdings("KH-WATER-1", limit=1)["blocks"]
    assert before["tree_size"] == world.tree_size() == parties["tree_size"]
    world.submit("kh-water", "credits.transfer", {"account": "KH-WATER-1", "batch": BATCH,
                                                  "quantity": 1, "to_account": "JP-BUYER-1"})
    after = world.holdings("KH-WATER-1", limit=1, offset=1)["blocks"]
    assert after["tree_size"] == before["tree_size"] + 1
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "ten"}):
        expect_error(world.read("/v1/parties", params=params), 422, "invalid_request")
        expect_error(world.read("/v1/accounts/KH-WATER-1/holdings", party="kh-water",
                                params=params), 422, "invalid_request")


def test_paging_through_holdings_while_the_holder_moves_credits_misses_no_block(
    world: World,
) -> None:
    # An auditor pages through an account's blocks while the registry keeps moving: every
    # block the account holds all along is listed exactly once, whatever moves meanwhile.
    issue_jcm(world)
    for start in (101, 301, 501):  # KH-WATER-1 holds 1-100, 201-300, 401-500, 601-800
        world.submit("kh-water", "credits.transfer", {
            "account": "KH-WATER-1", "batch": BATCH, "range": {"start": start,
                                                               "end": start + 99},
            "to_account": "JP-BUYER-1"})
    first = world.holdings("KH-WATER-1", reader="auditor", limit=2)["blocks"]
    assert [b["block"] for b in first["data"]] == [f"{BATCH}-1-100", f"{BATCH}-201-300"]
    assert first["next"] == f"{BATCH}-300"
    # Meanwhile the holder transfers its first block away, and part of its last one.
    world.submit("kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": BATCH, "range": {"start": 1, "end": 100},
        "to_account": "JP-BUYER-1"})
    world.submit("kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": BATCH, "range": {"start": 601, "end": 650},
        "to_account": "JP-BUYER-1"})
    second = world.holdings("KH-WATER-1", reader="auditor", limit=2, after=first["next"])
    assert [b["block"] for b in second["blocks"]["data"]] == [f"{BATCH}-401-500",
                                                               f"{BATCH}-651-800"]
    assert second["blocks"]["next"] == f"{BATCH}-800"
    last = world.holdings("KH-WATER-1", reader="auditor", limit=2,
                          after=second["blocks"]["next"])["blocks"]
    assert (last["data"], last["next"]) == ([], None)
    # A page that is not full is the last: it names no next page.
    assert world.holdings("KH-WATER-1", reader="auditor")["blocks"]["next"] is None
    # A block split across the cursor is not listed again: 201-300 was seen, 201-250 moves
    # out, and the rest of what was seen is not a new block past the cursor.
    world.submit("kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": BATCH, "range": {"start": 201, "end": 250},
        "to_account": "JP-BUYER-1"})
    page = world.holdings("KH-WATER-1", reader="auditor", limit=500, after=f"{BATCH}-300")
    assert [b["block"] for b in page["blocks"]["data"]] == [f"{BATCH}-401-500",
                                                             f"{BATCH}-651-800"]
    for bad in ("KH004-1", f"{BATCH}-0", "not-a-serial"):
        expect_error(world.read("/v1/accounts/KH-WATER-1/holdings", party="auditor",
                                params={"after": bad}), 422, "invalid_serial_id")


def test_a_filter_a_list_does_not_take_is_refused_not_ignored(world: World) -> None:
    # A buyer asking for one project's batches, or one beneficiary's retirements, must not be
    # handed every batch or retirement as if it were the filtered list.
    issue_jcm(world)
    for path, params in (("/v1/batches", {"project_id": "KH999"}),
                         ("/v1/retirements", {"beneficiary": "Nobody Co."}),
                         ("/v1/reports", {"project": "KH999"}),
                         ("/v1/parties", {"offset": 0, "role": "auditor"}),
                         (f"/v1/batches/{BATCH}", {"fields": "id"})):
        error = expect_error(world.read(path, params=params), 422, "invalid_request")
        assert repr(next(k for k in params if k != "offset")) in error["message"], error
    error = expect_error(world.read(HOLDINGS, party="kh-water", params={"status": "retired"}),
                         422, "invalid_request")
    assert error["details"]["unknown"] == ["status"]
    assert "after" in error["details"]["known"]
    # The filters a list does take still work.
    assert world.http.get("/v1/reports", params={"project_id": "KH999"})["count"] == 0


def test_paging_through_accounts_while_one_is_opened_repeats_and_misses_none(
    world: World,
) -> None:
    # Records are listed in the order the ledger made them, so a record made while a client
    # pages through the list comes last: it never shifts one already seen onto the next page.
    issue_jcm(world)
    first = world.http.get("/v1/accounts", params={"limit": 3})
    world.submit(ADMIN, "account.open",
                 {"account_id": "AA-1", "holder": "jp-buyer", "name": "first by name"})
    seen = [a["id"] for a in first["data"]]
    offset = 3
    while True:
        page = world.http.get("/v1/accounts", params={"offset": offset, "limit": 3})["data"]
        if not page:
            break
        seen += [a["id"] for a in page]
        offset += 3
    assert sorted(seen) == sorted({*(a["id"] for a in world.http.get("/v1/accounts",
                                                                       params={"limit": 500})
                                     ["data"])})
    assert seen[-1] == "AA-1"
