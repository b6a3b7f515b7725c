"""A beneficiary's retirement receipt: fetched over HTTP, checked offline with the pinned key."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from registry.errors import RegistryError
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.keys import SigningKey
from registry.ledger.receipt import RetirementReceipt, verify_receipt
from registry.service.context import Registry
from tests.world import World, issue_jcm


def _retire(world: World) -> str:
    batch = issue_jcm(world)
    world.submit(
        "kh-water",
        "credits.transfer",
        {"account": "KH-WATER-1", "batch": batch, "quantity": 100, "to_account": "JP-BUYER-1"},
    )
    result = world.submit(
        "jp-buyer",
        "credits.retire",
        {
            "account": "JP-BUYER-1",
            "batch": batch,
            "quantity": 40,
            "beneficiary": "Example Co.",
            "purpose": "voluntary",
            "jurisdiction": "JP",
            "reason": "2025 offsetting",
        },
    )
    retirement_id: str = result["result"]["retirement_id"]
    return retirement_id


def test_receipt_verifies_offline_and_survives_later_growth(
    registry: Registry, world: World
) -> None:
    retirement_id = _retire(world)
    receipt = world.http.get(f"/v1/retirements/{retirement_id}/receipt")
    for _ in range(3):  # the ledger grows after the receipt was taken
        world.submit(
            "kh-water",
            "credits.transfer",
            {
                "account": "KH-WATER-1",
                "batch": "KH-JCM-KH004-2024-00001",
                "quantity": 1,
                "to_account": "JP-BUYER-1",
            },
        )
    checked = verify_receipt(
        RetirementReceipt.model_validate(receipt), verifier=registry.note_verifier
    )
    assert checked.holder == "jp-buyer" and checked.quantity == 40
    assert checked.blocks == [{"start": 1, "end": 40}]


def _tampered(receipt: dict[str, Any], how: str, registry: Registry) -> dict[str, Any]:
    r: dict[str, Any] = json.loads(json.dumps(receipt))
    if how == "envelope byte":
        raw = bytearray(base64.b64decode(r["retirement"]["envelope"]))
        raw[len(raw) // 2] ^= 1
        r["retirement"]["envelope"] = base64.b64encode(bytes(raw)).decode()
    elif how == "proof hash":
        r["retirement"]["proof"][0] = base64.b64encode(b"\0" * 32).decode()
    elif how == "other key entry":
        r["holder_key"] = r["retirement"]
    elif how == "checkpoint":
        r["checkpoint"] = r["checkpoint"].replace("\n", "\n ", 1)
    elif how == "retirement id":
        r["retirement_id"] = "RET-1"
    return r


@pytest.mark.parametrize(
    "how", ["envelope byte", "proof hash", "other key entry", "checkpoint", "retirement id"]
)
def test_tampered_receipts_are_refused(registry: Registry, world: World, how: str) -> None:
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    with pytest.raises(RegistryError):
        verify_receipt(
            RetirementReceipt.model_validate(_tampered(receipt, how, registry)),
            verifier=registry.note_verifier,
        )


def test_receipt_needs_the_registry_key(registry: Registry, world: World) -> None:
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    impostor = NoteVerifier(name=registry.origin, key=SigningKey.generate().public_key)
    with pytest.raises(RegistryError, match="registry key"):
        verify_receipt(RetirementReceipt.model_validate(receipt), verifier=impostor)


def test_unknown_retirement_has_no_receipt(world: World) -> None:
    r = world.http.http.get("/v1/retirements/RET-999/receipt")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
