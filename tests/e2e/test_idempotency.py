"""Idempotency over HTTP: a retry returns the first answer and never appends twice."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import update
from sqlmodel import Session, col

from registry.client import sign_instruction
from registry.service.context import Registry
from registry.service.submit import request_hash
from registry.store.tables import IdempotencyRow
from tests.world import World, expect_error, flip_first_byte, issue_jcm

BATCH = "KH-JCM-KH004-2024-00001"


def move(quantity: int = 800) -> dict[str, Any]:
    return {"account": "KH-WATER-1", "batch": BATCH, "quantity": quantity,
            "to_account": "JP-BUYER-1"}


def test_retry_returns_the_original_answer_and_appends_once(world: World) -> None:
    client = world.as_("kh-water")
    signed = client.sign("credits.transfer", move())
    # Only a success is remembered: a refusal leaves nothing, so a retry is judged afresh.
    expect_error(client.post_signed(signed, idempotency_key="transfer-2024-0001"),
                 404, "not_found")
    issue_jcm(world)
    before = world.tree_size()
    first = client.post_signed(signed, idempotency_key="transfer-2024-0001")
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    # Every credit has moved, so doing it again would fail: a retry is answered, not redone.
    for _ in range(3):
        retry = client.post_signed(signed, idempotency_key="transfer-2024-0001")
        assert retry.status_code == 200
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json() == first.json()
    assert world.tree_size() == before + 1
    assert world.active("KH-WATER-1") == 0 and world.active("JP-BUYER-1") == 800


def test_a_request_accepted_before_an_upgrade_and_retried_after_it_gets_its_answer(
    world: World, registry: Registry
) -> None:
    # Instructions did not always name their registry. A client whose transfer was accepted by
    # that version, and who retries it after the upgrade, must be told it went through: told
    # 422, it would sign the move afresh and make it twice.
    issue_jcm(world)
    client = world.as_("kh-water")
    signed = client.sign("credits.transfer", move(10))
    first = client.post_signed(signed, idempotency_key="before-upgrade")
    assert first.status_code == 200
    older = copy.deepcopy(signed)
    del older["instruction"]["registry"]
    # What that version stored for it: the answer, under the older request's fingerprint.
    with Session(registry.engine) as session, session.begin():
        session.execute(
            update(IdempotencyRow)
            .where(col(IdempotencyRow.seq) == first.json()["seq"])
            .values(request_hash=request_hash("credits.transfer", older))
        )
    with world.unchanged():
        retry = world.post_raw("/v1/transfers", older, idempotency_key="before-upgrade")
        assert retry.status_code == 200, retry.text
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json() == first.json()
        # Sent afresh, under another key, it is what it is now: refused, and nothing moves.
        expect_error(world.post_raw("/v1/transfers", older, idempotency_key="after-upgrade"),
                     422, "invalid_request")
    assert world.active("JP-BUYER-1") == 10


def test_a_refused_body_whose_actor_is_no_text_is_a_422_not_a_500(world: World) -> None:
    # JSON can spell a lone surrogate. Looking up a stored answer for a body the API refuses
    # must not fail on it: a 500 would tell the client to retry, forever.
    body = b'{"instruction": {"actor": "\\ud800", "type": "credits.transfer"}}'
    with world.unchanged():
        response = world.http.http.post(
            "/v1/transfers", content=body,
            headers={"Idempotency-Key": "K-1", "Content-Type": "application/json"},
        )
        expect_error(response, 422, "invalid_request")


def test_same_key_for_another_request_is_a_conflict(world: World) -> None:
    issue_jcm(world)
    client = world.as_("kh-water")
    first = client.post_signed(client.sign("credits.transfer", move(10)), idempotency_key="K-1")
    assert first.status_code == 200
    with world.unchanged():
        other = client.sign("credits.transfer", move(20))
        error = expect_error(client.post_signed(other, idempotency_key="K-1"),
                             409, "idempotency_key_reused")
        assert error["details"] == {"idempotency_key": "K-1", "seq": first.json()["seq"]}
        # The same body re-signed (a fresh nonce) is another request too.
        again = client.sign("credits.transfer", move(10))
        expect_error(client.post_signed(again, idempotency_key="K-1"),
                     409, "idempotency_key_reused")
    assert world.active("JP-BUYER-1") == 10
    # Keys belong to the party that signs: another party's "K-1" is its own, not a conflict.
    buyer = world.as_("jp-buyer")
    theirs = buyer.sign("credits.transfer", {**move(1), "account": "JP-BUYER-1",
                                             "to_account": "KH-WATER-1"})
    assert buyer.post_signed(theirs, idempotency_key="K-1").status_code == 200
    assert world.active("JP-BUYER-1") == 9


def test_nobody_but_the_signer_learns_that_its_key_was_used(world: World) -> None:
    issue_jcm(world)
    water = world.as_("kh-water")
    first = water.post_signed(water.sign("credits.transfer", move(10)), idempotency_key="K-1")
    assert first.status_code == 200
    http = world.http.http
    with world.unchanged():
        # Another party names the water utility as the actor, under its key "K-1": it is
        # refused as unauthenticated, not told that "K-1" was used, nor for which entry.
        forged = sign_instruction(world.keys["jp-buyer"], registry=world.origin, actor="kh-water",
                                  type="credits.transfer", body=move(20))
        error = expect_error(http.post("/v1/transfers", json=forged,
                                       headers={"Idempotency-Key": "K-1"}),
                             401, "unauthenticated")
        assert "seq" not in error["details"]
        tampered = water.sign("credits.transfer", move(20))
        tampered["signature"] = flip_first_byte(tampered["signature"])
        expect_error(water.post_signed(tampered, idempotency_key="K-1"), 401, "bad_signature")
        # Nor by a request that does not even parse.
        expect_error(http.post("/v1/transfers", json={"instruction": {"actor": "kh-water"}},
                               headers={"Idempotency-Key": "K-1"}), 422, "invalid_request")
        # The party itself still hears of the conflict.
        expect_error(water.post_signed(water.sign("credits.transfer", move(20)),
                                       idempotency_key="K-1"), 409, "idempotency_key_reused")
    assert world.active("JP-BUYER-1") == 10


def test_concurrent_retries_append_exactly_once(world: World) -> None:
    issue_jcm(world)
    url = str(world.http.http.base_url)

    def race(signed: dict[str, Any], keys: list[str]) -> list[httpx.Response]:
        def post(key: str) -> httpx.Response:
            with httpx.Client(base_url=url, timeout=30) as client:
                return client.post("/v1/transfers", json=signed,
                                   headers={"Idempotency-Key": key})

        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            return list(pool.map(post, keys))

    # Eight retries of one request under one Idempotency-Key: one append, eight equal answers.
    before = world.tree_size()
    signed = world.as_("kh-water").sign("credits.transfer", move(300))
    responses = race(signed, ["concurrent-1"] * 8)
    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.text for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    assert world.tree_size() == before + 1
    assert world.active("KH-WATER-1") == 500 and world.active("JP-BUYER-1") == 300
    # Eight copies of one instruction, each under its own key: the nonce stops seven.
    signed = world.as_("kh-water").sign("credits.transfer", move(300))
    responses = race(signed, [f"copy-{i}" for i in range(8)])
    assert sorted(r.status_code for r in responses) == [200] + [409] * 7
    for r in responses:
        if r.status_code == 409:
            expect_error(r, 409, "nonce_reused")
    assert world.tree_size() == before + 2
    assert world.active("KH-WATER-1") == 200
