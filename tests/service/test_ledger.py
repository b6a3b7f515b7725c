"""Appending to the ledger: chain, tree, checkpoints, proofs, and tampering found by an audit."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from registry.config import Settings
from registry.errors import CheckpointError, ConfigurationError
from registry.ledger import merkle
from registry.ledger.checkpoint import open_checkpoint
from registry.ledger.entry import open_entry
from registry.ledger.keys import PublicKey, SigningKey
from registry.service.context import Registry
from registry.service.ledger import (
    append_entry,
    audit_store,
    consistency_proof,
    inclusion_proof,
)
from registry.service.setup import FirstAdministrator, initialise
from registry.store import ledger_repo
from registry.store.db import make_engine, migrate, read_session, write_transaction
from tests.conftest import ADMIN
from tests.factories import append_notes, drop_append_only_triggers
from tests.helpers import StepClock


def _keys(registry: Registry) -> dict[str, PublicKey]:
    return {registry.signer.public_key.key_id: registry.signer.public_key}


def test_genesis_names_the_registry_key(registry: Registry) -> None:
    with read_session(registry.engine) as s:
        row = ledger_repo.entry_at(s, 0)
        note = ledger_repo.latest_checkpoint(s)
    assert row is not None and note is not None
    entry = open_entry(
        row.envelope, {registry.signer.public_key.key_id: registry.signer.public_key}
    )
    assert entry.kind == "registry.genesis" and entry.prev is None
    assert entry.payload["registry_key"]["key_id"] == registry.signer.public_key.key_id
    cp = open_checkpoint(note.note, origin=registry.origin, verifiers=[registry.note_verifier])
    assert cp.size == 1 and cp.root == merkle.leaf_hash(row.envelope)


def test_entries_chain_and_every_checkpoint_is_consistent(registry: Registry) -> None:
    append_notes(registry, 12)
    with read_session(registry.engine) as s:
        rows = ledger_repo.entries_between(s, 0, 100)
        notes = list(ledger_repo.iter_checkpoint_notes(s))
        assert [r.seq for r in rows] == list(range(13))
        for before, after in itertools.pairwise(rows):
            entry = open_entry(
                after.envelope, {registry.signer.public_key.key_id: registry.signer.public_key}
            )
            assert entry.prev == before.leaf_hash.hex()
        checkpoints = [
            open_checkpoint(n, origin=registry.origin, verifiers=[registry.note_verifier])
            for n in notes
        ]
        assert [c.size for c in checkpoints] == list(range(1, 14))
        for older, newer in itertools.pairwise(checkpoints):
            p = consistency_proof(s, first=older.size, second=newer.size)
            merkle.verify_consistency(older.size, newer.size, p.proof, older.root, newer.root)
        latest = checkpoints[-1]
        for index in range(13):
            p2 = inclusion_proof(s, index=index, tree_size=latest.size)
            merkle.verify_inclusion(p2.leaf_hash, index, latest.size, p2.proof, latest.root)
        assert audit_store(s, registry).ok


def _report(registry: Registry) -> list[tuple[int | None, str]]:
    with read_session(registry.engine) as s:
        return [(f.seq, f.code) for f in audit_store(s, registry).failures]


@pytest.mark.parametrize("position", [0, 17, "middle", -3, -1])
def test_one_changed_byte_in_any_envelope_is_found(registry: Registry, position: object) -> None:
    append_notes(registry, 5)
    drop_append_only_triggers(registry)
    for seq in range(6):
        with write_transaction(registry.engine) as s:
            row = ledger_repo.entry_at(s, seq)
            assert row is not None
            data = bytearray(row.envelope)
            i = len(data) // 2 if position == "middle" else int(position)  # type: ignore[call-overload]
            original = bytes(row.envelope)
            data[i] ^= 0x01
            s.execute(
                text("UPDATE ledger_entry SET envelope = :e WHERE seq = :q"),
                {"e": bytes(data), "q": seq},
            )
        failures = _report(registry)
        assert failures and failures[0][0] == seq, failures
        assert failures[0][1] in {"bad_signature", "malformed", "unknown_key"}
        with write_transaction(registry.engine) as s:
            s.execute(
                text("UPDATE ledger_entry SET envelope = :e WHERE seq = :q"),
                {"e": original, "q": seq},
            )
    assert _report(registry) == []


def test_a_removed_entry_is_found(registry: Registry) -> None:
    append_notes(registry, 5)
    drop_append_only_triggers(registry)
    with write_transaction(registry.engine) as s:
        s.execute(text("DELETE FROM ledger_entry WHERE seq = 3"))
    failures = _report(registry)
    assert (3, "broken_chain") in failures
    assert any(code == "bad_checkpoint" for _, code in failures)


def test_reordered_entries_are_found(registry: Registry) -> None:
    append_notes(registry, 5)
    drop_append_only_triggers(registry)
    with write_transaction(registry.engine) as s:
        rows = {r.seq: r.envelope for r in ledger_repo.entries_between(s, 2, 4)}
        for seq, other in ((2, 3), (3, 2)):
            s.execute(
                text("UPDATE ledger_entry SET envelope = :e WHERE seq = :q"),
                {"e": rows[other], "q": seq},
            )
    failures = _report(registry)
    assert (2, "broken_chain") in failures and (3, "broken_chain") in failures


def test_checkpoint_signed_by_another_key_is_found(registry: Registry) -> None:
    from registry.ledger.checkpoint import Checkpoint, sign_checkpoint
    from registry.ledger.keys import SigningKey

    append_notes(registry, 2)
    drop_append_only_triggers(registry)
    with write_transaction(registry.engine) as s:
        row = ledger_repo.checkpoint_at(s, 2)
        assert row is not None
        forged = sign_checkpoint(
            Checkpoint(origin=registry.origin, size=2, root=row.root),
            name=registry.origin,
            key=SigningKey.generate(),
        )
        s.execute(text("UPDATE checkpoint SET note = :n WHERE size = 2"), {"n": forged})
    with read_session(registry.engine) as s:
        failures = audit_store(s, registry).failures
    assert [f.code for f in failures] == ["bad_checkpoint"]
    assert "no signature by the registry key" in failures[0].message


def test_registry_refuses_to_sign_an_inconsistent_checkpoint(registry: Registry) -> None:
    append_notes(registry, 3)
    drop_append_only_triggers(registry)
    with write_transaction(registry.engine) as s:
        s.execute(text("UPDATE checkpoint SET root = :r WHERE size = 4"), {"r": b"\x00" * 32})
    with (
        pytest.raises(CheckpointError, match="not consistent"),
        write_transaction(registry.engine) as s,
    ):
        append_entry(s, registry, kind="test.note", actor="registry", payload={})
    with read_session(registry.engine) as s:
        assert ledger_repo.tree_size(s) == 4
        latest = ledger_repo.latest_checkpoint(s)
        assert latest is not None and latest.size == 4


def test_entry_times_never_run_backwards_even_if_the_clock_does(registry: Registry) -> None:
    from datetime import timedelta

    append_notes(registry, 2)
    with write_transaction(registry.engine) as s:
        stepped_back = append_entry(
            s,
            registry,
            kind="test.note",
            actor="registry",
            payload={},
            now=registry.clock() - timedelta(hours=1),
        )
    with read_session(registry.engine) as s:
        row = ledger_repo.entry_at(s, 2)
        assert row is not None
        previous = open_entry(row.envelope, _keys(registry))
        assert stepped_back.entry.time == previous.time
        assert audit_store(s, registry).ok


def test_an_entry_dated_before_its_predecessor_is_found(registry: Registry) -> None:
    from registry.ledger.audit import audit_log
    from registry.ledger.entry import Entry, seal_entry
    from registry.ledger.registry_keys import RegistryKeyRecord

    # Only what the log's checks read of a genesis: the key that signs the ledger.
    record = RegistryKeyRecord.of(registry.signer.public_key, registry.origin)
    first = Entry(
        v=1,
        seq=0,
        time="2026-03-01T10:00:00.000000Z",
        kind="registry.genesis",
        actor="registry",
        payload={"origin": registry.origin, "registry_key": record.model_dump()},
        prev=None,
    )
    sealed = seal_entry(first, registry.signer)
    backdated = Entry(
        v=1,
        seq=1,
        time="2026-03-01T09:00:00.000000Z",
        kind="test.note",
        actor="registry",
        payload={},
        prev=merkle.leaf_hash(sealed).hex(),
    )
    report = audit_log(
        [sealed, seal_entry(backdated, registry.signer)],
        [],
        keys=_keys(registry),
        origin=registry.origin,
    )
    assert [(f.seq, f.code) for f in report.failures] == [(1, "broken_chain")]
    assert "time runs backwards" in report.failures[0].message



def test_a_genesis_that_fails_leaves_no_key_in_the_way_of_a_retry(
    settings: Settings, admin_key: SigningKey
) -> None:
    """The registry key is written before genesis; if genesis is not committed, the key signs
    nothing and goes, so `registry init` can simply be run again."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    leftover = text("INSERT INTO party (id, name, role, created_seq) "
                    "VALUES (:id, 'leftover', 'participant', 0)")
    with engine.begin() as c:  # a row of the administrator's id: genesis cannot insert it
        c.execute(leftover, {"id": ADMIN})
    admin = FirstAdministrator(party_id=ADMIN, public_key=admin_key.public_key)
    with pytest.raises(IntegrityError):
        initialise(settings, admin=admin, insecure_dev_key=True, clock=StepClock())
    assert not settings.key_file.exists()
    with engine.begin() as c:
        c.execute(text("DELETE FROM party WHERE id = :id"), {"id": ADMIN})
    engine.dispose()
    registry = initialise(settings, admin=admin, insecure_dev_key=True, clock=StepClock())
    try:
        assert settings.key_file.exists()
        with read_session(registry.engine) as session:
            assert ledger_repo.tree_size(session) == 1
    finally:
        registry.engine.dispose()


def test_an_administrator_no_instruction_could_name_is_refused_before_anything_is_written(
    settings: Settings, admin_key: SigningKey
) -> None:
    for party_id, name in (("admin@moe.gov.kh", "Admin"), ("kh-admin", "x" * 501)):
        admin = FirstAdministrator(party_id=party_id, name=name, public_key=admin_key.public_key)
        with pytest.raises(ConfigurationError, match="first administrator"):
            initialise(settings, admin=admin, insecure_dev_key=True, clock=StepClock())
        assert not settings.key_file.exists()
