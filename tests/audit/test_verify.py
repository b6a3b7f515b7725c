"""Export a registry with a full history, verify it offline, compare it with the database.

Runs on SQLite and, with ``REGISTRY_TEST_POSTGRES_URL``, on PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from sqlalchemy import text
from typer.testing import CliRunner

from registry.audit_cli import export_cmd, verify_cmd
from registry.errors import RegistryError
from registry.ledger.bundle import BundleFormatError, BundleReader
from registry.ledger.keys import SigningKey
from registry.ledger.verify_bundle import (
    EXIT_FAILED,
    WORKERS_FROM,
    default_workers,
    verify_bundle,
)
from registry.service.compare import compare_with_database
from registry.service.context import Registry
from registry.service.export import export_bundle
from registry.store.db import write_transaction
from tests.audit.bundles import RawBundle
from tests.audit.conftest import JCM_BATCH, History
from tests.conftest import ORIGIN


def _cli() -> typer.Typer:
    """The two commands as ``registry/cli.py`` registers them."""
    app = typer.Typer()
    app.command("export")(export_cmd)
    app.command("verify")(verify_cmd)
    return app


def test_an_exported_registry_verifies_and_matches_its_database(
    registry: Registry, history: History, db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "bundle.jsonl"
    result = export_bundle(registry, path)
    assert result.tree_size == 29 and result.checkpoints == 29 and result.party_keys == 8
    header = BundleReader(path).header
    assert header.origin == ORIGIN and header.tree_size == 29
    assert [k.key_id for k in header.registry_keys] == [registry.signer.public_key.key_id]

    key = registry.note_verifier.verifier_string()
    verification = verify_bundle(path, registry_key=key, workers=2)
    report = verification.report
    assert report.ok, report.render()
    assert report.summary == {
        "parties": 7, "accounts": 7, "projects": 2, "forest_units": 1, "reports": 2,
        "batches": 2, "blocks": 12, "issued": 10000, "active": 8140, "retired": 50,
        "cancelled": 1810, "shortfall": 700,
    }
    assert compare_with_database(db_url, verification.state, size=29, root=report.log.root) == []
    # The raw key works as well as the verifier string, and one worker gives the same result.
    raw = verify_bundle(path, registry_key=registry.signer.public_key.to_b64(), workers=1)
    assert raw.report.ok and raw.report.log.root == report.log.root


def test_an_edited_state_row_is_found_against_the_database(
    registry: Registry, history: History, db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "bundle.jsonl"
    export_bundle(registry, path)
    verified = verify_bundle(path, registry_key=registry.note_verifier.verifier_string())
    state, log = verified.state, verified.report.log
    retired = state.supply(JCM_BATCH)["retired"]
    assert retired > 0
    with write_transaction(registry.engine) as s:
        s.execute(
            text("UPDATE block SET account_id = 'JP-BUYER-1' "
                 "WHERE batch_id = :b AND start = 901"),
            {"b": JCM_BATCH},
        )
        s.execute(text("UPDATE monitoring_report SET status = 'verified' WHERE id = 'KH004-MR1'"))
        s.execute(text("UPDATE forest_unit SET shortfall = 0"))
        # A batch's kept total, which its public read shows, drifting from its blocks.
        s.execute(text("UPDATE batch SET retired = retired + 7 WHERE id = :b"), {"b": JCM_BATCH})
        s.execute(text("DELETE FROM retirement"))
        s.execute(text("UPDATE party SET role = 'administrator' WHERE id = 'jp-buyer'"))
        # The registry's own key, published at /v1/keys and copied into every export: a rogue
        # one added, and the genesis key's range edited.
        rogue = SigningKey.from_seed(b"R" * 32).public_key
        s.execute(text("INSERT INTO registry_key (key_id, public_key, valid_from_seq) "
                       "VALUES (:k, :p, 20)"), {"k": rogue.key_id, "p": rogue.raw})
        s.execute(text("UPDATE registry_key SET valid_until_seq = 3 WHERE key_id = :k"),
                  {"k": registry.signer.public_key.key_id})
    found = sorted(str(d) for d in compare_with_database(db_url, state, size=log.entries,
                                                         root=log.root))
    assert found == sorted([
        f"table registry_key, row {rogue.key_id}: is in the database but not in the ledger",
        f"table registry_key, row {registry.signer.public_key.key_id}: valid_until_seq is 3 in "
        "the database, the ledger says None",
        f"table block, row {JCM_BATCH}/901: account_id is 'JP-BUYER-1' in the database, the "
        "ledger says 'JP-GOV-1'",
        "table monitoring_report, row KH004-MR1: status is 'verified' in the database, the "
        "ledger says 'issued'",
        "table forest_unit, row KH005-FU1: shortfall is 0 in the database, the ledger says 700",
        f"table batch, row {JCM_BATCH}: retired is {retired + 7} in the database, the ledger "
        f"says {retired}",
        f"table retirement, row RET-{history.seq['retire']}: is in the ledger but not in the "
        "database",
        "table party, row jp-buyer: role is 'administrator' in the database, the ledger says "
        "'participant'",
    ])
    result = CliRunner().invoke(_cli(), [
        "verify", str(path), "--registry-key", registry.note_verifier.verifier_string(),
        "--against", db_url, "--workers", "1",
    ])
    assert result.exit_code == 2
    assert ("table party, row jp-buyer: role is 'administrator' in the database, the ledger "
            "says 'participant' [state_mismatch]") in result.output
    assert "against     " in result.output and "PASS" not in result.output


def test_against_a_database_of_another_moment_says_so_instead_of_blaming_rows(
    registry: Registry, history: History, db_url: str, tmp_path: Path
) -> None:
    """State tables are compared only with the ledger they were replayed from: a database that
    has moved on since the export (or holds another ledger) is one difference, said plainly,
    not rows blamed for the writes in between (or rows passed that another ledger's state
    happens to match)."""
    path = tmp_path / "bundle.jsonl"
    export_bundle(registry, path)
    verified = verify_bundle(path, registry_key=registry.note_verifier.verifier_string())
    log = verified.report.log
    history.world.submit("kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": JCM_BATCH, "quantity": 5, "to_account": "JP-BUYER-1"})
    found = [str(d) for d in compare_with_database(db_url, verified.state, size=log.entries,
                                                   root=log.root)]
    assert found == [
        f"table ledger_entry, row *: the database holds {log.entries + 1} entries, the bundle "
        f"{log.entries}: its state tables are of another moment; export and compare at one size "
        "(with the registry stopped, or against a copy)"
    ]
    other_root = b"\x07" * 32
    found = [str(d) for d in compare_with_database(db_url, verified.state, size=log.entries + 1,
                                                   root=other_root)]
    assert len(found) == 1 and "it holds another ledger" in found[0]


def test_the_commands_exit_0_2_and_1(
    registry: Registry, history: History, db_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REGISTRY_DATABASE_URL", db_url)
    monkeypatch.setenv("REGISTRY_ORIGIN", ORIGIN)
    runner = CliRunner()
    path = tmp_path / "export.jsonl"
    done = runner.invoke(_cli(), ["export", str(path)])
    assert done.exit_code == 0, done.output
    assert "exported 29 entries, 29 checkpoints and 8 party keys" in done.output
    key = registry.note_verifier.verifier_string()

    ok = runner.invoke(_cli(), ["verify", str(path), "--registry-key", key, "--workers", "1",
                                "--against", db_url])
    assert ok.exit_code == 0, ok.output
    assert "PASS: every check passed" in ok.output
    assert "rules       the genesis adopts every rule this version checks" in ok.output
    # A ledger begun by this version is held to every rule, so requiring them all passes.
    every_rule = runner.invoke(_cli(), ["verify", str(path), "--registry-key", key,
                                        "--workers", "1", "--require-every-rule"])
    assert every_rule.exit_code == 0, every_rule.output

    as_json = runner.invoke(_cli(), ["verify", str(path), "--registry-key", key, "--json",
                                     "--workers", "1"])
    assert as_json.exit_code == 0
    body = json.loads(as_json.output)
    assert body["ok"] is True and body["entries"] == 29 and body["failures"] == []
    assert body["rules_not_adopted"] == []
    # A ledger this small is checked in one process by default: worker processes would take
    # longer to start than it takes to check.
    by_default = runner.invoke(_cli(), ["verify", str(path), "--registry-key", key, "--json"])
    assert by_default.exit_code == 0, by_default.output
    assert json.loads(by_default.output)["workers"] == 1

    bundle = RawBundle.read(path)
    bundle.envelopes[5], bundle.envelopes[6] = bundle.envelopes[6], bundle.envelopes[5]
    bundle.write()
    failed = runner.invoke(_cli(), ["verify", str(path), "--registry-key", key, "--workers", "1"])
    assert failed.exit_code == EXIT_FAILED == 2
    assert "FAIL:" in failed.output
    assert "seq 5: entry at position 5 says seq 6 [broken_chain]" in failed.output
    failed_json = runner.invoke(_cli(), ["verify", str(path), "--registry-key", key, "--json",
                                         "--workers", "1"])
    assert failed_json.exit_code == 2
    failures = json.loads(failed_json.output)["failures"]
    assert {"seq": 5, "code": "broken_chain", "message": "entry at position 5 says seq 6"} in (
        failures
    )

    not_a_bundle = tmp_path / "notes.txt"
    not_a_bundle.write_text("hello\n")
    usage = runner.invoke(_cli(), ["verify", str(not_a_bundle), "--registry-key", key])
    assert isinstance(usage.exception, BundleFormatError)
    bad_key = runner.invoke(_cli(), ["verify", str(path), "--registry-key", "not-a-key"])
    assert isinstance(bad_key.exception, RegistryError)
    assert "--registry-key must be" in bad_key.exception.message


def test_every_core_checks_a_ledger_large_enough_to_repay_its_worker_processes() -> None:
    assert default_workers(WORKERS_FROM - 1, cores=8) == 1
    assert default_workers(WORKERS_FROM, cores=8) == 8
    assert default_workers(10**6, cores=1) == 1
    # The option's help says where the default changes.
    shown = CliRunner().invoke(_cli(), ["verify", "--help"]).output
    assert f"fewer than {WORKERS_FROM:,} entries" in " ".join(shown.replace("│", " ").split())


def test_an_export_to_a_directory_is_refused_before_reading_the_ledger(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not after copying a million entries, and naming the path given, not a temporary file."""
    from registry.service import export

    def never(*_args: object) -> None:
        raise AssertionError("the entries were read for an output that cannot be written")

    monkeypatch.setattr(export, "_entries", never)
    target = tmp_path / "exports" / "out"
    target.mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as refused:
        export_bundle(registry, target)
    assert refused.value.filename == str(target) and ".part" not in str(refused.value)
    assert list(target.parent.iterdir()) == [target] and list(target.iterdir()) == []
