"""A beneficiary's retirement receipt: fetched over HTTP, checked offline with the pinned key."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest

from registry.client import sign_instruction
from registry.errors import RegistryError
from registry.ledger.canonical import canonical_bytes
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from registry.ledger.entry import Entry, parse_time, seal_entry
from registry.ledger.keys import SigningKey, b64encode
from registry.ledger.merkle import MemoryTree, inclusion_proof, leaf_hash
from registry.ledger.receipt import RetirementReceipt, verify_receipt
from registry.service.context import Registry
from tests.audit.bundles import entry_of
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


def _resealed(registry: Registry, envelope: str, change: dict[str, Any]) -> bytes:
    """The entry in ``envelope`` with ``change`` made, sealed with the registry's own key."""
    old = entry_of(base64.b64decode(envelope))
    payload = json.loads(json.dumps(old.payload))
    for path, value in change.items():
        *parents, last = path.split("__")
        target = payload
        for name in parents:
            target = target[name]
        target[last] = value
    fields = {**old.to_json_value(), "payload": payload}
    if "actor" in change:
        fields["actor"] = change["actor"]
        del payload["actor"]
    return seal_entry(Entry(**fields), registry.signer)


def _forged(
    registry: Registry,
    receipt: dict[str, Any],
    key_change: dict[str, Any] | None = None,
    **change: Any,
) -> RetirementReceipt:
    """``receipt`` as a dishonest registry could rebuild it: its retirement entry (and with
    ``key_change`` its key registration entry) changed and sealed with the registry's own key,
    in a tree and checkpoint the registry signs anew."""
    key_envelope = base64.b64decode(receipt["holder_key"]["envelope"])
    if key_change:
        key_envelope = _resealed(registry, receipt["holder_key"]["envelope"], key_change)
    old = entry_of(base64.b64decode(receipt["retirement"]["envelope"]))
    forged = _resealed(registry, receipt["retirement"]["envelope"], change)
    key_seq, seq = receipt["holder_key"]["seq"], old.seq
    tree = MemoryTree()
    for position in range(seq + 1):
        leaf = {key_seq: key_envelope, seq: forged}.get(position, b"filler %d" % position)
        tree.append(leaf_hash(leaf))
    note = sign_checkpoint(
        Checkpoint(origin=registry.origin, size=tree.size, root=tree.root()),
        name=registry.origin, key=registry.signer,
    )

    def included(position: int, envelope: bytes) -> dict[str, Any]:
        proof = inclusion_proof(position, tree.size, tree)
        return {"seq": position, "envelope": base64.b64encode(envelope).decode(),
                "tree_size": tree.size, "proof": [base64.b64encode(h).decode() for h in proof]}

    return RetirementReceipt.model_validate({
        **receipt, "checkpoint": note, "retirement": included(seq, forged),
        "holder_key": included(key_seq, key_envelope),
    })


def test_a_receipt_shows_only_what_the_holder_signed(registry: Registry, world: World) -> None:
    """The registry's key seals anything: a receipt is believed only where it agrees with the
    holder's signed instruction (each forgery below is sealed and checkpointed by the registry
    itself, and its holder signature still verifies)."""
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    honest = verify_receipt(_forged(registry, receipt), verifier=registry.note_verifier)
    assert honest.quantity == 40 and honest.body.beneficiary == "Example Co."
    instruction = entry_of(base64.b64decode(receipt["retirement"]["envelope"])).payload
    buyer = world.keys["jp-buyer"]
    batch = instruction["instruction"]["body"]["batch"]
    transfer = sign_instruction(buyer, registry=world.origin, actor="jp-buyer",
                                type="credits.transfer", body={
        "account": "JP-BUYER-1", "batch": batch, "quantity": 40, "to_account": "KH-WATER-1"})
    expired = sign_instruction(
        buyer, registry=world.origin, actor="jp-buyer", type="credits.retire",
        body=instruction["instruction"]["body"],
        now=parse_time(honest.entry.time) - timedelta(hours=2), valid_for=timedelta(hours=1),
    )
    elsewhere = sign_instruction(
        buyer, registry="jp.carbon-registry.example/ledger", actor="jp-buyer",
        type="credits.retire", body=instruction["instruction"]["body"],
        now=parse_time(honest.entry.time),
    )
    # As the holder signs where instructions name no registry (a registry older than the rule,
    # with the same key); this ledger's key registration names its registry, so its retirements do.
    unbound = {**elsewhere["instruction"]}
    del unbound["registry"]
    unbound_signature = b64encode(buyer.sign(canonical_bytes(unbound)))
    forgeries: dict[str, dict[str, Any]] = {
        "more retired than signed": {"effects__quantity": 4000,
                                     "effects__blocks": [{"start": 1, "end": 4000}]},
        "blocks that are not the quantity": {"effects__blocks": [{"start": 1, "end": 39}]},
        "another account": {"effects__from": "KH-WATER-1"},
        "recorded as another party's": {"actor": "kh-water"},
        "a signed transfer": {"instruction": transfer["instruction"],
                              "signature": transfer["signature"]},
        "expired before its entry": {"instruction": expired["instruction"],
                                     "signature": expired["signature"]},
        "signed for another registry": {"instruction": elsewhere["instruction"],
                                        "signature": elsewhere["signature"]},
        "signed for no registry": {"instruction": unbound, "signature": unbound_signature},
    }
    for what, change in forgeries.items():
        with pytest.raises(RegistryError, match=f"entry {honest.entry.seq}"):
            verify_receipt(_forged(registry, receipt, **change), verifier=registry.note_verifier)
            pytest.fail(f"accepted: {what}")


def test_a_retirement_of_a_range_held_in_several_blocks_has_a_receipt_that_verifies(
    registry: Registry, world: World
) -> None:
    """A serial range may span blocks the holder got side by side (two transfers of 50): the
    retirement records one piece per block, and together they are the range signed."""
    batch = issue_jcm(world)
    for _ in range(2):
        world.submit("kh-water", "credits.transfer", {"account": "KH-WATER-1", "batch": batch,
                                                      "quantity": 50, "to_account": "JP-BUYER-1"})
    retired = world.submit("jp-buyer", "credits.retire", {
        "account": "JP-BUYER-1", "batch": batch, "range": {"start": 1, "end": 100},
        "beneficiary": "Example Co.", "purpose": "voluntary", "jurisdiction": "JP",
        "reason": "2025 offsetting"})
    assert retired["result"]["blocks"] == [{"start": 1, "end": 50}, {"start": 51, "end": 100}]
    receipt = world.http.get(f"/v1/retirements/{retired['result']['retirement_id']}/receipt")
    checked = verify_receipt(
        RetirementReceipt.model_validate(receipt), verifier=registry.note_verifier
    )
    assert checked.quantity == 100
    # Pieces that are not the range signed (a gap, or beyond it) are not believed.
    for blocks in ([{"start": 1, "end": 50}, {"start": 52, "end": 101}],
                   [{"start": 1, "end": 50}, {"start": 51, "end": 101}]):
        with pytest.raises(RegistryError, match="the effects record"):
            verify_receipt(_forged(registry, receipt, effects__blocks=blocks,
                                   effects__quantity=100 if blocks[1]["start"] == 52 else 101),
                           verifier=registry.note_verifier)


def test_a_receipt_whose_blocks_overlap_is_refused(registry: Registry, world: World) -> None:
    """The holder signed 40 tCO2e: effects that retire serials 1-20 twice add up to 40 but
    retire 20 credits, and the receipt must not certify 40 (the other 20 stay sellable)."""
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    twice = [{"start": 1, "end": 20}, {"start": 1, "end": 20}]
    nested = [{"start": 1, "end": 30}, {"start": 11, "end": 20}]
    for blocks in (twice, nested):
        forged = _forged(registry, receipt, effects__blocks=blocks)
        with pytest.raises(RegistryError, match="the effects record"):
            checked = verify_receipt(forged, verifier=registry.note_verifier)
            pytest.fail(f"accepted {checked.quantity} tCO2e retired as {checked.blocks}")


@pytest.mark.parametrize("change", [{"effects": []}, {"instruction": "x"}])
def test_a_sealed_entry_of_the_wrong_shape_is_a_one_line_refusal(
    registry: Registry, world: World, tmp_path: Any, change: dict[str, Any]
) -> None:
    """A dishonest registry seals whatever it likes: a retirement entry whose effects or
    instruction are not objects is refused like any forgery (RegistryError; the CLI's one
    line), not an AttributeError/TypeError traceback."""
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    _refused_in_one_line(_forged(registry, receipt, **change), registry, tmp_path)


def test_a_sealed_key_registration_of_the_wrong_shape_is_a_one_line_refusal(
    registry: Registry, world: World, tmp_path: Any
) -> None:
    """A key registration entry whose key for the holder is not base64 (sealed by a dishonest
    registry) is refused like any forgery, not a binascii traceback."""
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    registered = entry_of(base64.b64decode(receipt["holder_key"]["envelope"]))
    keys = registered.payload["instruction"]["body"]["public_keys"]
    forged = _forged(registry, receipt, key_change={
        "instruction__body__public_keys": ["not a key!", *keys]})
    _refused_in_one_line(forged, registry, tmp_path)


def _refused_in_one_line(forged: RetirementReceipt, registry: Registry, tmp_path: Any) -> None:
    """``forged`` is refused: a RegistryError, and `registry verify-receipt`'s one line."""
    from tests.test_cli import run
    from tests.test_cli_errors import assert_one_line_error

    with pytest.raises(RegistryError):
        verify_receipt(forged, verifier=registry.note_verifier)
    (tmp_path / "receipt.json").write_text(forged.model_dump_json())
    r = run(["verify-receipt", "receipt.json", "--registry-key",
             registry.note_verifier.verifier_string()], tmp_path)
    assert_one_line_error(r)


@pytest.mark.parametrize("which", ["neither", "both"])
def test_a_retirement_signed_with_neither_or_both_quantity_and_range_is_refused(
    registry: Registry, world: World, which: str
) -> None:
    """The registry carries out only a retirement of a quantity or of a range, never neither
    or both (the replay refuses them too). A holder may have signed one all the same (the
    registry refused it): sealed into an entry, with neither it would let the receipt certify
    whatever the effects say was retired, as if the holder had asked for it."""
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    honest = entry_of(base64.b64decode(receipt["retirement"]["envelope"]))
    body = dict(honest.payload["instruction"]["body"])
    if which == "neither":
        del body["quantity"]
    else:
        body["range"] = {"start": 1, "end": 40}
    signed = sign_instruction(world.keys["jp-buyer"], registry=world.origin, actor="jp-buyer",
                              type="credits.retire", body=body, now=parse_time(honest.time))
    forged = _forged(registry, receipt, instruction=signed["instruction"],
                     signature=signed["signature"], effects__quantity=4000,
                     effects__blocks=[{"start": 1, "end": 4000}])
    with pytest.raises(RegistryError, match="exactly one of quantity or range"):
        checked = verify_receipt(forged, verifier=registry.note_verifier)
        pytest.fail(f"accepted {checked.quantity} tCO2e")


@pytest.mark.parametrize("change", [
    {"effects__quantity": "40"},
    {"effects__blocks": [{"start": True, "end": 40}]},
    {"effects__blocks": [{"start": 1, "end": "40"}]},
])
def test_effects_that_are_not_integers_where_the_ledger_has_integers_are_malformed(
    registry: Registry, world: World, change: dict[str, Any]
) -> None:
    """The ledger's quantities and serials are JSON integers: a text "40" or a true where a
    serial is due is not what the registry records, and reading it as one (Python's int())
    would certify a retirement the entry does not state."""
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    forged = _forged(registry, receipt, **change)
    with pytest.raises(RegistryError, match="malformed effects"):
        checked = verify_receipt(forged, verifier=registry.note_verifier)
        pytest.fail(f"accepted {checked.quantity} tCO2e")


def test_verify_receipt_prints_what_the_registry_sealed_as_it_can_be_read(
    registry: Registry, world: World, tmp_path: Any
) -> None:
    """The retirement id, the holder and the batch come from entries a dishonest registry
    seals as it likes (the batch, from what the holder signed): a line break or a terminal
    escape in one is shown escaped, as the beneficiary and reason are, so it cannot print
    lines of its own or rewrite the ones above it."""
    from tests.test_cli import run

    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    honest = entry_of(base64.b64decode(receipt["retirement"]["envelope"]))
    fake = "RET-1\n\x1b[2KOK: retirement RET-1 of 4000 tCO2e"
    body = {**honest.payload["instruction"]["body"], "batch": "B\x1b[1A\x1b[2K"}
    signed = sign_instruction(world.keys["jp-buyer"], registry=world.origin, actor="jp-buyer",
                              type="credits.retire", body=body, now=parse_time(honest.time))
    forged = _forged(registry, receipt, effects__retirement_id=fake, effects__batch=body["batch"],
                     instruction=signed["instruction"], signature=signed["signature"])
    forged = forged.model_copy(update={"retirement_id": fake})
    verify_receipt(forged, verifier=registry.note_verifier)  # sealed, so it verifies
    (tmp_path / "receipt.json").write_text(forged.model_dump_json())
    r = run(["verify-receipt", "receipt.json", "--registry-key",
             registry.note_verifier.verifier_string()], tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2 and "\x1b" not in r.stdout, r.stdout
    assert repr(fake) in r.stdout and repr(body["batch"]) in r.stdout
