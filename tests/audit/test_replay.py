"""The replay state machine on its own: constants, block splitting, and entries it cannot use."""

from __future__ import annotations

from datetime import UTC, datetime

from registry.domain.instructions import MAX_ACTIVE_KEYS
from registry.domain.serials import SerialRange
from registry.ledger import replay as r
from registry.ledger.entry import Entry, format_time
from registry.ledger.keys import SigningKey
from registry.ledger.opening import check_instruction_signature
from registry.service import instructions, movements, projects
from registry.service.context import Registry
from tests.audit.bundles import entry_of
from tests.audit.conftest import JCM_BATCH, REDD_BATCH, Exported
from tests.factories import append_notes


def test_the_replay_uses_the_services_constants() -> None:
    assert r.RETIREMENT_ACCOUNT == movements.RETIREMENT_ACCOUNT
    assert r.CANCELLATION_ACCOUNT == movements.CANCELLATION_ACCOUNT
    assert r.MAX_VALIDITY == instructions.MAX_VALIDITY
    assert r.OVERLAP_TOLERANCE_HA == projects.OVERLAP_TOLERANCE_HA
    assert r.MOVABLE_FROM == movements._MOVABLE_FROM


def test_instruction_signatures_are_checked_as_the_service_checks_them() -> None:
    from registry.client import sign_instruction

    key = SigningKey.from_seed(b"k" * 32)
    signed = sign_instruction(key, registry="r.example/log", actor="p", type="credits.cancel",
                              body={"reason": "x"})
    instructions.verify_instruction_signature(
        signed["instruction"], signed["signature"], key.public_key
    )
    assert check_instruction_signature(signed["instruction"], signed["signature"],
                                       key.public_key.raw)
    tampered = {**signed["instruction"], "nonce": "another-nonce-1234567"}
    assert not check_instruction_signature(tampered, signed["signature"], key.public_key.raw)
    assert not check_instruction_signature(signed["instruction"], "%%", key.public_key.raw)


def test_an_instruction_outside_the_canonical_profile_never_verifies() -> None:
    # Whatever bytes a float or an oversized integer was signed as, no canonical encoding of
    # it exists, so no signature over "it" is accepted.
    import json

    from registry.ledger.keys import b64encode

    key = SigningKey.from_seed(b"k" * 32)
    for instruction in ({"quantity": 1.5}, {"quantity": 2**60}, {1: "x"}):
        text = json.dumps(instruction, sort_keys=True, separators=(",", ":")).encode()
        signature = b64encode(key.sign(text))
        assert not check_instruction_signature(instruction, signature, key.public_key.raw)


def test_blocks_split_as_the_store_splits_them() -> None:
    state = r.ReplayedState()
    state.blocks["B"] = r.BatchBlocks("B")
    state.add_block(r.Block("B", SerialRange(1, 100), "A", r.ACTIVE))
    state.move("B", [SerialRange(10, 20), SerialRange(30, 40)], to="C", status=r.ACTIVE)
    state.move("B", [SerialRange(15, 35)], to="R", status=r.RETIRED)
    assert [(b.start, b.end, b.account, b.status) for b in state.blocks["B"]] == [
        (1, 9, "A", "active"), (10, 14, "C", "active"), (15, 20, "R", "retired"),
        (21, 29, "R", "retired"), (30, 35, "R", "retired"), (36, 40, "C", "active"),
        (41, 100, "A", "active"),
    ]
    assert state.held("A", "B") == [SerialRange(1, 9), SerialRange(41, 100)]
    assert state.held("C", "B") == [SerialRange(10, 14), SerialRange(36, 40)]
    assert state.held("R", "B") == []
    assert state.supply("B") == {"active": 79, "retired": 21, "cancelled": 0}


def test_a_replay_of_the_exported_entries_holds_what_the_registry_holds(
    sqlite_bundle: Exported,
) -> None:
    from tests.audit.bundles import RawBundle

    bundle = RawBundle.read(sqlite_bundle.path)
    state, report = r.replay_entries(
        (entry_of(e) for e in bundle.envelopes),
        registry_key=sqlite_bundle.registry.signer.public_key,
    )
    assert report.ok, [str(f) for f in report.failures]
    assert state.total("KH-WATER-1") == 800 - 300 - 21
    assert state.total("JP-BUYER-1") == 250
    assert state.total("KH-GOV-1") == 100 - 10 + 21 + 7200
    assert state.total("BUF-KH005-FU1") == 0
    assert state.units["KH005-FU1"].shortfall == 700
    assert state.batches[REDD_BATCH].quantity == 9000
    assert state.retirements[f"RET-{sqlite_bundle.history.seq['retire']}"].blocks == "101-150"
    assert state.reports["KH004-MR1"].status == "issued"
    assert state.projects["KH005"].status == "suspended"
    assert JCM_BATCH in state.batches


def test_a_log_without_genesis_or_with_unknown_kinds_is_reported(registry: Registry) -> None:
    append_notes(registry, 1)
    from registry.store import ledger_repo
    from registry.store.db import read_session

    with read_session(registry.engine) as s:
        entries = [entry_of(e) for e in ledger_repo.iter_envelopes(s)]
    _, report = r.replay_entries(entries)
    assert [(f.seq, f.code) for f in report.failures] == [(1, "unknown_kind")]
    headless = Entry(v=1, seq=0, time=format_time(datetime.now(UTC)), kind="test.note",
                     actor="registry", payload={}, prev=None)
    _, report = r.replay_entries([headless])
    assert [(f.seq, f.code) for f in report.failures] == [(0, "no_genesis"), (0, "unknown_kind")]


def test_a_reversal_past_the_largest_total_shortfall_is_reported(
    sqlite_bundle: Exported,
) -> None:
    """The registry refuses a reversal that would take a unit's total shortfall past
    2^53 - 1 (JSON could not carry it exactly); the replay reports an entry recording one."""
    from tests.audit.bundles import RawBundle

    entries = [entry_of(e) for e in RawBundle.read(sqlite_bundle.path).envelopes]
    seq = sqlite_bundle.history.seq["reversal_shortfall"]  # a shortfall of 700
    for slack, failing in ((700, []), (699, [(seq, "invalid_quantity")])):
        replay = r.Replay(registry_key=sqlite_bundle.registry.signer.public_key)
        for entry in entries[:seq]:
            replay.apply(entry)
        replay.state.units["KH005-FU1"].shortfall = 2**53 - 1 - slack
        replay.apply(entries[seq])
        assert [(f.seq, f.code) for f in replay.report.failures] == failing


def test_a_status_change_to_the_status_a_project_has_is_reported(
    sqlite_bundle: Exported,
) -> None:
    """The registry refuses to set a project to the status it has (409 invalid_state); the
    replay reports an entry recording one, unless its ledger was begun before that rule."""
    from tests.audit.bundles import RawBundle

    entries = [entry_of(e) for e in RawBundle.read(sqlite_bundle.path).envelopes]
    seq = sqlite_bundle.history.seq["suspend"]  # KH005: registered -> suspended
    for status, before_rule, failing in (
        ("registered", False, []),
        ("suspended", False, [(seq, "invalid_state")]),
        # Before the rule it is no refusal; only its recorded "from" differs from this state.
        ("suspended", True, [(seq, "effects_mismatch")]),
    ):
        replay = r.Replay(registry_key=sqlite_bundle.registry.signer.public_key)
        for entry in entries[:seq]:
            replay.apply(entry)
        replay.state.projects["KH005"].status = status
        if before_rule:
            replay.state.status_changes_change = False
        replay.apply(entries[seq])
        assert [(f.seq, f.code) for f in replay.report.failures] == failing


def test_a_key_added_past_the_most_a_party_may_hold_is_reported(
    sqlite_bundle: Exported,
) -> None:
    """The registry refuses a party's key beyond MAX_ACTIVE_KEYS active ones (409
    invalid_state); the replay reports an entry adding one, unless its ledger was begun
    before that rule."""
    from tests.audit.bundles import RawBundle

    entries = [entry_of(e) for e in RawBundle.read(sqlite_bundle.path).envelopes]
    seq = sqlite_bundle.history.seq["key_add"]  # kh-water's second key
    for extra, before_rule, failing in (
        (MAX_ACTIVE_KEYS - 2, False, []),
        (MAX_ACTIVE_KEYS - 1, False, [(seq, "invalid_state")]),
        (MAX_ACTIVE_KEYS - 1, True, []),
    ):
        replay = r.Replay(registry_key=sqlite_bundle.registry.signer.public_key)
        for entry in entries[:seq]:
            replay.apply(entry)
        for i in range(extra):
            key_id = f"{i:064x}"
            replay.state.keys[key_id] = r.KeyState(key_id, "kh-water", bytes(32), 1)
        if before_rule:
            replay.state.max_active_keys = None
        replay.apply(entries[seq])
        assert [(f.seq, f.code) for f in replay.report.failures] == failing


def test_a_boundary_laid_out_over_lines_is_plain_text_to_the_replay() -> None:
    """A ledger begun under plain_text may record a forest unit whose boundary is JSON laid out
    with line breaks and tabs (the registry takes it); the replay does not report it."""
    layout = '{\r\n\t"type": "Polygon",\n  "coordinates": []\n}'
    body = {"unit_id": "KH005-FU1", "name": "Unit", "reference_level": 1,
            "boundary": layout}
    assert r._text_problem(body, True) is None
    assert r._text_problem({**body, "name": "Unit\n"}, True) is not None
    assert r._text_problem({**body, "boundary": layout + "\u202e"}, True) is not None
