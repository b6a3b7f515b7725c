"""Hostile bundles: each is a FAIL (or, for a header that is not one, a usage error), never a
crash, and never a PASS with figures the registry did not sign.

The bundles are edits of the module-scoped ``sqlite_bundle`` the tamper matrix uses; nothing
here needs a registry key, only the file.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.errors import MalformedError
from registry.ledger.bundle import BundleFormatError, BundleReader
from registry.ledger.canonical import parse_canonical
from registry.ledger.dsse import sign_envelope
from registry.ledger.keys import SigningKey
from registry.ledger.opening import Context, Job
from registry.ledger.verify_bundle import _pipeline, verify_bundle
from tests.audit.bundles import RawBundle, entry_of
from tests.audit.conftest import Exported, sqlite_bundle  # noqa: F401  (module fixture)

FOREIGN = SigningKey.from_seed(b"F" * 32)  # anyone's key: the attacker holds no registry key
DEEP = 100_000


def _lines(exported: Exported) -> list[bytes]:
    return exported.path.read_bytes().split(b"\n")


def _write(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines))
    return path


# --- 1. a deeply nested line is a traceback, not a FAIL ------------------------------------------


@pytest.mark.parametrize("where", ["among the entries", "among the party keys"])
def test_a_deeply_nested_line_is_a_failure_not_a_crash(
    sqlite_bundle: Exported, tmp_path: Path, where: str  # noqa: F811
) -> None:
    lines = _lines(sqlite_bundle)
    at = 5 if where == "among the entries" else len(lines) - 2
    lines.insert(at, b"[" * DEEP + b"]" * DEEP)
    report = verify_bundle(
        _write(tmp_path, lines), registry_key=sqlite_bundle.key, workers=1
    ).report
    assert not report.ok
    assert any(f.code == "bad_bundle" for f in report.failures)


def test_a_deeply_nested_header_is_a_usage_error_not_a_crash(
    sqlite_bundle: Exported, tmp_path: Path  # noqa: F811
) -> None:
    lines = _lines(sqlite_bundle)
    lines[0] = b"[" * DEEP + b"]" * DEEP
    with pytest.raises(BundleFormatError):
        BundleReader(_write(tmp_path, lines))


# --- 2. a deeply nested entry payload kills the worker pool -------------------------------------


def test_a_deeply_nested_entry_is_a_failure_not_a_crash_with_workers(
    sqlite_bundle: Exported, tmp_path: Path  # noqa: F811
) -> None:
    bundle = sqlite_bundle.copy(tmp_path)
    entry = entry_of(bundle.envelopes[5]).to_json_value()
    raw = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    depth = 500  # well past canonical_bytes' MAX_DEPTH (128)
    raw = raw.replace(b'"payload":{', b'"payload":{"aaa":' + b"[" * depth + b"]" * depth + b",", 1)
    with pytest.raises(MalformedError, match="nested deeper"):
        parse_canonical(raw)  # it used to parse, and a worker could not pickle it back
    bundle.envelopes[5] = sign_envelope(raw, FOREIGN).to_bytes()
    bundle.write()
    # workers=2 as `registry verify` runs by default (every core).
    report = verify_bundle(bundle.path, registry_key=sqlite_bundle.key, workers=2).report
    assert not report.ok
    assert any(f.seq == 5 for f in report.failures)


# --- 3. duplicated lines pass and inflate the reported figures ---------------------------------


@pytest.mark.parametrize("kind", [b"checkpoint", b"party_key"])
def test_a_line_listed_twice_fails_instead_of_being_counted_twice(
    sqlite_bundle: Exported, tmp_path: Path, kind: bytes  # noqa: F811
) -> None:
    lines = _lines(sqlite_bundle)
    at = max(i for i, raw in enumerate(lines) if raw.startswith(b'{"type":"' + kind + b'"'))
    lines.insert(at + 1, lines[at])
    report = verify_bundle(_write(tmp_path, lines), registry_key=sqlite_bundle.key).report
    exported = RawBundle.read(sqlite_bundle.path)
    assert not report.ok and any("twice" in f.message for f in report.failures)
    counted = report.log.checkpoints if kind == b"checkpoint" else report.party_keys
    listed = exported.checkpoints if kind == b"checkpoint" else exported.party_keys
    assert counted == len(listed)


# --- 4. the header's export time is reported without any check ---------------------------------


@pytest.mark.parametrize("exported_at", ["2000-01-01T00:00:00.000000Z", "not a time at all"])
def test_an_export_time_before_the_last_entry_or_no_time_is_found(
    sqlite_bundle: Exported, tmp_path: Path, exported_at: str  # noqa: F811
) -> None:
    target = tmp_path / "copy.jsonl"
    shutil.copy(sqlite_bundle.path, target)
    lines = target.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    header["exported_at"] = exported_at
    lines[0] = json.dumps(header, separators=(",", ":")).encode()
    report = verify_bundle(_write(tmp_path, lines), registry_key=sqlite_bundle.key).report
    assert report.to_json_value()["exported_at"] == exported_at
    assert not report.ok


def test_a_verification_goes_on_when_its_workers_die() -> None:
    """A worker killed in the middle (out of memory, a crash in C) breaks the whole process
    pool: the jobs it held, and every later one, are checked in this process instead."""
    context = Context(registry_keys={}, origin="x")

    def jobs() -> Iterator[Job]:
        for i in range(12):
            if i == 6:
                for child in multiprocessing.active_children():
                    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
                time.sleep(1.0)
            yield Job(context=context, envelopes=[None], checkpoints=[], party_keys={})

    results = list(_pipeline(jobs(), 2))
    assert len(results) == 12
    assert all(r.entries[0].failure is not None for _, r in results)
