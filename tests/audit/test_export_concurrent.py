"""Exporting while the registry writes: the bundle is the registry as of one moment.

A server keeps appending (credit transfers, party keys added and revoked) while an export
reads page by page, between its pages and between its sections. The bundle must hold exactly
the ledger of the size it read first, with every checkpoint up to it and each party key as it
stood then, and verify offline. Runs on SQLite and, with ``REGISTRY_TEST_POSTGRES_URL``, on
PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import TypeVar

import pytest
from sqlmodel import Session

from registry.ledger.bundle import BundlePartyKey
from registry.ledger.keys import SigningKey
from registry.ledger.verify_bundle import verify_bundle
from registry.service import export
from registry.service.compare import compare_with_database
from registry.service.context import Registry
from registry.service.export import export_bundle
from registry.store import ledger_repo
from registry.store.db import read_session
from tests.audit.bundles import RawBundle
from tests.world import World, issue_jcm

_seeds = count(1)
T = TypeVar("T")


class Appender:
    """Appends one entry per call through the server: a transfer, a key added, a key revoked."""

    def __init__(self, world: World, batch: str) -> None:
        self.world, self.batch, self.step = world, batch, 0
        self.added: list[str] = []

    def __call__(self) -> None:
        self.step += 1
        if self.step % 3 == 0:
            key = SigningKey.from_seed(next(_seeds).to_bytes(4, "big") * 8)
            self.world.submit("kh-gov", "party.key_add",
                              {"party_id": "kh-gov", "public_key": key.public_key.to_b64()})
            self.added.append(key.public_key.key_id)
        elif self.step % 3 == 1 and self.added:
            self.world.submit("kh-gov", "party.key_revoke",
                              {"party_id": "kh-gov", "key_id": self.added.pop(0)})
        else:
            self.world.submit("kh-water", "credits.transfer", {
                "account": "KH-WATER-1", "batch": self.batch, "quantity": 1,
                "to_account": "KH-GOV-1"})


def _size(registry: Registry) -> int:
    with read_session(registry.engine) as session:
        return ledger_repo.tree_size(session)


def _verify(registry: Registry, path: Path, size: int) -> None:
    report = verify_bundle(path, registry_key=registry.note_verifier.verifier_string(),
                           workers=1).report
    assert report.ok, report.render()
    assert report.log.entries == size and report.log.checkpoints == size


def test_an_export_taken_while_the_server_appends_is_one_moment_and_verifies(
    registry: Registry, world: World, db_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    append = Appender(world, issue_jcm(world))
    for _ in range(6):
        append()
    before = _size(registry)
    # Pages of two entries, and an append committed after every page and before each section.
    monkeypatch.setattr(export, "PAGE", 2)

    def appending(inner: Callable[[Session, int], Iterator[T]]
                  ) -> Callable[[Session, int], Iterator[T]]:
        def wrapped(session: Session, size: int) -> Iterator[T]:
            append()
            append()
            for item in inner(session, size):
                yield item
                append()
        return wrapped

    monkeypatch.setattr(export, "_checkpoints", appending(export._checkpoints))
    monkeypatch.setattr(export, "_party_keys", appending(export._party_keys))
    path = tmp_path / "bundle.jsonl"
    result = export_bundle(registry, path, progress=lambda _done: append())
    after = _size(registry)
    assert result.tree_size == before and after > before + 10

    bundle = RawBundle.read(path)
    assert len(bundle.envelopes) == before
    assert [size for size, _note in bundle.checkpoints] == list(range(1, before + 1))
    keys = [BundlePartyKey.model_validate(k) for k in bundle.party_keys]
    assert all(k.valid_from_seq < before for k in keys)
    assert all(k.valid_until_seq is None or k.valid_until_seq < before for k in keys)
    _verify(registry, path, before)

    # The database has moved on: --against says so, plainly, rather than comparing two moments.
    verified = verify_bundle(path, registry_key=registry.note_verifier.verifier_string())
    differences = compare_with_database(db_url, verified.state, size=before,
                                        root=verified.report.log.root)
    assert len(differences) == 1 and str(after) in str(differences[0])

    monkeypatch.undo()
    export_bundle(registry, path)
    _verify(registry, path, after)


def test_exports_while_a_thread_keeps_appending_all_verify(
    registry: Registry, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    append = Appender(world, issue_jcm(world))
    stop, errors = threading.Event(), []

    def writer() -> None:
        try:
            while not stop.is_set():
                append()
        except Exception as e:  # a failure in the thread must fail the test
            errors.append(e)

    monkeypatch.setattr(export, "PAGE", 3)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    sizes: list[int] = []
    try:
        for i in range(4):
            # Each export after the first starts once the thread has appended since the one
            # before (on a busy machine the thread may otherwise not have run at all).
            deadline = time.monotonic() + 30
            while sizes and _size(registry) == sizes[-1] and time.monotonic() < deadline:
                time.sleep(0.01)
            path = tmp_path / f"bundle-{i}.jsonl"
            sizes.append(export_bundle(registry, path).tree_size)
            _verify(registry, path, sizes[-1])
    finally:
        stop.set()
        thread.join(30)
    assert not errors and not thread.is_alive()
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]

