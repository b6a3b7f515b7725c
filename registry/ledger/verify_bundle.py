"""Offline verification of an export bundle against one pinned registry key.

This module owns the auditor's whole check of a bundle (``registry verify BUNDLE``): with nothing
but the file and the registry key the auditor trusts (a note verifier string, or the raw base64
key), it checks the log (every envelope's signature, the ``seq``/``prev`` chain, the Merkle tree,
every signed checkpoint's root, in step; :class:`~registry.ledger.audit.LogAuditor`), replays
every entry (:class:`~registry.ledger.replay.Replay`: holder signatures, keys, nonces, expiry,
roles, effects re-derived, supply and buffer invariants), and checks the bundle's own index
lines (header, registry keys, party keys) against what the ledger says. Every failure is
collected into one report; nothing stops at the first. An entry whose registry signature fails
is still replayed when its bytes parse (the failure is reported all the same), so that one bad
signature does not bury every later entry under consequential failures.

Signature checks and canonical parsing, the bulk of the cost, run on ``workers`` processes over
chunks of entries and the checkpoints that fall in them (:mod:`registry.ledger.opening`).
Results are consumed in ledger order through a window of ``2 * workers`` chunks, so memory stays
bounded however long the ledger; the replay itself runs in order in this process.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import MalformedError
from registry.ledger.audit import Failure, LogAuditor, LogReport
from registry.ledger.bundle import (
    BundleReader,
    BundleRegistryKey,
    CheckpointLine,
    LineProblem,
    PartyKeyLine,
    TailLine,
)
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.entry import parse_time
from registry.ledger.keys import PublicKey, b64encode
from registry.ledger.opening import Context, Job, JobResult, OpenedCheckpoint, run_job
from registry.ledger.registry_keys import KeyPeriod
from registry.ledger.replay import Replay, ReplayedState

DEFAULT_CHUNK = 256
"""Entries per job: large enough to amortise inter-process traffic, small enough to stream."""

MAX_KEYS_SENT = 4096
"""Party keys sent with each job for instruction signatures (the most recently added)."""

WORKERS_FROM = 2000
"""Entries from which ``workers=None`` checks on every core: below it one process is faster,
since starting worker processes (each imports the CLI and the verifier) takes longer than
such a ledger takes to check. Measured on two cores: 1,000 entries took 1.6 s in one process
and 1.9 s with two workers, 3,000 took 3.4 s and 2.9 s."""


def default_workers(tree_size: int, cores: int) -> int:
    """The processes ``workers=None`` uses for a bundle of ``tree_size`` entries."""
    return max(cores, 1) if tree_size >= WORKERS_FROM else 1


DEFAULT_LIMIT_PER_CODE = 50
"""Failures of one code listed in a report; the rest are counted."""

EXIT_FAILED = 2
"""Exit status of ``registry verify`` when the bundle fails a check (1 is a usage error)."""


def pin_registry_key(text: str, *, origin: str) -> NoteVerifier:
    """The auditor's trust anchor from ``text``: a note verifier string
    (``<origin>+<keyid>+<base64>``, as ``registry init`` prints) or a raw base64 Ed25519 key,
    which is then named by the bundle's ``origin``. ``MalformedError`` if it is neither."""
    text = text.strip()
    if "+" in text.rstrip("="):
        try:
            return NoteVerifier.parse(text)
        except MalformedError:
            pass
    try:
        key = PublicKey.from_b64(text)
    except MalformedError as e:
        raise MalformedError(
            "--registry-key must be a note verifier key (<origin>+<keyid>+<base64>) or the "
            f"registry's raw Ed25519 public key in base64; got {text[:80]!r}"
        ) from e
    return NoteVerifier(name=origin, key=key)


@dataclass
class BundleReport:
    """What the verification of one bundle found; ``ok`` only when every check passed."""

    bundle: str
    origin: str
    tree_size: int
    exported_at: str
    registry_key: str
    log: LogReport
    #: The ledger's registry keys, each over the entries it signs (``valid_until_seq`` is the
    #: first it no longer signs): more than one after a key rotation.
    registry_keys: list[dict[str, Any]] = field(default_factory=list)
    #: The entry that rotated the pinned key away, if it was replaced: pinned to a retired key,
    #: the check takes the history its holder signed up to then (which may have leaked).
    pinned_key_replaced_at: int | None = None
    summary: dict[str, int] = field(default_factory=dict)
    #: Genesis flags of rules this version checks that the ledger does not adopt (and so is
    #: not held to): see :meth:`~registry.ledger.replay.ReplayedState.rules_not_adopted`.
    rules_not_adopted: list[str] = field(default_factory=list)
    party_keys: int = 0
    workers: int = 1
    seconds: float = 0.0
    against: str | None = None

    @property
    def ok(self) -> bool:
        return self.log.ok

    @property
    def failures(self) -> list[Failure]:
        return self.log.failures

    def to_json_value(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bundle": self.bundle,
            "origin": self.origin,
            "registry_key": self.registry_key,
            "registry_keys": self.registry_keys,
            "pinned_key_replaced_at": self.pinned_key_replaced_at,
            "tree_size": self.tree_size,
            "exported_at": self.exported_at,
            "entries": self.log.entries,
            "checkpoints": self.log.checkpoints,
            "party_keys": self.party_keys,
            "root": b64encode(self.log.root),
            "state": self.summary,
            "rules_not_adopted": self.rules_not_adopted,
            "against": self.against,
            "failure_count": self.log.failure_count,
            "failures": [f.to_json_value() for f in self.log.failures],
            "omitted": dict(sorted(self.log.omitted.items())),
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
        }

    def render(self) -> str:
        """A readable report: what was checked, then every failure with its seq."""
        log, s = self.log, self.summary
        lines = [
            f"bundle      {self.bundle}",
            f"log         {self.origin}: {log.entries} entries, {log.checkpoints} checkpoints, "
            f"root {b64encode(log.root)}",
            f"pinned key  {self.registry_key}",
        ]
        if len(self.registry_keys) > 1:
            lines.extend(
                f"{'key history' if i == 0 else '':<12}{k['key_id']} signs entries "
                f"{k['valid_from_seq']}.."
                + ("" if k["valid_until_seq"] is None else str(k["valid_until_seq"] - 1))
                for i, k in enumerate(self.registry_keys)
            )
        if self.pinned_key_replaced_at is not None:
            lines.append(
                f"note        the pinned key was replaced at entry {self.pinned_key_replaced_at}: "
                "pin the registry's current key (a replaced key may have leaked, and its holder "
                "could sign a history of their own up to then)"
            )
        if s:
            lines.append(
                f"replayed    {s['parties']} parties, {s['accounts']} accounts, "
                f"{s['projects']} projects, {s['forest_units']} forest units, "
                f"{s['reports']} reports, {s['batches']} batches in {s['blocks']} blocks"
            )
            lines.append(
                f"credits     issued {s['issued']} = active {s['active']} + retired "
                f"{s['retired']} + cancelled {s['cancelled']} tCO2e; buffer shortfall "
                f"{s['shortfall']}"
            )
        if log.entries:
            lines.append(
                "rules       the genesis adopts every rule this version checks"
                if not self.rules_not_adopted
                else "rules       not adopted by the genesis, so not checked: "
                + ", ".join(self.rules_not_adopted)
                + " (right for a ledger begun before them; --require-every-rule fails it)"
            )
        if self.against:
            lines.append(f"against     {self.against}")
        rate = log.entries / self.seconds if self.seconds > 0 else 0.0
        lines.append(
            f"checked in  {self.seconds:.2f} s with {self.workers} worker(s), {rate:,.0f} entries/s"
        )
        if self.ok:
            lines.append("PASS: every check passed")
            return "\n".join(lines)
        lines.append(f"FAIL: {log.failure_count} check(s) failed")
        lines.extend(f"  {f}" for f in log.failures)
        for code, count in sorted(log.omitted.items()):
            lines.append(f"  ... and {count} more [{code}] failures not listed")
        return "\n".join(lines)


@dataclass
class Verification:
    """The report and the replayed state (to compare with a database, ``--against``)."""

    report: BundleReport
    state: ReplayedState


class _Lookahead:
    """An iterator of bundle tail lines with one line of lookahead."""

    def __init__(self, lines: Iterator[TailLine]) -> None:
        self._lines = lines
        self._next: TailLine | None = None
        self._done = False

    def peek(self) -> TailLine | None:
        if self._next is None and not self._done:
            self._next = next(self._lines, None)
            self._done = self._next is None
        return self._next

    def pop(self) -> TailLine | None:
        line = self.peek()
        self._next = None
        return line


def _pipeline(jobs: Iterator[Job], workers: int) -> Iterator[tuple[Job, JobResult]]:
    """Run ``jobs`` on ``workers`` processes; yield results in job order, keeping at most
    ``2 * workers`` jobs in flight."""
    if workers <= 1:
        for job in jobs:
            yield job, run_job(job)
        return
    # spawn, not fork: the caller may have threads (a server, a test client) that fork would
    # copy in a half-held state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        window: deque[tuple[Job, Future[JobResult] | None]] = deque()
        for job in jobs:
            try:
                window.append((job, pool.submit(run_job, job)))
            except BrokenProcessPool:  # a worker died (killed, out of memory): go on here
                window.append((job, None))
            if len(window) >= 2 * workers:
                done, future = window.popleft()
                yield done, _result(done, future)
        while window:
            done, future = window.popleft()
            yield done, _result(done, future)


def _result(job: Job, future: Future[JobResult] | None) -> JobResult:
    """A worker's result; a job no worker took (``None``: the pool broke) or one it could not
    finish or hand back (an input no check foresaw) is run in this process, where whatever it
    meets is reported or raised as usual."""
    try:
        if future is not None:
            return future.result()
    except Exception:
        pass
    return run_job(job)


class _Verifier:
    """One run of :func:`verify_bundle`; holds the auditor, the replay and the report."""

    def __init__(
        self,
        reader: BundleReader,
        verifier: NoteVerifier,
        *,
        chunk_size: int,
        limit_per_code: int | None,
    ) -> None:
        self.reader = reader
        self.header = reader.header
        self.verifier = verifier
        self.chunk_size = chunk_size
        self.report = LogReport(limit_per_code=limit_per_code)
        self.listed = self._listed_keys()
        # Entries and checkpoints are opened with every key the header lists: which of them
        # signs what, if any, is for the ledger's own key history to say (the log auditor).
        keys = {verifier.key.key_id: verifier.key}
        keys.update((key.key_id, key) for key, _ in self.listed.values())
        self.context = Context(registry_keys=keys, origin=self.header.origin)
        self.auditor = LogAuditor(keys=keys, origin=self.header.origin, report=self.report)
        self.replay = Replay(origin=self.header.origin, report=self.report)
        self.tail = _Lookahead(reader.tail())
        self._keys_sent: dict[str, bytes] = {}
        self._keys_count = -1

    def fail(
        self, code: str, message: str, seq: int | None = None, checkpoint: bool = False
    ) -> None:
        self.report.add(Failure(code=code, message=message, seq=seq, checkpoint=checkpoint))

    def check_header(self) -> None:
        pinned = self.verifier
        if pinned.name != self.header.origin:
            self.fail(
                "bad_bundle",
                f"the pinned key is for the log {pinned.name!r}, but the "
                f"bundle is for {self.header.origin!r}",
            )

    def _listed_keys(self) -> dict[str, tuple[PublicKey, BundleRegistryKey]]:
        """The header's registry keys that are keys, by key id; reports those that are not."""
        listed: dict[str, tuple[PublicKey, BundleRegistryKey]] = {}
        for k in self.header.registry_keys:
            if k.key_id in listed:
                self.fail("bad_bundle", f"the header lists registry key {k.key_id} twice")
                continue
            try:
                key = PublicKey.from_b64(k.public_key)
            except MalformedError as e:
                self.fail("bad_bundle", f"header registry key {k.key_id}: {e.message}")
                continue
            if key.key_id != k.key_id:
                self.fail(
                    "bad_bundle",
                    f"header registry key {k.key_id} is not the SHA-256 of "
                    f"its public key ({key.key_id})",
                )
                continue
            listed[k.key_id] = (key, k)
        return listed

    def check_registry_keys(self) -> list[KeyPeriod]:
        """The pinned key is one of the ledger's registry keys, and the header lists exactly
        the ledger's key history: each key over the entries it signs."""
        periods = self.auditor.schedule.periods
        if not periods:
            return periods  # no genesis: nothing binds the ledger to any key (reported)
        origin, pinned = self.header.origin, self.verifier
        if pinned.key.key_id not in self.auditor.schedule.key_ids():
            self.fail(
                "unknown_key",
                f"the pinned key {pinned.key.key_id} is not a registry key of this ledger "
                f"(its keys: {', '.join(p.key.key_id for p in periods)})",
                seq=0,
            )
        listed = dict(self.listed)
        for p in periods:
            found = listed.pop(p.key.key_id, None)
            if found is None:
                self.fail(
                    "bad_bundle",
                    f"the header does not list registry key {p.key.key_id}, which the ledger "
                    f"establishes from entry {p.valid_from_seq}",
                )
                continue
            line = found[1]
            verifier = NoteVerifier(name=origin, key=p.key).verifier_string()
            if line.note_verifier != verifier:
                self.fail(
                    "bad_bundle",
                    f"header note verifier {line.note_verifier!r} is not {verifier!r}, the "
                    f"registry key {p.key.key_id} under the origin {origin!r}",
                )
            if (line.valid_from_seq, line.valid_until_seq) != (
                p.valid_from_seq,
                p.valid_until_seq,
            ):
                self.fail(
                    "bad_bundle",
                    f"the header says registry key {p.key.key_id} signs "
                    f"{_span(line.valid_from_seq, line.valid_until_seq)}; in the ledger it "
                    f"signs {_span(p.valid_from_seq, p.valid_until_seq)}",
                )
        for key_id in listed:
            self.fail(
                "unknown_key",
                f"the header lists registry key {key_id}, which no ledger entry establishes",
            )
        return periods

    def _party_keys(self) -> dict[str, bytes]:
        keys = self.replay.state.keys
        if len(keys) != self._keys_count:
            recent = itertools.islice(reversed(keys.items()), MAX_KEYS_SENT)
            self._keys_sent = {key_id: k.public_key for key_id, k in recent}
            self._keys_count = len(keys)
        return self._keys_sent

    def _checkpoints_up_to(self, size: int | None) -> list[tuple[int, int, str]]:
        """Checkpoint lines next in the file whose size is at most ``size`` (all if None)."""
        found: list[tuple[int, int, str]] = []
        while True:
            line = self.tail.peek()
            if isinstance(line, LineProblem):
                self.tail.pop()
                self.fail("bad_bundle", line.message)
                continue
            if not isinstance(line, CheckpointLine) or (size is not None and line.size > size):
                return found
            self.tail.pop()
            found.append((line.line, line.size, line.note))

    def jobs(self) -> Iterator[Job]:
        position = 0
        entry_lines = self.reader.entries()
        while True:
            chunk = list(itertools.islice(entry_lines, self.chunk_size))
            if not chunk:
                break
            envelopes: list[bytes | None] = []
            for offset, line in enumerate(chunk):
                seq = position + offset
                if line.problem is not None:
                    self.fail("bad_bundle", line.problem, seq=seq)
                elif line.seq != seq:
                    self.fail(
                        "bad_bundle",
                        f"line {line.line} says seq {line.seq}, but it is entry line {seq}",
                        seq=seq,
                    )
                envelopes.append(line.envelope)
            position += len(chunk)
            yield Job(
                self.context, envelopes, self._checkpoints_up_to(position), self._party_keys()
            )
        yield Job(self.context, [], self._checkpoints_up_to(None), {})

    def _add_checkpoint(self, cp: OpenedCheckpoint) -> None:
        if cp.failure is not None or cp.checkpoint is None:
            code, message = cp.failure or ("bad_checkpoint", "unreadable")
            self.fail(
                code, f"checkpoint on line {cp.line}: {message}", seq=cp.size, checkpoint=True
            )
            return
        if cp.checkpoint.size != cp.size:
            self.fail(
                "bad_bundle",
                f"checkpoint line {cp.line} says size {cp.size}, but its "
                f"note signs size {cp.checkpoint.size}",
                seq=cp.size,
                checkpoint=True,
            )
        self.auditor.add_opened_checkpoint(cp.checkpoint, cp.signers)

    def consume(self, job: Job, result: JobResult) -> None:
        """Feed one job's results in order: each checkpoint as soon as the tree reaches the size
        its line states, each entry to the log auditor and then to the replay."""
        checkpoints = deque(result.checkpoints)

        def reached() -> None:
            while checkpoints and checkpoints[0].size <= self.auditor.size:
                self._add_checkpoint(checkpoints.popleft())

        reached()
        for data, opened in zip(job.envelopes, result.entries, strict=True):
            failure = None if opened.failure is None else Failure(*opened.failure)
            self.auditor.add_opened(
                data if data is not None else b"",
                opened.entry if opened.trusted else None,
                failure,
                opened.signers,
            )
            if opened.entry is not None:
                self.replay.apply(opened.entry, opened.signature)
            reached()
        # What is left signs sizes the tree has not reached (yet, or ever).
        while checkpoints:
            self._add_checkpoint(checkpoints.popleft())

    def check_export_time(self) -> None:
        """The header's export time is a time (the report states it), and not before the
        last entry's: the registry exports what it has written."""
        exported, last = self.header.exported_at, self.auditor.last_time
        try:
            parse_time(exported)
        except ValueError:
            self.fail(
                "bad_bundle",
                f"the header's export time {exported!r} is not a time YYYY-MM-DDTHH:MM:SS.ffffffZ",
            )
            return
        if last is not None and exported < last:  # fixed-width UTC: text order is time order
            self.fail(
                "bad_bundle",
                f"the header says the bundle was exported at {exported}, before its last "
                f"entry's time {last}",
            )

    def check_party_keys(self) -> int:
        """Compare the bundle's party key lines with the key history the ledger records."""
        keys = self.replay.state.keys
        seen: set[str] = set()
        count = 0
        while (line := self.tail.pop()) is not None:
            if isinstance(line, LineProblem):
                self.fail("bad_bundle", line.message)
                continue
            if isinstance(line, CheckpointLine):
                self.fail(
                    "bad_bundle",
                    f"checkpoint line {line.line} comes after a checkpoint "
                    "of a larger size or after the party keys",
                )
                continue
            assert isinstance(line, PartyKeyLine)
            k = line.key
            if k.key_id in seen:
                self.fail(
                    "bad_bundle", f"party key line {line.line}: key {k.key_id} is listed twice"
                )
                continue
            count += 1
            known = keys.get(k.key_id)
            if known is None:
                self.fail(
                    "bad_bundle",
                    f"party key line {line.line}: key {k.key_id} of "
                    f"{k.party_id} was never added by any entry",
                )
                continue
            seen.add(k.key_id)
            listed = (k.party_id, k.public_key, k.valid_from_seq, k.valid_until_seq)
            ledger = (
                known.party_id,
                b64encode(known.public_key),
                known.added_seq,
                known.revoked_seq,
            )
            if listed != ledger:
                self.fail(
                    "bad_bundle",
                    f"party key line {line.line}: key {k.key_id} is listed "
                    f"as (party, key, from, until) {listed}, the ledger says {ledger}",
                )
        for key_id, known in keys.items():
            if key_id not in seen:
                self.fail(
                    "bad_bundle",
                    f"key {key_id} of party {known.party_id} (added at "
                    f"entry {known.added_seq}) is missing from the bundle's party keys",
                )
        return count


def _span(start: int, end: int | None) -> str:
    if end is None:
        return f"from entry {start} on, with no end"
    return f"entries {start} to {end - 1}" if end > start else f"no entry ({start}..{end})"


def verify_bundle(
    path: Path,
    *,
    registry_key: str,
    workers: int | None = 1,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    limit_per_code: int | None = DEFAULT_LIMIT_PER_CODE,
) -> Verification:
    """Check the bundle at ``path`` against the pinned ``registry_key``; see the module docstring.

    ``workers=None`` uses every core, for a ledger of at least :data:`WORKERS_FROM` entries
    (one process below that). ``progress`` is called with the number of entries checked
    so far. Raises :class:`~registry.ledger.bundle.BundleFormatError` (a usage error) only when
    the file is not a bundle at all or the key cannot be read; everything else is a failure in
    the returned report.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    started = time.perf_counter()
    reader = BundleReader(path)
    count = (
        workers
        if workers is not None
        else default_workers(reader.header.tree_size, os.cpu_count() or 1)
    )
    pinned = pin_registry_key(registry_key, origin=reader.header.origin)
    run = _Verifier(reader, pinned, chunk_size=chunk_size, limit_per_code=limit_per_code)
    run.check_header()
    for job, result in _pipeline(run.jobs(), max(count, 1)):
        run.consume(job, result)
        if progress is not None and job.envelopes:
            progress(run.auditor.size)
    log = run.auditor.finish()
    run.replay.finish()
    # The key history is the log auditor's, whose signature checks decide each rotation (what
    # --against compares with the key table).
    run.replay.state.registry_keys = list(run.auditor.schedule.periods)
    if log.entries and run.auditor.signed_size != log.entries:
        # The registry signs a checkpoint with every transaction: a whole ledger ends on one,
        # whose root is the one this report gives.
        signed = run.auditor.signed_size
        run.fail(
            "bad_checkpoint",
            f"no checkpoint signs the ledger's {log.entries} entries"
            if signed is None
            else f"no checkpoint signs the whole ledger: the last signs {signed} of its "
            f"{log.entries} entries",
            seq=log.entries,
            checkpoint=True,
        )
    if run.header.tree_size != log.entries:
        run.fail(
            "bad_bundle",
            f"the header says the log holds {run.header.tree_size} entries; "
            f"the bundle has {log.entries} entry lines",
        )
    run.check_export_time()
    periods = run.check_registry_keys()
    party_keys = run.check_party_keys()
    report = BundleReport(
        bundle=str(path),
        origin=run.header.origin,
        tree_size=run.header.tree_size,
        exported_at=run.header.exported_at,
        registry_key=pinned.describe(),
        registry_keys=[
            {"key_id": p.key.key_id, "valid_from_seq": p.valid_from_seq,
             "valid_until_seq": p.valid_until_seq}
            for p in periods
        ],
        pinned_key_replaced_at=next(
            (p.valid_until_seq - 1 for p in periods
             if p.key == pinned.key and p.valid_until_seq is not None),
            None,
        ),
        log=log,
        summary=run.replay.state.summary(),
        rules_not_adopted=run.replay.state.rules_not_adopted(),
        party_keys=party_keys,
        workers=max(count, 1),
        seconds=time.perf_counter() - started,
    )
    return Verification(report=report, state=run.replay.state)
