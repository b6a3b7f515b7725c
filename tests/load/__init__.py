"""Load and fault tests, and their shared harness: real servers, many clients, then every check.

The race and crash tests run ``registry serve`` exactly as an operator would (a subprocess
configured by ``REGISTRY_*`` variables, on a free loopback port), hit it from many client
threads, kill it with SIGKILL when told to, and then prove that nothing went wrong with
:func:`check_registry`:

- every acknowledged answer names an entry that exists, with the same leaf hash, carrying the
  same signed instruction, exactly once (one seq per instruction, one answer per key);
- the ledger verifies (``audit_store``: signatures, chain, tree, checkpoints), entry times never
  go backwards, and every checkpoint ``1..n`` is signed, has the root recomputed from the
  entries, and is proved consistent with the one before it by ``/v1/proofs/consistency``;
- replaying the credit entries' effects gives exactly the blocks the registry holds (read back
  with the administrator's key): no serial in two blocks, no empty or negative block, every
  serial of every batch held once, and active + retired + cancelled == quantity per batch;
- the bookkeeping tables agree with the ledger: one used nonce and one idempotency record per
  instruction entry, pointing at that entry;
- offline, as an auditor would: the export bundle verifies against the pinned registry key (a
  full replay: holder signatures, nonces, effects, supply) and the replayed state equals the
  database's state tables (``compare_state``).

Bounded everywhere: servers must answer within ``START_TIMEOUT``, every client request has a
timeout, and every loop has a fixed count. ``REGISTRY_TEST_LONG=1`` runs the long variants.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from registry.config import Settings
from registry.errors import LedgerError
from registry.ledger import merkle
from registry.ledger.checkpoint import NoteVerifier, open_checkpoint
from registry.ledger.entry import Entry, open_entry, parse_time
from registry.ledger.keys import PublicKey
from registry.service.context import Registry
from registry.service.ledger import audit_store
from registry.service.setup import load_signing_key
from registry.store import ledger_repo
from registry.store.db import read_session
from registry.store.tables import IdempotencyRow, NonceRow
from tests.world import ADMIN, World

LONG = os.environ.get("REGISTRY_TEST_LONG") == "1"
long_only = pytest.mark.skipif(not LONG, reason="long variant: set REGISTRY_TEST_LONG=1")

START_TIMEOUT = 90.0
"""Seconds a server may take to answer after start (imports, migrations, a loaded machine)."""

CREDIT_KINDS = ("credits.issue", "credits.transfer", "credits.retire", "credits.cancel")
MOVEMENT_STATUS = {"credits.transfer": "active", "credits.retire": "retired",
                   "credits.cancel": "cancelled"}
MOVEMENT_DESTINATION = {"credits.retire": "RETIREMENT", "credits.cancel": "CANCELLATION"}



EXPECTED_ERRORS = (
    "ERROR:    registry.store.db: ",  # the database lost, full, read-only or moved
    "ERROR:    registry.api.app: registry error: ",  # a 503 or 504 that says so to its client
    "ERROR:    registry.service.group_commit: a group commit of ",  # then each one alone
)
"""The registry's log lines on its database's state, which a test that causes it expects."""

_TRACEBACK_LINES = ("Traceback", "The above exception", "During handling")


def retirement_or_transfer(
    rng: random.Random, body: dict[str, Any], accounts: Sequence[str], reason: str
) -> tuple[str, dict[str, Any]]:
    """``body`` (account, batch, what to move) made a retirement one time in four, with
    ``reason`` as its beneficiary, or else a transfer to another of ``accounts``."""
    if rng.random() < 0.25:
        body.update(beneficiary=reason, purpose="voluntary", jurisdiction="KH",
                    reason="load test")
        return "credits.retire", body
    body["to_account"] = rng.choice([a for a in accounts if a != body["account"]])
    return "credits.transfer", body

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve_command(port: int, workers: int) -> list[str]:
    script = Path(sys.executable).parent / "registry"
    prefix = [str(script)] if script.exists() else [
        sys.executable, "-c", "from registry.cli import main; main()"]
    return [*prefix, "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers)]


@dataclass
class ServerProcess:
    """One ``registry serve`` subprocess for ``settings``; restartable on the same database."""

    settings: Settings
    log_path: Path
    port: int = field(default_factory=free_port)
    workers: int = 1
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    """More of the server's environment (``REGISTRY_LOCK_TIMEOUT``, say)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update(REGISTRY_DATABASE_URL=self.settings.database_url,
                   REGISTRY_ORIGIN=self.settings.origin,
                   REGISTRY_KEY_FILE=str(self.settings.key_file), **self.env)
        for attempt in range(3):
            with open(self.log_path, "ab") as log:
                log.write(f"--- start {self.starts} on port {self.port}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    _serve_command(self.port, self.workers), env=env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            self.starts += 1
            if self._wait_ready():
                return
            # Most likely the port was taken while we were down: take another one.
            self.kill()
            if attempt < 2:
                self.port = free_port()
        raise RuntimeError(f"registry serve did not start; log:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                response = httpx.get(f"{self.url}/v1/checkpoint", timeout=2)
                if response.status_code == 200 and self._ours(response.text):
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        return False

    def _ours(self, note: str) -> bool:
        """Whether ``note`` is signed by this server's registry: a port found free may have been
        taken since by another test process's server, and ours then exits (and starts anew)."""
        key = load_signing_key(self.settings).public_key
        try:
            open_checkpoint(note, origin=self.settings.origin,
                            verifiers=[NoteVerifier(name=self.settings.origin, key=key)])
        except LedgerError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL to every process of the server: no shutdown, no flush, no rollback;
        whatever was in flight is cut off."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, within: float = 20) -> int | None:
        """SIGTERM to the whole process group, as a service manager stops a service; the
        exit code, or ``None`` if it had not ended ``within`` seconds (it is then killed)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def errors_logged(self) -> list[str]:
        """Tracebacks (each whole, with the line before it), 5xx lines and ERROR lines the
        server wrote: each is a bug (or a kill's debris), but for the registry's lines on its
        database's state (:data:`EXPECTED_ERRORS`), which the tests that cause that state check
        themselves."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        found: list[str] = []
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if "Traceback" in line:
                # The whole traceback, and the line before it, which says whose it is: a
                # failure seen once in a loaded run must say what it was.
                end = i + 1
                while end < len(lines) and (not lines[end] or lines[end][0].isspace()
                                            or lines[end].startswith(_TRACEBACK_LINES)):
                    end += 1
                if found and found[-1] == lines[i - 1]:
                    found.pop()  # the error line the traceback is of: said with it
                found.append("\n".join(lines[max(i - 1, 0):end + 1]))
                i = end + 1
                continue
            if '" 500' in line or ("ERROR" in line and not line.startswith(EXPECTED_ERRORS)):
                found.append(line)
            i += 1
        return found


@contextmanager
def serving(
    settings: Settings, log_dir: Path, count: int = 1, workers: int = 1
) -> Iterator[list[ServerProcess]]:
    """``count`` servers sharing one database (and one key file), each with ``workers`` uvicorn
    workers; stopped afterwards."""
    servers = [
        ServerProcess(settings, log_dir / f"server-{i}.log", workers=workers) for i in range(count)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


# --- what clients saw -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """An acknowledged (200) answer: ``body`` is the registry's ``{seq, leaf_hash, ...}``."""

    key: str
    actor: str
    nonce: str
    kind: str
    body: dict[str, Any]
    replayed: bool


def ack_of(response: httpx.Response, *, key: str, signed: dict[str, Any]) -> Ack:
    instruction = signed["instruction"]
    return Ack(key=key, actor=instruction["actor"], nonce=instruction["nonce"],
               kind=instruction["type"], body=response.json(),
               replayed=response.headers.get("Idempotent-Replayed") == "true")


def error_code(response: httpx.Response) -> str:
    try:
        code: str = response.json()["error"]["code"]
    except Exception:
        return f"http_{response.status_code}"
    return code


# --- the checks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    seq: int
    leaf_hash: bytes
    envelope: bytes
    entry: Entry


def read_ledger(http: httpx.Client, registry: Registry,
                keys: Mapping[str, PublicKey] | None = None) -> list[Stored]:
    """Every entry through the public API, opened with the registry's key (or with ``keys``,
    for a ledger whose key was rotated), seq 0..n-1."""
    if keys is None:
        keys = {registry.signer.public_key.key_id: PublicKey(raw=registry.signer.public_key.raw)}
    stored: list[Stored] = []
    while True:
        page = http.get("/v1/entries", params={"start": len(stored), "limit": 1000})
        page.raise_for_status()
        data = page.json()
        for row in data["data"]:
            envelope = base64.b64decode(row["envelope"])
            leaf = base64.b64decode(row["leaf_hash"])
            assert row["seq"] == len(stored), f"entries out of order at {row['seq']}"
            assert merkle.leaf_hash(envelope) == leaf, f"leaf hash of entry {row['seq']} is wrong"
            stored.append(Stored(row["seq"], leaf, envelope, open_entry(envelope, keys)))
        if len(stored) >= data["tree_size"] or not data["data"]:
            assert len(stored) == data["tree_size"]
            return stored


def _instruction_of(entry: Entry) -> tuple[str, str] | None:
    instruction = entry.payload.get("instruction")
    if not isinstance(instruction, dict):
        return None
    return str(instruction["actor"]), str(instruction["nonce"])


def check_acknowledged(ledger: Sequence[Stored], acks: Sequence[Ack]) -> None:
    """Every acknowledged answer is in the ledger, exactly once, as the instruction it answered."""
    seen: dict[tuple[str, str], int] = {}
    for s in ledger:
        instruction = _instruction_of(s.entry)
        if instruction is not None:
            assert instruction not in seen, (
                f"instruction {instruction} is in the ledger twice: {seen[instruction]}, {s.seq}")
            seen[instruction] = s.seq
    by_instruction: dict[tuple[str, str], set[int]] = defaultdict(set)
    by_key: dict[str, list[Ack]] = defaultdict(list)
    for ack in acks:
        seq = ack.body["seq"]
        assert 0 < seq < len(ledger), f"acknowledged seq {seq} is not in the ledger: {ack}"
        s = ledger[seq]
        assert base64.b64encode(s.leaf_hash).decode() == ack.body["leaf_hash"], (
            f"acknowledged leaf hash differs from entry {seq}: {ack}")
        assert s.entry.kind == ack.kind == ack.body["kind"], (ack, s.entry.kind)
        assert _instruction_of(s.entry) == (ack.actor, ack.nonce), (
            f"entry {seq} carries {_instruction_of(s.entry)}, not the acknowledged {ack}")
        assert s.entry.payload["effects"] == ack.body["result"], (ack, s.entry.payload)
        by_instruction[(ack.actor, ack.nonce)].add(seq)
        by_key[ack.key].append(ack)
    for instruction, seqs in by_instruction.items():
        assert len(seqs) == 1, f"instruction {instruction} acknowledged as entries {sorted(seqs)}"
    for key, answers in by_key.items():
        assert all(a.body == answers[0].body for a in answers), (
            f"Idempotency-Key {key} got different answers: {answers}")


def check_times(ledger: Sequence[Stored]) -> None:
    times = [parse_time(s.entry.time) for s in ledger]
    for a, b in pairwise(ledger):
        assert times[a.seq] <= times[b.seq], (
            f"entry {b.seq} is dated {b.entry.time}, before entry {a.seq} ({a.entry.time})")


def check_checkpoints(http: httpx.Client, ledger: Sequence[Stored], registry: Registry,
                      verifier_for: Callable[[int], NoteVerifier] | None = None) -> None:
    """Every checkpoint signed: the recomputed root, each consistent with the one before.

    A transaction that carried out several instructions signs one checkpoint for all of them,
    so not every size has one; the last size always does. ``verifier_for(size)`` is the key
    that must sign the checkpoint of that size (the registry's key if not given: a ledger whose
    key was rotated has one per key in force).
    """
    if verifier_for is None:
        def verifier_for(_size: int) -> NoteVerifier:
            return registry.note_verifier
    compact = merkle.CompactRange()
    previous: tuple[int, bytes] | None = None
    signed = 0
    for s in ledger:
        compact.append(s.leaf_hash)
        size = s.seq + 1
        response = http.get(f"/v1/checkpoints/{size}")
        if response.status_code == 404 and size < len(ledger):
            continue
        assert response.status_code == 200, f"no checkpoint for size {size}: {response.text}"
        cp = open_checkpoint(response.text, origin=registry.origin,
                             verifiers=[verifier_for(size)])
        assert cp.size == size and cp.root == compact.root(), f"checkpoint {size} has a wrong root"
        if previous is not None:
            first, first_root = previous
            proof = http.get("/v1/proofs/consistency", params={"first": first, "second": size})
            assert proof.status_code == 200, proof.text
            nodes = [base64.b64decode(h) for h in proof.json()["proof"]]
            merkle.verify_consistency(first, size, nodes, first_root, cp.root)
        previous = (size, cp.root)
        signed += 1
    assert signed >= 1
    latest = http.get("/v1/checkpoint")
    assert open_checkpoint(latest.text, origin=registry.origin,
                           verifiers=[verifier_for(len(ledger))]).size == len(ledger)


Segment = tuple[int, int, str, str]
"""``(start, end, account, status)`` of serials in one batch."""


def _normalise(segments: Sequence[Segment]) -> list[Segment]:
    """Sorted, adjacent pieces with the same holder and status merged (splits do not matter)."""
    merged: list[Segment] = []
    for start, end, account, status in sorted(segments):
        assert start <= end, f"empty or negative block {start}-{end} in {account}"
        if merged:
            p_start, p_end, p_account, p_status = merged[-1]
            assert start > p_end, f"serial {start} is in two blocks ({p_account} and {account})"
            if start == p_end + 1 and (account, status) == (p_account, p_status):
                merged[-1] = (p_start, end, account, status)
                continue
        merged.append((start, end, account, status))
    return merged


def check_as_asked(s: Stored) -> None:
    """A movement moved exactly what its signed instruction asked: that batch, from and to
    those accounts, that quantity or that range; never less (a partial fill), never more."""
    asked = s.entry.payload["instruction"]["body"]
    effects = s.entry.payload["effects"]
    assert (effects["batch"], effects["from"], effects.get("to")) == (
        asked["batch"], asked["account"], asked.get("to_account")), (
        f"entry {s.seq} moved {effects} for the instruction {asked}")
    moved = sum(b["end"] - b["start"] + 1 for b in effects["blocks"])
    if asked.get("range") is not None:
        wanted = asked["range"]
        serials = sorted((b["start"], b["end"]) for b in effects["blocks"])
        assert serials and serials[0][0] == wanted["start"] and serials[-1][1] == wanted["end"] \
            and moved == wanted["end"] - wanted["start"] + 1, (
            f"entry {s.seq} moved {serials}, its instruction asked for {wanted}")
    else:
        assert moved == effects["quantity"] == asked["quantity"], (
            f"entry {s.seq} moved {moved} credits, its instruction asked for {asked['quantity']}")


def replay_credits(ledger: Sequence[Stored]) -> dict[str, list[Segment]]:
    """Each batch's serials as the ledger's effects place them, refusing any impossible move."""
    batches: dict[str, list[Segment]] = {}
    for s in ledger:
        if s.entry.kind not in CREDIT_KINDS:
            assert not s.entry.kind.startswith("credits.") and s.entry.kind != "redd.reversal", (
                f"replay does not know {s.entry.kind}")
            continue
        effects = s.entry.payload["effects"]
        batch = effects["batch"]
        if s.entry.kind == "credits.issue":
            assert batch not in batches, f"batch {batch} issued twice"
            batches[batch] = [(b["start"], b["end"], b["account"], "active")
                              for b in effects["blocks"]]
            assert sum(e - st + 1 for st, e, _, _ in batches[batch]) == effects["quantity"]
            continue
        source = effects["from"]
        destination = effects.get("to", MOVEMENT_DESTINATION.get(s.entry.kind))
        check_as_asked(s)
        status = MOVEMENT_STATUS[s.entry.kind]
        segments = batches[batch]
        for moved in effects["blocks"]:
            lo, hi = moved["start"], moved["end"]
            out: list[Segment] = []
            covered = 0
            for start, end, account, st in segments:
                if end < lo or start > hi:
                    out.append((start, end, account, st))
                    continue
                assert (account, st) == (source, "active"), (
                    f"entry {s.seq} moves {batch} {lo}-{hi} from {source}, but {start}-{end} "
                    f"is {st} in {account}: a double spend")
                if start < lo:
                    out.append((start, lo - 1, account, st))
                if end > hi:
                    out.append((hi + 1, end, account, st))
                a, b = max(start, lo), min(end, hi)
                covered += b - a + 1
                out.append((a, b, destination, status))
            assert covered == hi - lo + 1, f"entry {s.seq} moves {lo}-{hi} but not all are held"
            segments = out
        batches[batch] = _normalise(segments)
        assert sum(b["end"] - b["start"] + 1 for b in effects["blocks"]) == effects["quantity"]
    return {batch: _normalise(segments) for batch, segments in batches.items()}


def _paged(world: World, path: str, *, party: str | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for _ in range(10_000):
        response = world.read(path, party=party, params={"offset": len(items), "limit": 500})
        assert response.status_code == 200, response.text
        page = response.json()
        page = page.get("blocks", page)
        items.extend(page["data"])
        if len(items) >= page["count"] or not page["data"]:
            return items
    raise AssertionError(f"{path} never ended")


def check_state(world: World, ledger: Sequence[Stored]) -> None:
    """The blocks the registry holds are exactly what replaying the ledger gives."""
    expected = replay_credits(ledger)
    held: dict[str, list[Segment]] = defaultdict(list)
    for acct in _paged(world, "/v1/accounts"):
        for block in _paged(world, f"/v1/accounts/{acct['id']}/holdings", party=ADMIN):
            assert block["account"] == acct["id"]
            assert block["quantity"] == block["end"] - block["start"] + 1 > 0, block
            held[block["batch"]].append(
                (block["start"], block["end"], block["account"], block["status"]))
    actual = {batch: _normalise(segments) for batch, segments in held.items()}
    assert actual == expected, "the registry's blocks differ from the ledger's replay"
    for batch in _paged(world, "/v1/batches"):
        segments = expected[batch["id"]]
        assert segments[0][0] == 1 and segments[-1][1] == batch["quantity"]
        assert all(b[0] == a[1] + 1 for a, b in pairwise(segments)), (
            f"batch {batch['id']} has serials nobody holds")
        totals = {"active": 0, "retired": 0, "cancelled": 0}
        for start, end, _, status in segments:
            totals[status] += end - start + 1
        assert {k: batch[k] for k in totals} == totals, (batch, totals)
        assert sum(totals.values()) == batch["quantity"]


def check_store(registry: Registry, ledger: Sequence[Stored]) -> None:
    """The ledger audit passes, and nonces and idempotency records match the entries one to one."""
    with read_session(registry.engine) as session:
        report = audit_store(session, registry)
        assert report.ok, "ledger audit failed:\n" + "\n".join(map(str, report.failures))
        assert report.entries == len(ledger) == ledger_repo.tree_size(session)
        nonces = {(r.party_id, r.nonce): r.seq for r in session.exec(select(NonceRow)).all()}
        keys = session.exec(select(IdempotencyRow)).all()
    # Genesis and a key rotation are the registry's own entries: no instruction, no nonce.
    instructions = {instruction: s.seq for s in ledger
                    if (instruction := _instruction_of(s.entry)) is not None}
    assert nonces == instructions, "used nonces do not match the ledger's instructions"
    by_seq: dict[int, list[IdempotencyRow]] = defaultdict(list)
    for row in keys:
        by_seq[row.seq].append(row)
    assert sorted(by_seq) == sorted(instructions.values()), (
        "idempotency records do not match the entries one to one")
    for seq, rows in by_seq.items():
        assert len(rows) == 1, f"entry {seq} has {len(rows)} idempotency records"
        answer = rows[0]
        assert answer.status_code == 200
        assert base64.b64decode(json.loads(answer.response)["leaf_hash"]) == ledger[seq].leaf_hash


def check_offline(registry: Registry, workdir: Path) -> None:
    """Export, verify the bundle with the pinned key, compare its replay with the state tables."""
    from registry.ledger.verify_bundle import verify_bundle
    from registry.service.compare import compare_ledger, compare_state
    from registry.service.export import export_bundle

    bundle = workdir / "export.jsonl"
    export_bundle(registry.engine, bundle)
    verification = verify_bundle(bundle, registry_key=registry.note_verifier.verifier_string(),
                                 workers=1)
    assert verification.report.ok, verification.report.render()
    log = verification.report.log
    with read_session(registry.engine) as session:
        differences = compare_ledger(session, log.entries, log.root) or compare_state(
            session, verification.state
        )
    assert not differences, "state tables differ from the replay:\n" + "\n".join(
        map(str, differences[:20]))


def check_registry(world: World, registry: Registry, acks: Sequence[Ack],
                   workdir: Path) -> list[Stored]:
    """Every check of the module docstring, through the API and the store; returns the ledger."""
    ledger = read_ledger(world.http.http, registry)
    check_acknowledged(ledger, acks)
    check_times(ledger)
    check_checkpoints(world.http.http, ledger, registry)
    check_state(world, ledger)
    check_store(registry, ledger)
    check_offline(registry, workdir)
    return ledger
