"""A random credit history: the replay re-derives every effect and rebuilds the database state."""

from __future__ import annotations

from pathlib import Path

from registry.ledger.keys import SigningKey
from registry.ledger.verify_bundle import verify_bundle
from registry.service.compare import compare_with_database
from registry.service.context import Registry
from registry.service.export import export_bundle
from tests.audit.generate import random_history


def test_a_random_history_replays_exactly(
    registry: Registry, admin_key: SigningKey, db_url: str, tmp_path: Path
) -> None:
    drive = random_history(registry, admin_key, seed=20261125, moves=80)
    assert drive.refused > 5, "some requests are refused, and leave no entry"
    path = tmp_path / "bundle.jsonl"
    export_bundle(registry, path)
    verification = verify_bundle(
        path, registry_key=registry.note_verifier.verifier_string(), workers=1, chunk_size=7
    )
    report = verification.report
    assert report.ok, report.render()
    assert report.summary["retired"] > 0 and report.summary["batches"] == 4
    assert report.summary["blocks"] > 30
    assert compare_with_database(
        db_url, verification.state, size=report.log.entries, root=report.log.root
    ) == []
