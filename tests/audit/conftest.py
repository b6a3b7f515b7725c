"""Registries with a full credit history, exported, for the auditor's tests.

``populated`` builds one on the engine under test (SQLite, and PostgreSQL when configured)
through the real HTTP API. ``sqlite_bundle`` builds one once per module on SQLite and exports it:
the tamper matrix edits copies of that file, since what it checks is engine-independent.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.config import Settings
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from registry.service.export import export_bundle
from registry.service.setup import FirstAdministrator, initialise
from tests.audit.bundles import RawBundle
from tests.conftest import ADMIN, ORIGIN
from tests.helpers import LiveServer, StepClock, start_server
from tests.world import World, build_world, issue_jcm, sha

JCM_BATCH = "KH-JCM-KH004-2024-00001"
REDD_BATCH = "KH-REDD-KH005-2024-00001"
WATER_NEW_KEY = SigningKey.from_seed(b"W" * 32)


@dataclass
class History:
    """What :func:`populate` did, for tests that tamper with a particular entry."""

    world: World
    seq: dict[str, int]


def populate(world: World) -> History:
    """A JCM issuance, transfers, a retirement, a cancellation, a key rotation, a REDD+
    issuance with buffer, two reversals (the second beyond the pool: a shortfall)."""
    seq: dict[str, int] = {}

    def submit(name: str, party: str, kind: str, body: dict[str, object]) -> None:
        seq[name] = int(world.submit(party, kind, body)["seq"])

    assert issue_jcm(world) == JCM_BATCH
    submit("transfer", "kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": JCM_BATCH, "quantity": 300,
        "to_account": "JP-BUYER-1"})
    submit("retire", "jp-buyer", "credits.retire", {
        "account": "JP-BUYER-1", "batch": JCM_BATCH, "range": {"start": 101, "end": 150},
        "beneficiary": "Example Co.", "purpose": "voluntary", "jurisdiction": "JP",
        "reason": "2025 offsetting"})
    submit("cancel", "kh-gov", "credits.cancel", {
        "account": "KH-GOV-1", "batch": JCM_BATCH, "quantity": 10, "reason": "correction"})
    old_water = world.keys["kh-water"].public_key.key_id
    submit("key_add", "kh-water", "party.key_add", {
        "party_id": "kh-water", "public_key": WATER_NEW_KEY.public_key.to_b64()})
    world.keys["kh-water"] = WATER_NEW_KEY
    submit("key_revoke", "kh-water", "party.key_revoke", {
        "party_id": "kh-water", "key_id": old_water})
    submit("transfer_new_key", "kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": JCM_BATCH, "range": {"start": 500, "end": 520},
        "to_account": "KH-GOV-1"})
    submit("redd_report", "kh-gov", "report.submit", {
        "report_id": "KH005-MR1", "project_id": "KH005", "forest_unit_id": "KH005-FU1",
        "period_start": "2024-01-01", "period_end": "2024-12-31", "reductions": 10000,
        "document_sha256": sha("KH005-MR1")})
    submit("redd_verify", "lrqa", "report.verify", {
        "report_id": "KH005-MR1", "verified_reductions": 10000,
        "statement_sha256": sha("KH005-MR1/statement")})
    # 10 000 gross - 10 % leakage = 9 000 net; 20 % buffer = 1 800; 7 200 issuable.
    submit("redd_issue", ADMIN, "credits.issue", {
        "report_id": "KH005-MR1", "vintage": 2024,
        "allocations": [{"account": "KH-GOV-1", "quantity": 7200}]})
    submit("reversal", ADMIN, "redd.reversal", {
        "unit_id": "KH005-FU1", "lost": 500, "document_sha256": sha("fire-1"),
        "reason": "dry-season fire"})
    submit("reversal_shortfall", ADMIN, "redd.reversal", {
        "unit_id": "KH005-FU1", "lost": 2000, "document_sha256": sha("fire-2"),
        "reason": "illegal logging"})
    submit("suspend", ADMIN, "project.status", {
        "project_id": "KH005", "status": "suspended", "reason": "investigation"})
    return History(world=world, seq=seq)


@pytest.fixture
def history(server: LiveServer, admin_key: SigningKey) -> Iterator[History]:
    world = build_world(server.url, admin_key)
    yield populate(world)
    world.http.http.close()


@dataclass
class Exported:
    path: Path
    registry: Registry
    history: History

    @property
    def key(self) -> str:
        return self.registry.note_verifier.verifier_string()

    def copy(self, tmp_path: Path) -> RawBundle:
        target = tmp_path / "copy.jsonl"
        shutil.copy(self.path, target)
        return RawBundle.read(target)


@pytest.fixture(scope="module")
def sqlite_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    tmp = tmp_path_factory.mktemp("bundle")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'registry.db'}", origin=ORIGIN,
        key_file=tmp / "keys" / "registry-key.pem",
    )
    admin_key = SigningKey.from_seed(b"A" * 32)
    registry = initialise(
        settings, admin=FirstAdministrator(party_id=ADMIN, public_key=admin_key.public_key),
        insecure_dev_key=True, clock=StepClock(),
    )
    with start_server(registry) as live:
        world = build_world(live.url, admin_key)
        history = populate(world)
        world.http.http.close()
    path = tmp / "bundle.jsonl"
    export_bundle(registry, path)
    yield Exported(path=path, registry=registry, history=history)
    registry.engine.dispose()
