"""Transfers, retirements and cancellations over HTTP, each signed by the holder."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from registry.client import sign_instruction
from tests.audit.bundles import entry_of
from tests.world import ADMIN, BUFFER, World, expect_error, issue_jcm

BATCH = "KH-JCM-KH004-2024-00001"


def transfer(quantity: int | None = None, *, start: int | None = None,
             end: int | None = None, source: str = "KH-WATER-1", to: str = "JP-BUYER-1",
             batch: str = BATCH) -> dict[str, Any]:
    body: dict[str, Any] = {"account": source, "batch": batch, "to_account": to}
    if quantity is not None:
        body["quantity"] = quantity
    if start is not None:
        body["range"] = {"start": start, "end": end}
    return body


def retirement(account: str, **which: Any) -> dict[str, Any]:
    return {"account": account, "batch": BATCH, **which,
            "beneficiary": "Tokyo Metro Co. (illustrative)", "purpose": "voluntary",
            "jurisdiction": "JP", "reason": "offsetting fiscal 2024 office electricity"}


def test_transfer_by_range_and_by_quantity_lowest_first(world: World) -> None:
    issue_jcm(world)  # KH-WATER-1 holds 1-800
    answer = world.submit("kh-water", "credits.transfer", transfer(start=101, end=200))
    assert answer["result"] == {"batch": BATCH, "from": "KH-WATER-1", "to": "JP-BUYER-1",
                                "quantity": 100, "blocks": [{"start": 101, "end": 200}]}
    assert world.blocks("KH-WATER-1") == [(BATCH, 1, 100, "active"), (BATCH, 201, 800, "active")]
    # By quantity the lowest serials go first, across the gap the range left.
    answer = world.submit("kh-water", "credits.transfer", transfer(150))
    assert answer["result"]["blocks"] == [{"start": 1, "end": 100}, {"start": 201, "end": 250}]
    assert world.blocks("KH-WATER-1") == [(BATCH, 251, 800, "active")]
    assert world.blocks("JP-BUYER-1") == [(BATCH, 1, 100, "active"), (BATCH, 101, 200, "active"),
                                          (BATCH, 201, 250, "active")]
    assert world.active("JP-BUYER-1") == 250
    # A range may span blocks the registry happened to split.
    answer = world.submit("jp-buyer", "credits.transfer",
                          transfer(source="JP-BUYER-1", to="KH-WATER-1", start=51, end=230))
    assert answer["result"]["quantity"] == 180
    assert world.active("JP-BUYER-1") == 70 and world.active("KH-WATER-1") == 730
    assert world.http.get(f"/v1/batches/{BATCH}")["active"] == 1000


def test_a_retirement_of_many_blocks_lists_them_on_its_own_read_and_counts_them_in_the_list(
    world: World,
) -> None:
    issue_jcm(world)
    for start in (1, 21, 41):
        world.submit("kh-water", "credits.transfer", transfer(start=start, end=start + 9))
    rid = world.submit("jp-buyer", "credits.retire",
                       retirement("JP-BUYER-1", quantity=25))["result"]["retirement_id"]
    public = world.http.get(f"/v1/retirements/{rid}")
    assert public["blocks"] == [f"{BATCH}-1-10", f"{BATCH}-21-30", f"{BATCH}-41-45"]
    assert (public["block_count"], public["quantity"]) == (3, 25)
    [listed] = world.http.get("/v1/retirements")["data"]
    assert "blocks" not in listed
    assert listed == {k: v for k, v in public.items() if k != "blocks"}


def test_retirement_is_public_and_cancellation(world: World) -> None:
    issue_jcm(world)
    world.submit("kh-water", "credits.transfer", transfer(300))
    answer = world.submit("jp-buyer", "credits.retire", retirement("JP-BUYER-1", quantity=120))
    rid = answer["result"]["retirement_id"]
    assert answer["result"] == {"retirement_id": rid, "batch": BATCH, "from": "JP-BUYER-1",
                                "quantity": 120, "blocks": [{"start": 1, "end": 120}]}
    public = world.http.get(f"/v1/retirements/{rid}")
    assert {k: public[k] for k in ("account", "batch", "blocks", "quantity", "beneficiary",
                                   "purpose", "jurisdiction", "reason", "seq")} == {
        "account": "JP-BUYER-1", "batch": BATCH, "blocks": [f"{BATCH}-1-120"], "quantity": 120,
        "beneficiary": "Tokyo Metro Co. (illustrative)", "purpose": "voluntary",
        "jurisdiction": "JP", "reason": "offsetting fiscal 2024 office electricity",
        "seq": answer["seq"]}
    assert public["block_count"] == 1
    # The list gives each retirement but its blocks: those are on its own read.
    assert world.http.get("/v1/retirements")["data"] == [
        {k: v for k, v in public.items() if k != "blocks"}]
    # Its time is the ledger entry's, written as every entry time is (UTC, "Z", microseconds).
    envelope = base64.b64decode(world.http.get(f"/v1/entries/{answer['seq']}")["envelope"])
    assert public["time"] == entry_of(envelope).time
    assert world.active("JP-BUYER-1") == 180
    assert world.blocks("RETIREMENT") == [(BATCH, 1, 120, "retired")]
    batch = world.http.get(f"/v1/batches/{BATCH}")
    assert (batch["active"], batch["retired"], batch["cancelled"]) == (880, 120, 0)
    # A cancellation (here towards an NDC) is not a retirement and is not listed as one.
    answer = world.submit("kh-gov", "credits.cancel", {
        "account": "KH-GOV-1", "batch": BATCH, "range": {"start": 851, "end": 900},
        "reason": "cancelled towards Cambodia's NDC (illustrative)"})
    assert answer["result"] == {"batch": BATCH, "from": "KH-GOV-1", "quantity": 50,
                                "blocks": [{"start": 851, "end": 900}]}
    assert world.blocks("KH-GOV-1") == [(BATCH, 801, 850, "active")]
    assert world.blocks("CANCELLATION") == [(BATCH, 851, 900, "cancelled")]
    batch = world.http.get(f"/v1/batches/{BATCH}")
    assert (batch["active"], batch["retired"], batch["cancelled"]) == (830, 120, 50)
    assert world.http.get(f"/v1/serials/{BATCH}-860")["now"]["status"] == "cancelled"
    assert world.http.get("/v1/retirements")["count"] == 1


def test_retired_and_cancelled_credits_never_move(world: World) -> None:
    issue_jcm(world)
    world.submit("kh-water", "credits.retire", retirement("KH-WATER-1", quantity=100))
    world.submit("kh-water", "credits.cancel", {
        "account": "KH-WATER-1", "batch": BATCH, "range": {"start": 701, "end": 800},
        "reason": "withdrawn"})
    assert world.blocks("KH-WATER-1") == [(BATCH, 101, 700, "active")]
    with world.unchanged():
        # The former holder no longer holds them, by range or by quantity.
        for start, end in ((1, 100), (50, 50), (90, 110), (701, 800)):
            error = world.refuse("kh-water", "credits.transfer", transfer(start=start, end=end),
                                 status=409, code="serials_not_held")
            assert error["details"]["wanted"] == {"start": start, "end": end}
        world.refuse("kh-water", "credits.retire", retirement("KH-WATER-1", range={
            "start": 1, "end": 10}), status=409, code="serials_not_held")
        error = world.refuse("kh-water", "credits.transfer", transfer(601),
                             status=409, code="insufficient_credits")
        assert error["details"] == {"held": 600, "wanted": 601}
        world.refuse("kh-water", "credits.transfer", transfer(1, source="RETIREMENT"),
                     status=403, code="forbidden")
        # Nor can the registry move them out of its retirement or cancellation account.
        for account in ("RETIREMENT", "CANCELLATION"):
            world.refuse(ADMIN, "credits.transfer",
                         transfer(1, source=account, to="KH-GOV-1"),
                         status=422, code="invalid_request")
            world.refuse(ADMIN, "credits.retire", retirement(account, quantity=1),
                         status=422, code="invalid_request")
    story = world.http.get(f"/v1/serials/{BATCH}-50")
    assert story["now"]["status"] == "retired"
    assert [e["kind"] for e in story["history"]] == ["credits.issue", "credits.retire"]


def test_movement_refusals(world: World) -> None:
    issue_jcm(world)
    with world.unchanged():
        error = world.refuse("kh-water", "credits.transfer", transfer(801),
                             status=409, code="insufficient_credits")
        assert error["details"] == {"held": 800, "wanted": 801}
        world.refuse("kh-water", "credits.transfer", transfer(start=700, end=801),
                     status=409, code="serials_not_held")
        # Only the holder moves its credits; not another party, not the administrator.
        for party in ("jp-buyer", ADMIN):
            world.refuse(party, "credits.transfer", transfer(1), status=403, code="forbidden")
        for to in ("RETIREMENT", "CANCELLATION", BUFFER, "KH-WATER-1"):
            world.refuse("kh-water", "credits.transfer", transfer(1, to=to),
                         status=422, code="invalid_request")
        world.refuse("kh-water", "credits.transfer", transfer(1, to="JP-NOBODY-1"),
                     status=404, code="not_found")
        world.refuse("kh-water", "credits.transfer", transfer(1, source="KH-NOBODY-1"),
                     status=404, code="not_found")
        world.refuse("kh-water", "credits.transfer", transfer(1, batch="KH-JCM-KH004-2024-00002"),
                     status=404, code="not_found")
        world.refuse("kh-water", "credits.transfer", transfer(1, start=1, end=1),
                     status=422, code="invalid_request")
        world.refuse("kh-water", "credits.transfer", transfer(), status=422,
                     code="invalid_request")
        world.refuse("kh-water", "credits.transfer", transfer(start=10, end=9),
                     status=422, code="invalid_serial_range")
        world.refuse("kh-water", "credits.cancel", {"account": "KH-WATER-1", "batch": BATCH,
                                                    "quantity": 1, "reason": ""},
                     status=422, code="invalid_request")
        world.refuse("kh-water", "credits.retire", {**retirement("KH-WATER-1", quantity=1),
                                                    "purpose": "greenwashing"},
                     status=422, code="invalid_request")


def test_concurrent_transfers_never_overspend(world: World) -> None:
    """Eight holders' instructions race for 800 credits in 150s: five win, three are refused."""
    issue_jcm(world)
    signed = [sign_instruction(world.keys["kh-water"], registry=world.origin, actor="kh-water",
                               type="credits.transfer", body=transfer(150)) for _ in range(8)]

    def post(body: dict[str, Any]) -> httpx.Response:
        with httpx.Client(base_url=str(world.http.http.base_url), timeout=30) as client:
            return client.post("/v1/transfers", json=body,
                               headers={"Idempotency-Key": body["instruction"]["nonce"]})

    before = world.tree_size()
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, signed))
    won = [r for r in responses if r.status_code == 200]
    lost = [r for r in responses if r.status_code != 200]
    assert len(won) == 5 and len(lost) == 3
    for r in lost:
        expect_error(r, 409, "insufficient_credits")
    assert world.tree_size() == before + 5
    assert world.active("KH-WATER-1") == 50 and world.active("JP-BUYER-1") == 750
    taken = sorted((b["start"], b["end"]) for r in won for b in r.json()["result"]["blocks"])
    assert taken == [(1 + 150 * i, 150 * (i + 1)) for i in range(5)]
