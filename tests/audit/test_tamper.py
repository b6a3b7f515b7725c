"""The tamper matrix: every way a bundle can lie is found, with the entry and a precise message.

Log-level tampering (bytes, keys, order, checkpoints) is found by the log audit. A registry that
re-signs its own log after forging an entry passes the log audit, and is caught by the replay.
All cases edit copies of one SQLite-built bundle: the checks are the same for any engine.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from registry.client import sign_instruction
from registry.ledger.canonical import canonical_bytes
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from registry.ledger.entry import Entry, format_time, parse_time, seal_entry
from registry.ledger.keys import SigningKey, b64encode
from registry.ledger.replay import Replay
from registry.ledger.verify_bundle import verify_bundle
from tests.audit.bundles import RawBundle, entry_of
from tests.audit.conftest import JCM_BATCH, REDD_BATCH, WATER_NEW_KEY, Exported
from tests.conftest import ADMIN, ORIGIN

FOREIGN = SigningKey.from_seed(b"F" * 32)
OLD_WATER_KEY = SigningKey.from_seed(bytes([3]) * 32)  # kh-water's first key, revoked
BUYER_KEY = SigningKey.from_seed(bytes([4]) * 32)
ADMIN_KEY = SigningKey.from_seed(b"A" * 32)


def failures(bundle: RawBundle, exported: Exported) -> list[tuple[int | None, str, str]]:
    """The failures found in ``bundle``: the same whether it is spelt as the registry writes
    it (the verifier's fast paths) or not (its careful parse)."""
    found = []
    for spaced in (False, True):
        report = verify_bundle(
            bundle.write(spaced=spaced), registry_key=exported.key, workers=1
        ).report
        assert not report.ok
        found.append([(f.seq, f.code, f.message) for f in report.failures])
    assert found[0] == found[1]
    return found[0]


def codes(found: list[tuple[int | None, str, str]]) -> set[tuple[int | None, str]]:
    return {(seq, code) for seq, code, _ in found}


def message(found: list[tuple[int | None, str, str]], seq: int | None, code: str) -> str:
    return next(m for s, c, m in found if (s, c) == (seq, code))


def forge(
    bundle: RawBundle,
    exported: Exported,
    position: int,
    *,
    kind: str,
    actor: str,
    key: SigningKey,
    body: dict[str, Any],
    effects: dict[str, Any],
    expires_in: timedelta = timedelta(hours=1),
    signed_as: str | None = None,
    signed_for: str | None = ORIGIN,
) -> None:
    """Insert at ``position`` an entry the registry signs with its own key, then re-chain the
    log and re-sign every checkpoint: a registry covering its tracks. ``signed_as`` is the
    instruction type the holder signed, when it is not the entry's kind; ``signed_for`` the
    registry it names (None: none)."""
    time = bundle.entry(position - 1).time
    signed = sign_instruction(
        key, registry=signed_for or ORIGIN, actor=actor, type=signed_as or kind, body=body,
        now=parse_time(time),
        valid_for=expires_in,
    )
    if signed_for is None:
        signed = _signed_without_registry(signed["instruction"], key)
    entry = Entry(
        v=1, seq=position, time=time, kind=kind, actor=actor,
        payload={**signed, "effects": effects}, prev="0" * 64,
    )
    bundle.insert(position, seal_entry(entry, exported.registry.signer))
    bundle.reseal(exported.registry.signer, start=position)
    bundle.resign(exported.registry.signer, ORIGIN)


def _signed_without_registry(instruction: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """``instruction`` as written before instructions named their registry, signed by ``key``."""
    legacy = {name: value for name, value in instruction.items() if name != "registry"}
    return {"instruction": legacy, "signature": b64encode(key.sign(canonical_bytes(legacy)))}


def _from_before_the_rule(bundle: RawBundle, exported: Exported, upgraded: int) -> None:
    """``bundle`` as a ledger begun before instructions named their registry: its genesis does
    not ask for it, and its instructions before ``upgraded`` name none (each signed again by
    its party's key); then it is sealed and checkpointed again by the registry."""
    world = exported.history.world
    keys = {k.public_key.key_id: k for k in (*world.keys.values(), OLD_WATER_KEY)}
    signer = exported.registry.signer
    for seq in range(upgraded):
        old = bundle.entry(seq)
        payload = old.payload
        if seq == 0:
            for rule in (
                "instructions_name_registry", "issuance_to_project_side",
                "status_changes_change", "max_active_keys", "plain_text",
                "methodology_of_partner_country",
            ):
                del payload[rule]
        else:
            instruction = payload["instruction"]
            payload.update(_signed_without_registry(instruction, keys[instruction["key_id"]]))
        bundle.envelopes[seq] = seal_entry(
            Entry(**{**old.to_json_value(), "payload": payload}), signer
        )
    bundle.reseal(signer)
    bundle.resign(signer, ORIGIN)


def test_the_untouched_bundle_passes(sqlite_bundle: Exported, tmp_path: Path) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    report = verify_bundle(bundle.write(), registry_key=sqlite_bundle.key, workers=1).report
    assert report.ok, report.render()
    assert report.summary["retired"] == 50 and report.summary["shortfall"] == 700


def test_a_byte_changed_in_any_envelope_is_found(sqlite_bundle: Exported, tmp_path: Path) -> None:
    original = sqlite_bundle.copy(tmp_path)
    size = len(original.envelopes)
    for seq in range(size):
        bundle = sqlite_bundle.copy(tmp_path)
        data = bytearray(bundle.envelopes[seq])
        data[len(data) // 2] ^= 0x01
        bundle.envelopes[seq] = bytes(data)
        found = failures(bundle, sqlite_bundle)
        first = next((s, c) for s, c, _ in found if s == seq)
        assert first[1] in {"bad_signature", "malformed", "unknown_key"}, found
        if seq + 1 < size:
            assert (seq + 1, "broken_chain") in codes(found)
        assert (seq + 1, "bad_checkpoint") in codes(found)


def test_a_quantity_changed_and_resigned_with_a_foreign_key(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    seq = sqlite_bundle.history.seq["transfer"]
    old = bundle.entry(seq)
    payload = old.payload
    payload["effects"]["quantity"] = 3000
    payload["instruction"]["body"]["quantity"] = 3000
    forged = Entry(**{**old.to_json_value(), "payload": payload})
    bundle.envelopes[seq] = seal_entry(forged, FOREIGN)
    found = failures(bundle, sqlite_bundle)
    assert (seq, "unknown_key") in codes(found)
    assert "no signature by a trusted key" in message(found, seq, "unknown_key")
    assert FOREIGN.public_key.key_id in message(found, seq, "unknown_key")
    assert (seq + 1, "broken_chain") in codes(found)
    # The holder never signed 3000: the replay says so too.
    assert (seq, "bad_signature") in codes(found)


def test_a_deleted_entry_is_found(sqlite_bundle: Exported, tmp_path: Path) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    del bundle.envelopes[20]
    found = failures(bundle, sqlite_bundle)
    assert message(found, 20, "broken_chain") == "entry at position 20 says seq 21"
    size = len(bundle.envelopes) + 1
    assert "the ledger holds only" in message(found, size, "bad_checkpoint")
    assert any("the header says the log holds" in m for _, _, m in found)


def test_two_swapped_entries_are_found(sqlite_bundle: Exported, tmp_path: Path) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    bundle.envelopes[17], bundle.envelopes[18] = bundle.envelopes[18], bundle.envelopes[17]
    found = failures(bundle, sqlite_bundle)
    assert message(found, 17, "broken_chain") == "entry at position 17 says seq 18"
    assert message(found, 18, "broken_chain") == "entry at position 18 says seq 17"
    assert (19, "broken_chain") in codes(found)  # 19's prev is the old 18's leaf


def test_a_checkpoint_from_a_different_tree_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    other_root = hashlib.sha256(b"another tree").digest()
    forged = sign_checkpoint(
        Checkpoint(origin=ORIGIN, size=10, root=other_root),
        name=ORIGIN, key=sqlite_bundle.registry.signer,
    )
    bundle.checkpoints[9] = (10, forged)
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(10, "bad_checkpoint")}
    assert message(found, 10, "bad_checkpoint").startswith(
        f"checkpoint for size 10 has root {other_root.hex()}, the entries give "
    )


def test_a_checkpoint_of_another_log_is_found(sqlite_bundle: Exported, tmp_path: Path) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    size, _ = bundle.checkpoints[4]
    other = sign_checkpoint(
        Checkpoint(origin="other.example/ledger", size=size, root=b"\x00" * 32),
        name="other.example/ledger", key=FOREIGN,
    )
    bundle.checkpoints[4] = (size, other)
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(size, "bad_checkpoint")}
    assert "no signature by the registry key" in message(found, size, "bad_checkpoint")


def test_entries_past_the_last_checkpoint_are_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """The registry signs a checkpoint with every transaction, so a whole ledger ends on one:
    entries no signed root covers are not the registry's ledger as it stood."""
    bundle = sqlite_bundle.copy(tmp_path)
    size = len(bundle.envelopes)
    assert bundle.checkpoints[-1][0] == size
    last_but_one = bundle.checkpoints[-2][0]
    del bundle.checkpoints[-1]
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(size, "bad_checkpoint")}
    assert message(found, size, "bad_checkpoint") == (
        f"no checkpoint signs the whole ledger: the last signs {last_but_one} of its "
        f"{size} entries"
    )
    bundle.checkpoints = []
    found = failures(bundle, sqlite_bundle)
    assert message(found, size, "bad_checkpoint") == (
        f"no checkpoint signs the ledger's {size} entries"
    )


def test_a_checkpoint_failure_is_reported_by_the_size_it_signs_not_as_an_entry(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """The last checkpoint signs size N, and no entry has seq N: an auditor told "seq N"
    would look for an entry that does not exist."""
    bundle = sqlite_bundle.copy(tmp_path)
    size = len(bundle.envelopes)
    last_but_one = bundle.checkpoints[-2][0]
    del bundle.checkpoints[-1]
    report = verify_bundle(bundle.write(), registry_key=sqlite_bundle.key, workers=1).report
    [failure] = report.failures
    assert str(failure) == (
        f"checkpoint of size {size}: no checkpoint signs the whole ledger: the last signs "
        f"{last_but_one} of its {size} entries [bad_checkpoint]"
    )
    assert failure.to_json_value() == {"tree_size": size, "code": "bad_checkpoint",
                                       "message": failure.message}


def test_a_registry_key_range_the_ledger_never_gave_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    (key,) = bundle.header["registry_keys"]
    key["valid_from_seq"], key["valid_until_seq"] = 2, 3
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(None, "bad_bundle")}
    assert message(found, None, "bad_bundle") == (
        f"the header says registry key {key['key_id']} signs entries 2 to 2; in the ledger "
        "it signs from entry 0 on, with no end"
    )


@pytest.mark.parametrize("pinned", ["note verifier", "raw key, another origin"])
def test_a_bundle_without_entries_is_not_a_ledger(
    sqlite_bundle: Exported, tmp_path: Path, pinned: str
) -> None:
    """A header alone needs no private key to write: only genesis binds a ledger to the pinned
    key (and, pinned by its raw key, to an origin), so a bundle without it fails."""
    bundle = sqlite_bundle.copy(tmp_path)
    bundle.envelopes, bundle.checkpoints, bundle.party_keys = [], [], []
    bundle.header["tree_size"] = 0
    key = sqlite_bundle.key
    if pinned != "note verifier":
        public = sqlite_bundle.registry.signer.public_key
        bundle.header["origin"] = "attacker.example/log"
        for line in bundle.header["registry_keys"]:
            line["note_verifier"] = NoteVerifier(
                name="attacker.example/log", key=public
            ).verifier_string()
        key = public.to_b64()
    for spaced in (False, True):
        report = verify_bundle(bundle.write(spaced=spaced), registry_key=key, workers=1).report
        assert not report.ok
        assert [(f.seq, f.code, f.message) for f in report.failures] == [
            (None, "no_genesis", "the ledger has no entries, so no genesis entry")
        ]


def test_a_transfer_without_a_valid_holder_signature(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """The registry itself changes what kh-water signed and re-signs the whole log."""
    bundle = sqlite_bundle.copy(tmp_path)
    seq = sqlite_bundle.history.seq["transfer"]
    old = bundle.entry(seq)
    payload = old.payload
    payload["instruction"]["body"]["quantity"] = 299
    payload["effects"]["quantity"] = 299
    payload["effects"]["blocks"] = [{"start": 1, "end": 299}]
    bundle.envelopes[seq] = seal_entry(
        Entry(**{**old.to_json_value(), "payload": payload}), sqlite_bundle.registry.signer
    )
    bundle.reseal(sqlite_bundle.registry.signer, start=seq)
    bundle.resign(sqlite_bundle.registry.signer, ORIGIN)
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(seq, "bad_signature")}, found
    assert message(found, seq, "bad_signature") == (
        f"credits.transfer: the signature of party kh-water (key "
        f"{OLD_WATER_KEY.public_key.key_id}) does not verify over its instruction"
    )


def test_a_retirement_of_retired_serials_forged_by_the_registry(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    position = sqlite_bundle.history.seq["retire"] + 1
    body = {
        "account": "JP-BUYER-1", "batch": JCM_BATCH, "range": {"start": 101, "end": 150},
        "beneficiary": "Example Co.", "purpose": "voluntary", "jurisdiction": "JP",
        "reason": "retired twice",
    }
    effects = {"retirement_id": f"RET-{position}", "batch": JCM_BATCH, "from": "JP-BUYER-1",
               "quantity": 50, "blocks": [{"start": 101, "end": 150}]}
    forge(bundle, sqlite_bundle, position, kind="credits.retire", actor="jp-buyer",
          key=BUYER_KEY, body=body, effects=effects)
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(position, "serials_not_held"), (position, "moved_retired_serials")}
    assert message(found, position, "serials_not_held").startswith(
        "credits.retire should have been refused: serials 101-150 are not all held: "
        "missing 101-150"
    )
    assert message(found, position, "moved_retired_serials") == (
        f"credits.retire moves serials 101-150 of {JCM_BATCH}, which are already retired "
        "(in RETIREMENT) and can never move again"
    )


def test_a_replayed_instruction_is_found(sqlite_bundle: Exported, tmp_path: Path) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    seq = sqlite_bundle.history.seq["transfer"]
    copy = bundle.entry(seq)
    end = len(bundle.envelopes)
    replayed = Entry(**{**copy.to_json_value(), "seq": end, "prev": "0" * 64,
                        "time": bundle.entry(end - 1).time})
    bundle.envelopes.append(seal_entry(replayed, sqlite_bundle.registry.signer))
    bundle.reseal(sqlite_bundle.registry.signer, start=end)
    bundle.resign(sqlite_bundle.registry.signer, ORIGIN)
    found = failures(bundle, sqlite_bundle)
    assert message(found, end, "nonce_reused").endswith(
        f"was already used at entry {seq}: a replayed instruction"
    )
    # ... and its serials 1-300 have since moved on: JP-BUYER-1 holds them, not KH-WATER-1.
    assert (end, "serials_not_held") in codes(found)


def test_a_revoked_key_and_an_expired_instruction_are_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    body = {"account": "KH-WATER-1", "batch": JCM_BATCH, "range": {"start": 600, "end": 609},
            "to_account": "JP-BUYER-1"}
    effects = {"batch": JCM_BATCH, "from": "KH-WATER-1", "to": "JP-BUYER-1", "quantity": 10,
               "blocks": [{"start": 600, "end": 609}]}
    forge(bundle, sqlite_bundle, end, kind="credits.transfer", actor="kh-water",
          key=OLD_WATER_KEY, body=body, effects=effects, expires_in=-timedelta(minutes=5))
    found = failures(bundle, sqlite_bundle)
    revoked = sqlite_bundle.history.seq["key_revoke"]
    assert codes(found) == {(end, "key_revoked"), (end, "instruction_expired")}
    assert message(found, end, "key_revoked") == (
        f"credits.transfer: key {OLD_WATER_KEY.public_key.key_id} of party kh-water was "
        f"revoked at entry {revoked}, before this one"
    )
    assert "before the entry's time" in message(found, end, "instruction_expired")


def test_issuing_without_verification_twice_and_beyond_redd_net(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    # 1. An issuance against KH004-MR1 again.
    forge(bundle, sqlite_bundle, end, kind="credits.issue", actor=ADMIN, key=ADMIN_KEY,
          body={"report_id": "KH004-MR1", "vintage": 2024,
                "allocations": [{"account": "KH-WATER-1", "quantity": 1000}]},
          effects={"batch": "KH-JCM-KH004-2024-00002", "quantity": 1000,
                   "blocks": [{"account": "KH-WATER-1", "start": 1, "end": 1000}]})
    # 2. More REDD+ credits than the report's net: the real issuance, with 100 tonnes more.
    redd = sqlite_bundle.history.seq["redd_issue"]
    old = bundle.entry(redd)
    payload = old.payload
    signed = sign_instruction(
        ADMIN_KEY, registry=ORIGIN, actor=ADMIN, type="credits.issue",
        now=parse_time(old.time),
        body={"report_id": "KH005-MR1", "vintage": 2024,
              "allocations": [{"account": "KH-GOV-1", "quantity": 7300}]},
    )
    payload["instruction"], payload["signature"] = signed["instruction"], signed["signature"]
    payload["effects"]["quantity"] = 9100
    payload["effects"]["blocks"] = [
        {"account": "KH-GOV-1", "start": 1, "end": 7300},
        {"account": "BUF-KH005-FU1", "start": 7301, "end": 9100},
    ]
    bundle.envelopes[redd] = seal_entry(
        Entry(**{**old.to_json_value(), "payload": payload}), sqlite_bundle.registry.signer
    )
    bundle.reseal(sqlite_bundle.registry.signer, start=redd)
    bundle.resign(sqlite_bundle.registry.signer, ORIGIN)
    found = failures(bundle, sqlite_bundle)
    assert message(found, end, "conflict") == (
        "credits.issue should have been refused: report KH004-MR1 has already been issued "
        "against"
    )
    assert message(found, end, "report_issued_twice").startswith(
        "credits.issue creates batch KH-JCM-KH004-2024-00002 from report KH004-MR1, which is "
        "issued"
    )
    assert message(found, redd, "invalid_request") == (
        "credits.issue should have been refused: allocations sum to 7300 tCO2e but 7200 must "
        "be allocated"
    )
    assert message(found, redd, "redd_over_issuance").startswith(
        "credits.issue issues 9100 tCO2e from REDD+ report KH005-MR1, more than the 9000 net"
    )


def test_an_issuance_from_an_unverified_report(sqlite_bundle: Exported, tmp_path: Path) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    water = sqlite_bundle.history.world.keys["kh-water"]
    digest = hashlib.sha256(b"MR2").hexdigest()
    forge(bundle, sqlite_bundle, end, kind="report.submit", actor="kh-water", key=water,
          body={"report_id": "KH004-MR2", "project_id": "KH004", "period_start": "2025-01-01",
                "period_end": "2025-06-30", "reductions": 100, "document_sha256": digest},
          effects={"report_id": "KH004-MR2", "status": "submitted"})
    forge(bundle, sqlite_bundle, end + 1, kind="credits.issue", actor=ADMIN, key=ADMIN_KEY,
          body={"report_id": "KH004-MR2", "vintage": 2025,
                "allocations": [{"account": "KH-WATER-1", "quantity": 100}]},
          effects={"batch": "KH-JCM-KH004-2025-00001", "quantity": 100,
                   "blocks": [{"account": "KH-WATER-1", "start": 1, "end": 100}]})
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(end + 1, "invalid_state"), (end + 1, "issued_without_verification")}
    assert message(found, end + 1, "invalid_state") == (
        "credits.issue should have been refused: report KH004-MR2 is submitted; only a "
        "verified report issues"
    )


def _forge_issuance_to_a_buyer(bundle: RawBundle, exported: Exported, end: int, *,
                               signed_for: str | None = ORIGIN) -> None:
    """At ``end``, a report of KH004 submitted and verified, then issued to a buyer's account."""
    keys = exported.history.world.keys
    digest = hashlib.sha256(b"MR2").hexdigest()
    forge(bundle, exported, end, kind="report.submit", actor="kh-water",
          key=keys["kh-water"], signed_for=signed_for,
          body={"report_id": "KH004-MR2", "project_id": "KH004", "period_start": "2025-01-01",
                "period_end": "2025-06-30", "reductions": 100, "document_sha256": digest},
          effects={"report_id": "KH004-MR2", "status": "submitted"})
    forge(bundle, exported, end + 1, kind="report.verify", actor="lrqa", key=keys["lrqa"],
          signed_for=signed_for,
          body={"report_id": "KH004-MR2", "verified_reductions": 100,
                "statement_sha256": digest},
          effects={"report_id": "KH004-MR2", "status": "verified", "verified_reductions": 100})
    forge(bundle, exported, end + 2, kind="credits.issue", actor=ADMIN, key=ADMIN_KEY,
          signed_for=signed_for,
          body={"report_id": "KH004-MR2", "vintage": 2025,
                "allocations": [{"account": "JP-BUYER-1", "quantity": 100}]},
          effects={"batch": "KH-JCM-KH004-2025-00001", "quantity": 100,
                   "blocks": [{"account": "JP-BUYER-1", "start": 1, "end": 100}]})


def test_an_issuance_to_a_party_outside_the_project(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    _forge_issuance_to_a_buyer(bundle, sqlite_bundle, end)
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(end + 2, "invalid_request")}
    assert message(found, end + 2, "invalid_request").startswith(
        "credits.issue should have been refused: account JP-BUYER-1 is held by jp-buyer, who is "
        "neither a participant of project KH004 nor a government"
    )


def test_a_ledger_from_before_the_allocation_rule_keeps_its_issuances(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    # The rule is new: a ledger begun before it keeps the issuances it made then, whether it
    # was begun before instructions named their registry or after.
    bundle = sqlite_bundle.copy(tmp_path)
    _from_before_the_rule(bundle, sqlite_bundle, len(bundle.envelopes))
    _forge_issuance_to_a_buyer(bundle, sqlite_bundle, len(bundle.envelopes), signed_for=None)
    assert verify_bundle(bundle.write(), registry_key=sqlite_bundle.key, workers=1).report.ok

    bundle = sqlite_bundle.copy(tmp_path)
    genesis = bundle.entry(0)
    payload = genesis.payload
    del payload["issuance_to_project_side"]
    signer = sqlite_bundle.registry.signer
    bundle.envelopes[0] = seal_entry(
        Entry(**{**genesis.to_json_value(), "payload": payload}), signer
    )
    bundle.reseal(signer)
    bundle.resign(signer, ORIGIN)
    _forge_issuance_to_a_buyer(bundle, sqlite_bundle, len(bundle.envelopes))
    assert verify_bundle(bundle.write(), registry_key=sqlite_bundle.key, workers=1).report.ok


@pytest.mark.parametrize("field", ["valid_until_seq", "party_id"])
def test_a_party_key_line_that_disagrees_with_the_ledger(
    sqlite_bundle: Exported, tmp_path: Path, field: str
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    line = next(k for k in bundle.party_keys if k["valid_until_seq"] is not None)
    line[field] = None if field == "valid_until_seq" else "jp-buyer"
    found = failures(bundle, sqlite_bundle)
    assert len(found) == 1 and found[0][1] == "bad_bundle"
    assert f"key {line['key_id']} is listed as (party, key, from, until)" in found[0][2]


def test_a_wrong_pinned_key_fails_everything_it_should(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    report = verify_bundle(
        bundle.write(), registry_key=FOREIGN.public_key.to_b64(), workers=1, limit_per_code=10
    ).report
    # The bundle is a whole ledger under its own key, which is not the auditor's: that alone
    # fails it.
    key_id = sqlite_bundle.registry.signer.public_key.key_id
    assert [(f.seq, f.code, f.message) for f in report.failures] == [(
        0, "unknown_key",
        f"the pinned key {FOREIGN.public_key.key_id} is not a registry key of this ledger "
        f"(its keys: {key_id})",
    )]
    assert not report.ok
    # With a header that lists no key, no entry or checkpoint is signed by a key the auditor
    # was given. A flood of one failure is counted, not listed, and still fails the report.
    bundle.header["registry_keys"] = []
    report = verify_bundle(
        bundle.write(), registry_key=FOREIGN.public_key.to_b64(), workers=1, limit_per_code=10
    ).report
    found = {(f.seq, f.code) for f in report.failures}
    assert (0, "unknown_key") in found and (5, "unknown_key") in found
    assert (1, "bad_checkpoint") in found
    assert report.log.omitted["unknown_key"] > 0 and report.log.omitted["bad_checkpoint"] > 0
    assert len([f for f in report.failures if f.code == "unknown_key"]) == 10
    assert "more [unknown_key] failures not listed" in report.render()


@pytest.mark.parametrize(
    ("reason", "refusal", "before_the_rule"),
    [
        ("a\x00b", "NUL characters are not allowed", True),
        ("pay \u202eUSD 001", "control and text-direction characters (here U+202E) are not "
         "allowed in public text", False),
        ("red \x1b[31m", "control and text-direction characters (here U+001B) are not allowed "
         "in public text", False),
        (" \u3000 ", "text may not be blank", False),
    ],
)
def test_an_instruction_the_service_would_refuse_as_input(
    sqlite_bundle: Exported, tmp_path: Path, reason: str, refusal: str, before_the_rule: bool
) -> None:
    """Text the service refuses is reported; a NUL in any ledger, text that is not plain in a
    ledger begun under that rule (its genesis says ``plain_text``) and not in one before."""
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    forge(bundle, sqlite_bundle, end, kind="project.status", actor=ADMIN, key=ADMIN_KEY,
          body={"project_id": "KH004", "status": "suspended", "reason": reason},
          effects={"project_id": "KH004", "from": "registered", "to": "suspended"})
    found = failures(bundle, sqlite_bundle)
    assert [(s, c, m) for s, c, m in found] == [(
        end, "invalid_request",
        f"project.status should have been refused: $.instruction.body.reason: {refusal}",
    )]
    replay = Replay(registry_key=sqlite_bundle.registry.signer.public_key)
    entries = [entry_of(e) for e in bundle.envelopes]
    replay.apply(entries[0])
    replay.state.plain_text = False  # as a ledger begun before the rule
    for entry in entries[1:]:
        replay.apply(entry)
    assert bool(replay.report.failures) == before_the_rule


@pytest.mark.parametrize("before_the_rule", [False, True])
@pytest.mark.parametrize(
    ("country", "methodology", "refusal"),
    [
        ("KH", "ID_AM001", "methodology ID_AM001 is approved for partner country ID, and this "
         "project's partner country is KH"),
        ("ZZ", "ZZ_AM001", "partner country 'ZZ' is not an ISO 3166-1 alpha-2 country code"),
    ],
)
def test_a_project_registered_under_another_countrys_methodology(
    sqlite_bundle: Exported, tmp_path: Path, country: str, methodology: str, refusal: str,
    before_the_rule: bool,
) -> None:
    """A registration the service refuses for its partner country or methodology is reported
    in a ledger begun under that rule (its genesis says ``methodology_of_partner_country``),
    and not in one begun before it."""
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    body = {"project_id": "KH099", "title": "Forged registration", "partner_country": country,
            "methodology": methodology, "sector": "Energy efficiency", "programme": "JCM",
            "participants": ["kh-water"], "third_party_entity": "lrqa",
            "crediting_period_start": "2024-01-01", "crediting_period_end": "2030-12-31"}
    forge(bundle, sqlite_bundle, end, kind="project.register", actor=ADMIN, key=ADMIN_KEY,
          body=body, effects={"project_id": "KH099", "status": "registered"})
    replay = Replay(registry_key=sqlite_bundle.registry.signer.public_key)
    entries = [entry_of(e) for e in bundle.envelopes]
    replay.apply(entries[0])
    replay.state.methodology_of_partner_country = not before_the_rule
    for entry in entries[1:]:
        replay.apply(entry)
    found = [(f.seq, f.code, f.message) for f in replay.report.failures]
    if before_the_rule:
        assert found == []
    else:
        assert [(s, c) for s, c, _ in found] == [(end, "invalid_request")]
        assert found[0][2].startswith(f"project.register should have been refused: {refusal}")
    if not before_the_rule:  # the whole verifier, as an auditor runs it
        assert (end, "invalid_request") in codes(failures(bundle, sqlite_bundle))


def test_a_movement_naming_a_serial_twice_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """Effects that list serial 6 in two blocks (and count it twice) are a duplicate serial,
    whatever else is wrong with them."""
    bundle = sqlite_bundle.copy(tmp_path)
    position = sqlite_bundle.history.seq["retire"] + 1
    body = {"account": "JP-BUYER-1", "batch": JCM_BATCH, "range": {"start": 1, "end": 10},
            "to_account": "KH-GOV-1"}
    effects = {"batch": JCM_BATCH, "from": "JP-BUYER-1", "to": "KH-GOV-1", "quantity": 11,
               "blocks": [{"start": 1, "end": 6}, {"start": 6, "end": 10}]}
    forge(bundle, sqlite_bundle, position, kind="credits.transfer", actor="jp-buyer",
          key=BUYER_KEY, body=body, effects=effects)
    found = failures(bundle, sqlite_bundle)
    assert (position, "duplicate_serial") in codes(found), found
    assert message(found, position, "duplicate_serial") == (
        f"credits.transfer names serials 6-6 of {JCM_BATCH} twice"
    )


# --- the bundle's index lines: header, entry and checkpoint lines, party keys -----------------


def test_a_header_key_id_that_is_not_the_hash_of_its_key_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    (key,) = bundle.header["registry_keys"]
    real, key["key_id"] = key["key_id"], "0" * 64
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(None, "bad_bundle")}
    assert message(found, None, "bad_bundle") == (
        f"header registry key {'0' * 64} is not the SHA-256 of its public key ({real})"
    )


def test_a_header_that_does_not_list_the_pinned_key_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    bundle.header["registry_keys"] = []
    found = failures(bundle, sqlite_bundle)
    key_id = sqlite_bundle.registry.signer.public_key.key_id
    assert found == [(
        None, "bad_bundle",
        f"the header does not list registry key {key_id}, which the ledger establishes "
        "from entry 0",
    )]


def test_an_entry_line_that_names_another_seq_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """Entry 5 in its right place, its line saying seq 6: the line lies about the entry."""
    bundle = sqlite_bundle.copy(tmp_path)
    for spaced in (False, True):
        path = bundle.write(spaced=spaced)
        lines = path.read_text("utf-8").splitlines(keepends=True)
        line = json.loads(lines[6])
        assert line["type"] == "entry" and line["seq"] == 5
        line["seq"] = 6
        lines[6] = json.dumps(line, separators=None if spaced else (",", ":")) + "\n"
        path.write_text("".join(lines), "utf-8")
        report = verify_bundle(path, registry_key=sqlite_bundle.key, workers=1).report
        assert [(f.seq, f.code, f.message) for f in report.failures] == [
            (5, "bad_bundle", "line 7 says seq 6, but it is entry line 5")
        ]


def test_a_checkpoint_line_that_states_another_size_than_its_note_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    size, note = bundle.checkpoints[9]
    assert size == 10
    bundle.checkpoints[9] = (9, note)
    line = 2 + len(bundle.envelopes) + 9
    found = failures(bundle, sqlite_bundle)
    assert found == [
        (9, "bad_bundle", f"checkpoint line {line} says size 9, but its note signs size 10")
    ]


def test_a_party_key_the_bundle_leaves_out_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    line = next(k for k in bundle.party_keys if k["valid_until_seq"] is not None)
    bundle.party_keys.remove(line)
    found = failures(bundle, sqlite_bundle)
    assert found == [(
        None, "bad_bundle",
        f"key {line['key_id']} of party kh-water (added at entry {line['valid_from_seq']}) "
        "is missing from the bundle's party keys",
    )]


# --- the chain and the checkpoints --------------------------------------------------------------


def test_an_entry_backdated_before_the_one_before_it_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """A registry that re-signs its log with one entry backdated: time runs backwards."""
    bundle = sqlite_bundle.copy(tmp_path)
    before = bundle.entry(19).time
    old = bundle.entry(20)
    backdated = format_time(parse_time(before) - timedelta(microseconds=1))
    bundle.envelopes[20] = seal_entry(
        Entry(**{**old.to_json_value(), "time": backdated}), sqlite_bundle.registry.signer
    )
    bundle.reseal(sqlite_bundle.registry.signer, start=20)
    bundle.resign(sqlite_bundle.registry.signer, ORIGIN)
    found = failures(bundle, sqlite_bundle)
    assert found == [(
        20, "broken_chain",
        f"entry time {backdated} is earlier than the previous entry's {before}: time runs "
        "backwards",
    )]


def _signed_checkpoint(exported: Exported, size: int, root: bytes) -> str:
    return sign_checkpoint(
        Checkpoint(origin=ORIGIN, size=size, root=root), name=ORIGIN, key=exported.registry.signer
    )


def test_two_signed_checkpoints_of_one_size_are_a_fork(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    assert bundle.checkpoints[9][0] == 10
    other = _signed_checkpoint(sqlite_bundle, 10, hashlib.sha256(b"another tree").digest())
    bundle.checkpoints.insert(10, (10, other))
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(10, "fork_detected"), (10, "bad_checkpoint")}
    assert message(found, 10, "fork_detected") == (
        "two checkpoints for size 10 with different roots: a fork"
    )


def test_a_checkpoint_after_a_larger_one_is_found(sqlite_bundle: Exported, tmp_path: Path) -> None:
    """Its root can no longer be recomputed: it is refused, not skipped unchecked."""
    bundle = sqlite_bundle.copy(tmp_path)
    bundle.checkpoints[9], bundle.checkpoints[10] = bundle.checkpoints[10], bundle.checkpoints[9]
    assert [s for s, _ in bundle.checkpoints[9:11]] == [11, 10]
    found = failures(bundle, sqlite_bundle)
    assert found == [(
        10, "bad_checkpoint",
        "checkpoint for size 10 comes after the tree reached size 11; checkpoints must be in "
        "increasing size order",
    )]


def test_a_checkpoint_of_size_zero_with_another_root_than_the_empty_trees_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    root = hashlib.sha256(b"not empty").digest()
    bundle.checkpoints.insert(0, (0, _signed_checkpoint(sqlite_bundle, 0, root)))
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(0, "bad_checkpoint")}
    assert message(found, 0, "bad_checkpoint") == (
        f"checkpoint for size 0 has root {root.hex()}, the entries give "
        f"{hashlib.sha256(b'').hexdigest()}"
    )


# --- authority and rules the replay re-checks ---------------------------------------------------


def _water_transfer(start: int, end: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Body and effects of kh-water moving serials ``start``-``end`` to JP-BUYER-1."""
    body = {"account": "KH-WATER-1", "batch": JCM_BATCH, "range": {"start": start, "end": end},
            "to_account": "JP-BUYER-1"}
    effects = {"batch": JCM_BATCH, "from": "KH-WATER-1", "to": "JP-BUYER-1",
               "quantity": end - start + 1, "blocks": [{"start": start, "end": end}]}
    return body, effects


def test_an_instruction_valid_too_long_or_expired_at_its_entry_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """Seven days ahead is the most an instruction may run; one that expires at the very time
    of its entry has expired."""
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    for n, valid_for in enumerate(
        [timedelta(days=7), timedelta(days=7, seconds=1), timedelta(0)]
    ):
        body, effects = _water_transfer(600 + 10 * n, 609 + 10 * n)
        forge(bundle, sqlite_bundle, end + n, kind="credits.transfer", actor="kh-water",
              key=WATER_NEW_KEY, body=body, effects=effects, expires_in=valid_for)
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(end + 1, "instruction_expired"), (end + 2, "instruction_expired")}
    assert "is more than 7 days after the entry's time" in message(
        found, end + 1, "instruction_expired"
    )
    assert "before the entry's time" in message(found, end + 2, "instruction_expired")


def test_a_movement_the_signer_does_not_hold_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """The administrator signs away kh-water's credits: the registry's own party is no holder."""
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    body, effects = _water_transfer(600, 609)
    forge(bundle, sqlite_bundle, end, kind="credits.transfer", actor=ADMIN, key=ADMIN_KEY,
          body=body, effects=effects)
    found = failures(bundle, sqlite_bundle)
    assert found == [(
        end, "forbidden",
        f"credits.transfer: account KH-WATER-1 is held by kh-water, not {ADMIN}, who signed "
        "the instruction",
    )]


def test_a_transfer_out_of_a_buffer_pool_is_found(sqlite_bundle: Exported, tmp_path: Path) -> None:
    """Only a cancellation (or a reversal) takes credits out of a buffer pool."""
    bundle = sqlite_bundle.copy(tmp_path)
    position = sqlite_bundle.history.seq["redd_issue"] + 1
    forge(bundle, sqlite_bundle, position, kind="credits.transfer", actor=ADMIN, key=ADMIN_KEY,
          body={"account": "BUF-KH005-FU1", "batch": REDD_BATCH,
                "range": {"start": 7201, "end": 7300}, "to_account": "KH-GOV-1"},
          effects={"batch": REDD_BATCH, "from": "BUF-KH005-FU1", "to": "KH-GOV-1",
                   "quantity": 100, "blocks": [{"start": 7201, "end": 7300}]})
    found = failures(bundle, sqlite_bundle)
    assert message(found, position, "invalid_request") == (
        "credits.transfer should have been refused: credits in buffer account BUF-KH005-FU1 "
        "cannot move by credits.transfer"
    )


def test_a_reversal_that_cancels_credits_outside_the_buffer_pool_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """A reversal cancels buffer credits; one that cancels KH-GOV-1's is refused, not applied."""
    bundle = sqlite_bundle.copy(tmp_path)
    position = sqlite_bundle.history.seq["redd_issue"] + 1
    forge(bundle, sqlite_bundle, position, kind="redd.reversal", actor=ADMIN, key=ADMIN_KEY,
          body={"unit_id": "KH005-FU1", "lost": 100,
                "document_sha256": hashlib.sha256(b"fire-0").hexdigest(), "reason": "fire"},
          effects={"unit_id": "KH005-FU1", "lost": 100, "pool_before": 1800, "cancelled": 100,
                   "shortfall": 0, "blocks": [{"batch": REDD_BATCH, "start": 1, "end": 100}]})
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(position, "effects_mismatch"), (position, "serials_not_held")}
    assert message(found, position, "serials_not_held") == (
        f"redd.reversal moves serials 1-100 of {REDD_BATCH} from BUF-KH005-FU1, but KH-GOV-1 "
        "holds them: BUF-KH005-FU1's holding would go negative"
    )


def test_a_second_genesis_is_found(sqlite_bundle: Exported, tmp_path: Path) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    again = Entry(**{**bundle.entry(0).to_json_value(), "seq": end, "prev": "0" * 64,
                     "time": bundle.entry(end - 1).time})
    bundle.envelopes.append(seal_entry(again, sqlite_bundle.registry.signer))
    bundle.reseal(sqlite_bundle.registry.signer, start=end)
    bundle.resign(sqlite_bundle.registry.signer, ORIGIN)
    found = failures(bundle, sqlite_bundle)
    assert found == [(end, "second_genesis", "a second genesis entry; only entry 0 is one")]


def test_an_instruction_recorded_as_another_kind_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """kh-water signed a body under the type credits.cancel; the registry records a transfer."""
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    body, effects = _water_transfer(600, 609)
    forge(bundle, sqlite_bundle, end, kind="credits.transfer", actor="kh-water",
          key=WATER_NEW_KEY, body=body, effects=effects, signed_as="credits.cancel")
    found = failures(bundle, sqlite_bundle)
    assert found == [(
        end, "kind_mismatch",
        "entry kind is credits.transfer, but the signed instruction is a credits.cancel",
    )]


def test_an_entry_naming_another_actor_than_its_signer_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    seq = sqlite_bundle.history.seq["transfer"]
    old = bundle.entry(seq)
    bundle.envelopes[seq] = seal_entry(
        Entry(**{**old.to_json_value(), "actor": "jp-buyer"}), sqlite_bundle.registry.signer
    )
    bundle.reseal(sqlite_bundle.registry.signer, start=seq)
    bundle.resign(sqlite_bundle.registry.signer, ORIGIN)
    found = failures(bundle, sqlite_bundle)
    assert found == [(
        seq, "actor_mismatch",
        "entry actor is jp-buyer, but the instruction is signed as kh-water",
    )]


def _water_transfer_signed_for(
    bundle: RawBundle, exported: Exported, registry: str | None
) -> int:
    """Append a transfer kh-water signed (serials 600-609) naming ``registry``; its seq."""
    end = len(bundle.envelopes)
    body, effects = _water_transfer(600, 609)
    forge(bundle, exported, end, kind="credits.transfer", actor="kh-water",
          key=WATER_NEW_KEY, body=body, effects=effects, signed_for=registry)
    return end


def test_an_instruction_signed_for_another_registry_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """kh-water signed a transfer for another registry, where it uses the same key; this
    registry records it as its own. Everything else about it holds."""
    bundle = sqlite_bundle.copy(tmp_path)
    end = _water_transfer_signed_for(bundle, sqlite_bundle, "jp.carbon-registry.example/ledger")
    assert failures(bundle, sqlite_bundle) == [(
        end, "wrong_registry",
        "credits.transfer: the instruction is for registry 'jp.carbon-registry.example/ledger', "
        f"this ledger is {ORIGIN!r}",
    )]


def test_an_instruction_naming_no_registry_is_found_where_genesis_requires_one(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    end = _water_transfer_signed_for(bundle, sqlite_bundle, None)
    assert failures(bundle, sqlite_bundle) == [(
        end, "wrong_registry",
        "credits.transfer: the instruction names no registry; every instruction of this "
        f"ledger must name {ORIGIN!r} (its genesis says so)",
    )]


def test_a_ledger_from_before_instructions_named_their_registry_still_verifies(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """A ledger written before the rule: its genesis does not ask for it, and no instruction
    names a registry. It verifies; one instruction naming another registry is still found."""
    bundle = sqlite_bundle.copy(tmp_path)
    _from_before_the_rule(bundle, sqlite_bundle, len(bundle.envelopes))
    assert verify_bundle(bundle.write(), registry_key=sqlite_bundle.key, workers=1).report.ok
    _water_transfer_signed_for(bundle, sqlite_bundle, "jp.example/ledger")
    assert [code for _, code, _ in failures(bundle, sqlite_bundle)] == ["wrong_registry"]


def test_an_instruction_naming_no_registry_is_found_once_the_ledger_named_it(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """A ledger begun before the rule, whose registry then took it up: it verifies, its
    instructions naming no registry up to a point and this one after it. One naming none
    after that point is what the party signed for another registry of the old kind, with the
    same key: the registry of today refuses it, so it cannot be this registry's."""
    bundle = sqlite_bundle.copy(tmp_path)
    upgraded = len(bundle.envelopes) // 2
    _from_before_the_rule(bundle, sqlite_bundle, upgraded)
    assert verify_bundle(bundle.write(), registry_key=sqlite_bundle.key, workers=1).report.ok
    end = _water_transfer_signed_for(bundle, sqlite_bundle, None)
    assert failures(bundle, sqlite_bundle) == [(
        end, "wrong_registry",
        "credits.transfer: the instruction names no registry; the instructions of this ledger "
        f"name {ORIGIN!r} since entry {upgraded}",
    )]


def _square(side: float) -> str:
    """A square boundary of ``side`` degrees at 107 E, 12 N, far from every other unit."""
    corners = [[107.0, 12.0], [107.0 + side, 12.0], [107.0 + side, 12.0 + side],
               [107.0, 12.0 + side], [107.0, 12.0]]
    return json.dumps({"type": "Polygon", "coordinates": [corners]})


def _forge_unit(bundle: RawBundle, exported: Exported, position: int, *, side: float,
                area_ha: int, signed_for: str | None = ORIGIN) -> None:
    forge(bundle, exported, position, kind="forest_unit.register", actor=ADMIN, key=ADMIN_KEY,
          body={"unit_id": "KH005-FU9", "project_id": "KH005", "name": "a further unit",
                "boundary": _square(side), "jurisdiction": "Stung Treng",
                "reference_level": 1000, "leakage_rate_bp": 0, "buffer_rate_bp": 0},
          effects={"unit_id": "KH005-FU9", "area_ha": area_ha, "buffer_account": "BUF-KH005-FU9"},
          signed_for=signed_for)


def _forge_closure(
    bundle: RawBundle, exported: Exported, position: int, signed_for: str | None = ORIGIN
) -> None:
    forge(bundle, exported, position, kind="project.status", actor=ADMIN, key=ADMIN_KEY,
          body={"project_id": "KH005", "status": "closed", "reason": "crediting ended"},
          effects={"project_id": "KH005", "from": "suspended", "to": "closed"},
          signed_for=signed_for)


def test_an_effect_recorded_as_a_boolean_for_a_number_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """In Python ``True == 1``, but a ledger's effects are JSON, where ``true`` is no number:
    a unit of 1 ha recorded with ``"area_ha": true`` is not what the registry writes."""
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    _forge_unit(bundle, sqlite_bundle, end, side=0.0009, area_ha=True)  # 1 ha
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(end, "effects_mismatch")}
    assert message(found, end, "effects_mismatch") == (
        "forest_unit.register: recorded effects differ from the replay: "
        "effects.area_ha is true, the replay gives 1"
    )


def test_a_forest_unit_of_no_whole_hectare_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """The registry refuses a forest unit of less than half a hectare (0 ha in whole hectares);
    an entry registering one anyway is found, as the registry would have refused it."""
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    _forge_unit(bundle, sqlite_bundle, end, side=0.0002, area_ha=0)
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(end, "invalid_geometry")}
    assert "0 ha in whole hectares" in message(found, end, "invalid_geometry")


def test_a_forest_unit_registered_into_a_closed_project_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    _forge_closure(bundle, sqlite_bundle, end)
    _forge_unit(bundle, sqlite_bundle, end + 1, side=0.01, area_ha=120)
    found = failures(bundle, sqlite_bundle)
    assert (end + 1, "invalid_state") in codes(found)
    assert message(found, end + 1, "invalid_state") == (
        "forest_unit.register should have been refused: project KH005 is closed; it cannot "
        "gain a forest unit"
    )


def test_a_ledger_from_before_those_rules_keeps_the_units_they_refuse(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """Both rules came with instructions naming their registry: a ledger written before them,
    whose registry then accepted a 0 ha unit in a closed project, still verifies."""
    bundle = sqlite_bundle.copy(tmp_path)
    _from_before_the_rule(bundle, sqlite_bundle, len(bundle.envelopes))
    end = len(bundle.envelopes)
    _forge_closure(bundle, sqlite_bundle, end, signed_for=None)
    _forge_unit(bundle, sqlite_bundle, end + 1, side=0.0002, area_ha=0, signed_for=None)
    assert verify_bundle(bundle.write(), registry_key=sqlite_bundle.key, workers=1).report.ok


def _forge_project_without_programme(
    bundle: RawBundle, exported: Exported, position: int, signed_for: str | None = ORIGIN
) -> None:
    forge(bundle, exported, position, kind="project.register", actor=ADMIN, key=ADMIN_KEY,
          body={"project_id": "KH009", "title": "A project naming no programme",
                "partner_country": "KH", "methodology": "KH_AM001", "sector": "Energy",
                "participants": ["kh-water"], "third_party_entity": "lrqa",
                "crediting_period_start": "2023-01-01", "crediting_period_end": "2030-12-31"},
          effects={"project_id": "KH009", "status": "registered"}, signed_for=signed_for)


def test_a_project_registered_without_a_programme_is_found(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    """The registry refuses a new project naming no programme (it would turn REDD+ at its first
    forest unit, its JCM reports counted again); an entry registering one anyway is found."""
    bundle = sqlite_bundle.copy(tmp_path)
    end = len(bundle.envelopes)
    _forge_project_without_programme(bundle, sqlite_bundle, end)
    found = failures(bundle, sqlite_bundle)
    assert codes(found) == {(end, "invalid_request")}
    assert message(found, end, "invalid_request").startswith(
        "project.register should have been refused: programme is required"
    )


def test_a_ledger_from_before_programmes_keeps_its_projects_without_one(
    sqlite_bundle: Exported, tmp_path: Path
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    _from_before_the_rule(bundle, sqlite_bundle, len(bundle.envelopes))
    _forge_project_without_programme(bundle, sqlite_bundle, len(bundle.envelopes),
                                     signed_for=None)
    assert verify_bundle(bundle.write(), registry_key=sqlite_bundle.key, workers=1).report.ok
