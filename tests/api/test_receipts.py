"""A beneficiary's retirement receipt: fetched over HTTP, checked offline with the pinned key."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
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


def _resealed(
    registry: Registry, envelope: str, change: dict[str, Any], signer: SigningKey | None = None
) -> bytes:
    """The entry in ``envelope`` with ``change`` made, sealed with the registry's own key (or
    ``signer``'s)."""
    old = entry_of(base64.b64decode(envelope))
    payload = json.loads(json.dumps(old.payload))
    for path, value in change.items():
        *parents, last = path.split("__")
        target = payload
        for name in parents:
            target = target[name]
        target[last] = value
    fields = {**old.to_json_value(), "payload": payload}
    for name in ("actor", "seq"):
        if name in change:
            fields[name] = change[name]
            del payload[name]
    return seal_entry(Entry(**fields), signer or registry.signer)


def _forged(
    registry: Registry,
    receipt: dict[str, Any],
    key_change: dict[str, Any] | None = None,
    account_change: dict[str, Any] | None = None,
    **change: Any,
) -> RetirementReceipt:
    """``receipt`` as a dishonest registry could rebuild it: its retirement entry (and with
    ``key_change`` its key registration entry, with ``account_change`` the entry that opened
    its account) changed and sealed with the registry's own key, in a tree and checkpoint the
    registry signs anew."""
    key_envelope = base64.b64decode(receipt["holder_key"]["envelope"])
    if key_change:
        key_envelope = _resealed(registry, receipt["holder_key"]["envelope"], key_change)
    account_envelope = base64.b64decode(receipt["account"]["envelope"])
    if account_change:
        account_envelope = _resealed(registry, receipt["account"]["envelope"], account_change)
    old = entry_of(base64.b64decode(receipt["retirement"]["envelope"]))
    forged = _resealed(registry, receipt["retirement"]["envelope"], change)
    key_seq, seq = receipt["holder_key"]["seq"], old.seq
    account_seq = entry_of(account_envelope).seq
    leaves = {account_seq: account_envelope, key_seq: key_envelope, seq: forged}
    tree = MemoryTree()
    for position in range(max(leaves) + 1):
        tree.append(leaf_hash(leaves.get(position, b"filler %d" % position)))
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
        "account": included(account_seq, account_envelope),
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
    assert len(r.stdout.splitlines()) == 3 and "\x1b" not in r.stdout, r.stdout
    assert repr(fake) in r.stdout and repr(body["batch"]) in r.stdout


def _cli_verify(receipt: dict[str, Any] | RetirementReceipt, registry: Registry,
                tmp_path: Any, *more: str) -> Any:
    from tests.test_cli import run

    text = (receipt.model_dump_json() if isinstance(receipt, RetirementReceipt)
            else json.dumps(receipt))
    (tmp_path / "receipt.json").write_text(text)
    return run(["verify-receipt", "receipt.json", "--registry-key",
                registry.note_verifier.verifier_string(), *more], tmp_path)


def test_a_receipt_shows_who_held_the_account_retired_from(
    registry: Registry, world: World, tmp_path: Any
) -> None:
    """The holder's signature shows the holder asked; the entry that opened the account shows
    the holder held it (a registry could carry out a retirement of an account the signer does
    not hold): account.open of JP-BUYER-1 for jp-buyer, before the retirement, in the same tree."""
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    assert receipt["version"] == 2
    checked = verify_receipt(
        RetirementReceipt.model_validate(receipt), verifier=registry.note_verifier
    )
    opened = checked.account_opened
    assert checked.account_holder == "jp-buyer" and opened is not None
    assert opened.kind == "account.open" and opened.seq < checked.entry.seq
    assert opened.payload["instruction"]["body"]["account_id"] == "JP-BUYER-1"
    r = _cli_verify(receipt, registry, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[2] == (
        f"   account: JP-BUYER-1 was opened for jp-buyer by entry {opened.seq} (account.open), "
        "before the retirement, in the same signed tree"
    ), r.stdout


def test_a_version_1_receipt_verifies_but_does_not_prove_the_account(
    registry: Registry, world: World, tmp_path: Any
) -> None:
    """A receipt from before version 2 holds no account entry: it still proves the retirement
    and the holder's signature, and says plainly that it does not prove who held the account.
    A version 2 receipt without one (a registry leaving it out) is refused."""
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    old = {k: v for k, v in receipt.items() if k != "account"} | {"version": 1}
    checked = verify_receipt(RetirementReceipt.model_validate(old),
                             verifier=registry.note_verifier)
    assert checked.quantity == 40 and checked.account_opened is None
    assert checked.account_holder is None
    # Unasked, the command does not take it as a whole proof: a registry could hand one out
    # to hide who held the account.
    r = _cli_verify(old, registry, tmp_path)
    assert r.returncode == 1 and r.stdout == "", r.stdout
    assert r.stderr.startswith("error[invalid_request]: receipt.json is a version 1 receipt: "
                               "it does not show that jp-buyer held JP-BUYER-1"), r.stderr
    r = _cli_verify(old, registry, tmp_path, "--accept-version-1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[2] == (
        "   account: NOT proven: a version 1 receipt holds no entry opening JP-BUYER-1, so it "
        "does not show that jp-buyer held it"
    ), r.stdout
    stripped = {**old, "version": 2}
    with pytest.raises(RegistryError, match="a version 2 receipt holds the entry that opened"):
        verify_receipt(RetirementReceipt.model_validate(stripped),
                       verifier=registry.note_verifier)
    with pytest.raises(RegistryError, match="version 1 receipt holds no `account`; this one has"):
        verify_receipt(RetirementReceipt.model_validate({**receipt, "version": 1}),
                       verifier=registry.note_verifier)
    assert _cli_verify(stripped, registry, tmp_path).returncode == 1


def _genuine(world: World, seq: int, tree_size: int) -> dict[str, Any]:
    """Entry ``seq`` as the registry serves it, with its proof in ``tree_size``."""
    entry = world.http.get(f"/v1/entries/{seq}")
    proof = world.http.get("/v1/proofs/inclusion", params={"index": seq, "tree_size": tree_size})
    return {"seq": seq, "envelope": entry["envelope"], "tree_size": tree_size,
            "proof": proof["proof"]}


def test_an_account_entry_that_does_not_show_the_signer_held_the_account_is_refused(
    registry: Registry, world: World, tmp_path: Any
) -> None:
    """A dishonest registry retires JP-BUYER-1's credits on a signature of someone who does not
    hold it: the receipt's account entry must open exactly the account retired from, for the
    party who signed, before the retirement, sealed by the registry and in the signed tree.
    Each of these is refused, by verify_receipt and by `registry verify-receipt` in one line."""
    from tests.test_cli_errors import assert_one_line_error

    retirement_id = _retire(world)
    world.submit("kh-water", "credits.retire", {
        "account": "KH-WATER-1", "batch": "KH-JCM-KH004-2024-00001", "quantity": 5,
        "beneficiary": "Other Co.", "purpose": "voluntary", "jurisdiction": "KH",
        "reason": "2025 offsetting"})
    other_retirement = world.http.get("/v1/retirements")["data"][-1]["id"]
    receipt = world.http.get(f"/v1/retirements/{retirement_id}/receipt")
    other = world.http.get(f"/v1/retirements/{other_retirement}/receipt")
    assert other["checkpoint"] == receipt["checkpoint"]  # the same signed tree
    honest = verify_receipt(RetirementReceipt.model_validate(receipt),
                            verifier=registry.note_verifier)
    seq, size = honest.entry.seq, honest.checkpoint.size
    opened = receipt["account"]
    flipped = bytearray(base64.b64decode(opened["envelope"]))
    flipped[len(flipped) // 2] ^= 1
    stranger = SigningKey.generate()
    genuine = {  # entries the registry did write, each included in the tree
        "another account's": (other["account"], "opens 'KH-WATER-1', not account JP-BUYER-1"),
        "the genesis entry": (_genuine(world, 0, size),
                              "opens 'RETIREMENT', 'CANCELLATION', not account JP-BUYER-1"),
        "the holder's key registration": (receipt["holder_key"], "which opens no account"),
        "the proof of another entry": ({**opened, "proof": receipt["holder_key"]["proof"]},
                                       "account entry: not included in the signed tree"),
        "a seq it is not at": ({**opened, "seq": opened["seq"] + 1,
                                "envelope": _genuine(world, opened["seq"] + 1, size)["envelope"]},
                               "account entry: not included in the signed tree"),
        "resealed, not in the tree": (
            {**opened, "envelope": base64.b64encode(_resealed(registry, opened["envelope"], {
                "instruction__body__name": "Renamed"})).decode()},
            "account entry: not included in the signed tree"),
        "a byte changed": ({**opened, "envelope": base64.b64encode(bytes(flipped)).decode()},
                           "account entry: "),
        "sealed by another key": (
            {**opened, "envelope": base64.b64encode(_resealed(
                registry, opened["envelope"], {}, signer=stranger)).decode()},
            "account entry: no signature by a trusted key"),
    }
    cases: dict[str, tuple[RetirementReceipt, str]] = {
        what: (RetirementReceipt.model_validate({**receipt, "account": item}), message)
        for what, (item, message) in genuine.items()
    }
    # Forgeries the registry seals and checkpoints anew (each holder signature still verifies).
    cases["another holder"] = (
        _forged(registry, receipt, account_change={"instruction__body__holder": "kh-water"}),
        "opened account JP-BUYER-1 for 'kh-water', not for 'jp-buyer', who signed the retirement")
    cases["opened after the retirement"] = (
        _forged(registry, receipt, account_change={"seq": seq + 1}),
        f"account entry {seq + 1} comes after the retirement \\(entry {seq}\\)")
    cases["effects opening another account"] = (
        _forged(registry, receipt, account_change={"effects__account_id": "JP-BUYER-2"}),
        "its effects open 'JP-BUYER-2', the instruction 'JP-BUYER-1'")
    for what, (forged, message) in cases.items():
        with pytest.raises(RegistryError, match=message):
            verify_receipt(forged, verifier=registry.note_verifier)
            pytest.fail(f"accepted an account entry: {what}")
        r = _cli_verify(forged, registry, tmp_path)
        assert_one_line_error(r)


def test_an_account_the_genesis_entry_opened_is_proven_by_it(
    registry: Registry, world: World
) -> None:
    """The genesis entry opens the accounts it lists (the registry's own, or in a ledger that
    did so a holding account): it shows the holder it names, and only that one."""
    receipt = world.http.get(f"/v1/retirements/{_retire(world)}/receipt")
    genesis = _genuine(world, 0, receipt["retirement"]["tree_size"])
    accounts = entry_of(base64.b64decode(genesis["envelope"])).payload["accounts"]
    for holder in ("jp-buyer", "kh-water"):
        listed = [*accounts, {"account_id": "JP-BUYER-1", "kind": "holding", "holder": holder,
                              "name": "Buyer"}]
        resealed = _resealed(registry, genesis["envelope"], {"accounts": listed})
        forged = _forged(registry, {**receipt, "account": {
            **genesis, "envelope": base64.b64encode(resealed).decode()}})
        if holder == "jp-buyer":
            checked = verify_receipt(forged, verifier=registry.note_verifier)
            assert checked.account_opened is not None
            assert checked.account_opened.kind == "registry.genesis"
            assert checked.account_holder == "jp-buyer"
        else:
            with pytest.raises(RegistryError, match="for 'kh-water', not for 'jp-buyer'"):
                verify_receipt(forged, verifier=registry.note_verifier)


def test_a_receipt_across_a_rotation_of_the_registry_key_verifies_with_either_key(
    registry: Registry, world: World, tmp_path: Path
) -> None:
    from registry.service.key_rotation import rotate_registry_key
    from tests.factories import append_notes

    retirement_id = _retire(world)
    rotated = rotate_registry_key(registry, new_key_file=tmp_path / "new.pem", passphrase=None)
    new = SigningKey.from_pem((tmp_path / "new.pem").read_bytes(), None)
    successor = Registry(engine=registry.engine, signer=new, origin=registry.origin)
    old_pin, new_pin = registry.note_verifier, successor.note_verifier

    # Taken at the rotation: its checkpoint is signed by the old key and co-signed by the new.
    at_rotation = RetirementReceipt.model_validate(
        world.http.get(f"/v1/retirements/{retirement_id}/receipt")
    )
    assert [k.seq for k in at_rotation.registry_keys] == [rotated.seq]
    # Taken later, under the new key alone: the retirement and the key registration were
    # signed by the old key, which the rotation in the receipt hands over from.
    append_notes(successor, 3)
    later = RetirementReceipt.model_validate(
        world.http.get(f"/v1/retirements/{retirement_id}/receipt")
    )
    assert later.retirement.tree_size == rotated.seq + 4
    for receipt in (at_rotation, later):
        for pin in (old_pin, new_pin):
            checked = verify_receipt(receipt, verifier=pin)
            assert checked.holder == "jp-buyer" and checked.quantity == 40

    # Without the rotation, nothing says the old key signed the retirement.
    with pytest.raises(RegistryError, match="no signature by a trusted key"):
        verify_receipt(later.model_copy(update={"registry_keys": []}), verifier=new_pin)
    # The old key alone vouches for nothing under the new key: it may have leaked, and a
    # tree it signed may hold anything before the rotation.
    text, signatures = at_rotation.checkpoint.split("\n\n")
    old_only = at_rotation.model_copy(
        update={"checkpoint": f"{text}\n\n{signatures.splitlines()[0]}\n"}
    )
    assert verify_receipt(old_only, verifier=old_pin).quantity == 40
    with pytest.raises(RegistryError, match="replaced before the pinned key"):
        verify_receipt(old_only, verifier=new_pin)
    # A rotation the old key did not sign hands over nothing.
    forged = json.loads(later.model_dump_json())
    envelope = json.loads(base64.b64decode(forged["registry_keys"][0]["envelope"]))
    envelope["signatures"] = envelope["signatures"][1:]
    forged["registry_keys"][0]["envelope"] = b64encode(canonical_bytes(envelope))
    with pytest.raises(RegistryError, match="signed by the key it replaces and by the new key"):
        verify_receipt(RetirementReceipt.model_validate(forged), verifier=new_pin)
