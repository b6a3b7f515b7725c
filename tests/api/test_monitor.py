"""`registry audit --url`: a monitor that remembers what it saw and alarms on a rewrite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from registry.service.context import Registry
from registry.store.db import write_transaction
from tests.factories import append_notes, drop_append_only_triggers
from tests.helpers import LiveServer

REGISTRY = str(Path(sys.executable).with_name("registry"))


def audit(server: LiveServer, registry: Registry, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            REGISTRY,
            "audit",
            "--url",
            server.url,
            "--state",
            str(state),
            "--registry-key",
            registry.note_verifier.verifier_string(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _cut_history(registry: Registry, keep: int) -> None:
    """The registry operator throws away every entry from ``keep`` on (bypassing triggers)."""
    drop_append_only_triggers(registry)
    with write_transaction(registry.engine) as s:
        s.execute(text("DELETE FROM ledger_entry WHERE seq >= :k"), {"k": keep})
        s.execute(
            text("DELETE FROM tree_node WHERE ((idx + 1) * power(2, level)) > :k")
            if registry.engine.dialect.name == "postgresql"
            else text("DELETE FROM tree_node WHERE ((idx + 1) << level) > :k"),
            {"k": keep},
        )
        s.execute(text("DELETE FROM checkpoint WHERE size > :k"), {"k": keep})


def test_monitor_follows_an_honest_registry(
    registry: Registry, server: LiveServer, tmp_path: Path
) -> None:
    state = tmp_path / "monitor.json"
    append_notes(registry, 4)
    first = audit(server, registry, state)
    assert first.returncode == 0, first.stderr
    assert "ok: 5 entries, 5 new since 0" in first.stdout
    append_notes(registry, 7)
    second = audit(server, registry, state)
    assert second.returncode == 0, second.stderr
    assert "ok: 12 entries, 7 new since 5" in second.stdout


@pytest.mark.parametrize("attack", ["rewrite", "rollback"])
def test_monitor_alarms_when_history_changes(
    registry: Registry, server: LiveServer, tmp_path: Path, attack: str
) -> None:
    state = tmp_path / "monitor.json"
    append_notes(registry, 9)
    assert audit(server, registry, state).returncode == 0
    before = state.read_text()
    _cut_history(registry, keep=6)
    if attack == "rewrite":
        append_notes(registry, 8)  # a different history, longer than the one seen
    r = audit(server, registry, state)
    assert r.returncode == 2
    assert ("REWRITE" if attack == "rewrite" else "ROLLBACK") in r.stderr
    assert state.read_text() == before, "an alarm never moves the monitor's memory"
