"""The public ledger API over real HTTP: what an auditor's or a monitor's client sees."""

from __future__ import annotations

import base64

import pytest

from registry.api import ledger_routes
from registry.ledger import merkle
from registry.ledger.checkpoint import NoteVerifier, open_checkpoint
from registry.ledger.entry import open_entry
from registry.ledger.keys import PublicKey
from registry.service.context import Registry
from tests.factories import append_notes
from tests.helpers import LiveServer


def _b(s: str) -> bytes:
    return base64.b64decode(s)


def test_a_client_checks_entries_and_proofs_against_the_signed_checkpoint(
    registry: Registry, server: LiveServer
) -> None:
    append_notes(registry, 9)
    http = server.client

    keys = http.get("/v1/keys").json()
    assert keys["count"] == 1
    key = keys["data"][0]
    verifier = NoteVerifier.parse(key["note_verifier"])
    public = PublicKey(raw=_b(key["public_key"]))
    assert public.key_id == key["key_id"] == registry.signer.public_key.key_id

    r = http.get("/v1/checkpoint")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    cp = open_checkpoint(r.text, origin=registry.origin, verifiers=[verifier])
    assert cp.size == 10

    page = http.get("/v1/entries", params={"start": 0, "limit": 4}).json()
    assert page["count"] == 4 and page["tree_size"] == 10
    assert [e["seq"] for e in page["data"]] == [0, 1, 2, 3]
    rest = http.get("/v1/entries", params={"start": 4, "limit": 1000}).json()
    envelopes = [_b(e["envelope"]) for e in page["data"] + rest["data"]]
    assert len(envelopes) == 10

    tree = merkle.MemoryTree()
    for env in envelopes:
        open_entry(env, {public.key_id: public})
        tree.append(merkle.leaf_hash(env))
    assert tree.root() == cp.root

    for index in (0, 5, 9):
        p = http.get("/v1/proofs/inclusion", params={"index": index, "tree_size": 10}).json()
        merkle.verify_inclusion(
            merkle.leaf_hash(envelopes[index]), index, 10, [_b(h) for h in p["proof"]], cp.root
        )

    old = open_checkpoint(
        http.get("/v1/checkpoints/3").text, origin=registry.origin, verifiers=[verifier]
    )
    c = http.get("/v1/proofs/consistency", params={"first": 3, "second": 10}).json()
    merkle.verify_consistency(3, 10, [_b(h) for h in c["proof"]], old.root, cp.root)


def test_bad_requests_get_machine_readable_errors(server: LiveServer) -> None:
    http = server.client
    cases: list[tuple[str, dict[str, str | int], int, str]] = [
        ("/v1/proofs/inclusion", {"index": 5, "tree_size": 1}, 422, "invalid_request"),
        ("/v1/proofs/inclusion", {"index": 0, "tree_size": 99}, 422, "invalid_request"),
        ("/v1/proofs/inclusion", {"index": -1, "tree_size": 1}, 422, "invalid_request"),
        ("/v1/proofs/consistency", {"first": 2, "second": 1}, 422, "invalid_request"),
        ("/v1/proofs/consistency", {"first": "x", "second": 1}, 422, "invalid_request"),
        ("/v1/entries", {"limit": 5000}, 422, "invalid_request"),
        ("/v1/entries", {"from": 3}, 422, "invalid_request"),  # the parameter is `start`
        ("/v1/checkpoint", {"size": 3}, 422, "invalid_request"),
        ("/v1/entries/77", {}, 404, "not_found"),
        ("/v1/checkpoints/77", {}, 404, "not_found"),
        ("/v1/nowhere", {}, 404, "not_found"),
    ]
    for path, params, status, code in cases:
        r = http.get(path, params=params)
        assert r.status_code == status, (path, params, r.text)
        body = r.json()["error"]
        assert body["code"] == code and body["message"], (path, body)


def test_a_method_a_path_does_not_take_is_a_405_naming_those_it_does(server: LiveServer) -> None:
    r = server.client.delete("/v1/entries/0")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "GET"


def test_a_405_names_every_method_of_a_path_that_takes_several(server: LiveServer) -> None:
    # A list is read with GET and an instruction posted to the same path: both are named.
    for path in ("/v1/parties", "/v1/accounts", "/v1/retirements"):
        r = server.client.delete(path)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert sorted(m.strip() for m in r.headers["allow"].split(",")) == ["GET", "POST"], path


def test_a_page_of_entries_keeps_to_its_bytes_and_says_where_the_next_starts(
    registry: Registry, server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries that register forest units carry megabytes of boundary each: a page stops at
    ``MAX_PAGE_BYTES`` of envelopes, however many were asked for, but always holds one."""
    append_notes(registry, 9)
    http = server.client
    sizes = [len(_b(e["envelope"])) for e in http.get("/v1/entries").json()["data"]]
    monkeypatch.setattr(ledger_routes, "MAX_PAGE_BYTES", sizes[1] + sizes[2])

    page = http.get("/v1/entries", params={"start": 1, "limit": 1000}).json()
    assert [e["seq"] for e in page["data"]] == [1, 2]
    assert page["count"] == 2 and page["next"] == 3 and page["tree_size"] == 10

    monkeypatch.setattr(ledger_routes, "MAX_PAGE_BYTES", 1)  # every entry is larger
    seen, start = [], 0
    while start is not None:
        page = http.get("/v1/entries", params={"start": start, "limit": 1000}).json()
        assert page["count"] == 1
        seen += [e["seq"] for e in page["data"]]
        start = page["next"]
    assert seen == list(range(10))


def test_a_read_gives_its_database_connection_back_before_its_answer_is_sent(
    registry: Registry, server: LiveServer
) -> None:
    """A client reading one page after another needs one connection, never a second: its next
    read cannot arrive before the last one's connection is back. (One that did would open
    another, which a server whose SQLite file was moved away cannot: its reads would be refused
    503 ``database_moved`` where they go on from the file it has open.)"""
    pool = registry.engine.pool
    for path in ("/v1/entries", "/v1/parties", "/v1/checkpoint", "/v1/accounts/KH-NONE"):
        for _ in range(20):
            answer = server.client.get(path)
            assert answer.status_code in (200, 404), answer.text
            assert pool.checkedout() == 0, path  # type: ignore[attr-defined]
