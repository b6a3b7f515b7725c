"""Checking a whole ledger from its bytes alone: signatures, chain, tree and checkpoints.

The server (for ``--against`` and self-checks) and the offline auditor use this same code. It
streams: entries are read once, in order, and memory stays O(log n) for the tree plus the
checkpoints not yet reached. :func:`audit_log` collects every failure for a report;
:func:`verify_log` raises on the first, for callers that only need yes or no.
:class:`LogAuditor` is the same check fed one item at a time, for a verifier that opens
envelopes elsewhere (in worker processes) or reads checkpoints lazily from a bundle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from registry.errors import (
    ChainError,
    CheckpointError,
    ForkError,
    RegistryError,
    VerificationFailedError,
)
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, open_checkpoint_signers
from registry.ledger.entry import Entry
from registry.ledger.keys import PublicKey
from registry.ledger.merkle import CompactRange, leaf_hash
from registry.ledger.opening import open_envelope
from registry.ledger.registry_keys import KeySchedule


@dataclass(frozen=True)
class Failure:
    """One thing found wrong; ``seq`` is the entry it concerns or, for a ``checkpoint``
    failure, the tree size the checkpoint signs (for the last checkpoint, one past the last
    entry: no entry has that seq)."""

    code: str
    message: str
    seq: int | None = None
    checkpoint: bool = False

    def __str__(self) -> str:
        if self.seq is None:
            where = ""
        elif self.checkpoint:
            where = f"checkpoint of size {self.seq}: "
        else:
            where = f"seq {self.seq}: "
        return f"{where}{self.message} [{self.code}]"

    def to_json_value(self) -> dict[str, object]:
        if self.checkpoint:
            return {"tree_size": self.seq, "code": self.code, "message": self.message}
        return {"seq": self.seq, "code": self.code, "message": self.message}


@dataclass
class LogReport:
    """What an audit of the log found: how far it got and every failure on the way.

    ``limit_per_code`` bounds how many failures of one code are kept (one changed byte early in a
    long ledger makes every later checkpoint disagree); the rest are only counted in
    ``omitted``, so the report stays small and ``ok`` stays exact.
    """

    entries: int = 0
    checkpoints: int = 0
    root: bytes = b""
    failures: list[Failure] = field(default_factory=list)
    limit_per_code: int | None = None
    omitted: Counter[str] = field(default_factory=Counter)
    _kept: Counter[str] = field(default_factory=Counter, repr=False)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.omitted

    @property
    def failure_count(self) -> int:
        return len(self.failures) + sum(self.omitted.values())

    def add(self, failure: Failure) -> None:
        if self.limit_per_code is not None and self._kept[failure.code] >= self.limit_per_code:
            self.omitted[failure.code] += 1
            return
        self._kept[failure.code] += 1
        self.failures.append(failure)

    def fail(self, error: RegistryError, seq: int | None = None, checkpoint: bool = False) -> None:
        self.add(Failure(code=error.code, message=error.message, seq=seq, checkpoint=checkpoint))


class LogAuditor:
    """The checks of :func:`audit_log`, fed one checkpoint or envelope at a time.

    Checkpoints may arrive before the entries (as ``audit_log`` feeds them) or interleaved, as
    long as each arrives before the tree grows past its size; one that arrives later is reported
    as out of order, since its root can no longer be recomputed without keeping every node.
    """

    def __init__(
        self,
        *,
        keys: Mapping[str, PublicKey],
        origin: str,
        report: LogReport | None = None,
    ) -> None:
        self.keys = keys
        self.verifiers = [NoteVerifier(name=origin, key=k) for k in keys.values()]
        self.origin = origin
        self.report = report if report is not None else LogReport()
        self.tree = CompactRange()
        self.schedule = KeySchedule(origin)
        self._pending: dict[int, tuple[Checkpoint, frozenset[str]]] = {}
        self._checked: Checkpoint | None = None
        self._prev_leaf: bytes | None = None
        self._prev_time: str | None = None

    @property
    def size(self) -> int:
        """Entries added so far."""
        return self.tree.size

    @property
    def signed_size(self) -> int | None:
        """The size of the last checkpoint checked against the entries, if any."""
        return None if self._checked is None else self._checked.size

    def add_checkpoint(self, note: str) -> Checkpoint | None:
        """Open a signed checkpoint and keep it until the tree reaches its size."""
        try:
            cp, signers = open_checkpoint_signers(
                note, origin=self.origin, verifiers=self.verifiers
            )
        except RegistryError as e:
            self.report.fail(e)
            return None
        self.add_opened_checkpoint(cp, signers)
        return cp

    @property
    def last_time(self) -> str | None:
        """The time of the last entry added (``None`` before the first)."""
        return self._prev_time

    def add_opened_checkpoint(self, cp: Checkpoint, signers: frozenset[str]) -> None:
        """Add a checkpoint whose note was already verified, signed by the registry keys
        ``signers`` (key ids); the key that signed its last entry must be among them."""
        report = self.report
        if cp.size < self.tree.size or (cp.size == 0 and self.tree.size == 0):
            report.checkpoints += 1
            self._check_past(cp)
            return
        pending = self._pending.get(cp.size)
        seen = None if pending is None else pending[0]
        if seen is None and self._checked is not None and self._checked.size == cp.size:
            seen = self._checked
        if seen is not None and seen.root == cp.root:
            # The same tree head twice: not a checkpoint more than the registry signed.
            report.fail(
                CheckpointError(f"the checkpoint for size {cp.size} is in the bundle twice"),
                seq=cp.size,
                checkpoint=True,
            )
            return
        report.checkpoints += 1
        if seen is not None:
            report.fail(
                ForkError(f"two checkpoints for size {cp.size} with different roots: a fork"),
                seq=cp.size,
                checkpoint=True,
            )
        self._pending[cp.size] = (cp, signers)
        if cp.size == self.tree.size:
            self._check_pending()

    def _check_past(self, cp: Checkpoint) -> None:
        if cp.size == 0:
            self._compare(cp, CompactRange().root())
            return
        self.report.fail(
            CheckpointError(
                f"checkpoint for size {cp.size} comes after the tree reached size "
                f"{self.tree.size}; checkpoints must be in increasing size order"
            ),
            seq=cp.size,
                checkpoint=True,
        )

    def add_envelope(self, envelope: bytes) -> Entry | None:
        """Verify and open ``envelope`` as the next entry; returns it, or ``None`` if it fails."""
        opened = open_envelope(envelope, self.keys)
        failure = None if opened.failure is None else Failure(*opened.failure)
        entry = opened.entry if opened.trusted else None
        self.add_opened(envelope, entry, failure, opened.signers)
        return entry

    def add_opened(
        self,
        envelope: bytes,
        entry: Entry | None,
        failure: Failure | None,
        signers: tuple[str, ...] = (),
    ) -> None:
        """Add the next envelope, already opened elsewhere: ``entry`` if its registry signature
        verified (by the keys ``signers``), else the ``failure`` (its ``seq`` is filled in
        here)."""
        report = self.report
        position = self.tree.size
        if failure is not None:
            report.add(Failure(code=failure.code, message=failure.message, seq=position))
        if entry is not None:
            self._check_signers(entry, envelope, signers, position)
            if entry.seq != position:
                report.fail(
                    ChainError(f"entry at position {position} says seq {entry.seq}"), seq=position
                )
            expected_prev = None if self._prev_leaf is None else self._prev_leaf.hex()
            if entry.prev != expected_prev:
                report.fail(
                    ChainError(
                        f"prev is {entry.prev}, but the previous leaf hash is {expected_prev}"
                    ),
                    seq=position,
                )
            # Times are fixed-width RFC 3339 UTC, so text order is time order. A registry that
            # backdated an entry could pass off an expired instruction as timely.
            if self._prev_time is not None and entry.time < self._prev_time:
                report.fail(
                    ChainError(
                        f"entry time {entry.time} is earlier than the previous entry's "
                        f"{self._prev_time}: time runs backwards"
                    ),
                    seq=position,
                )
            self._prev_time = entry.time
        leaf = leaf_hash(envelope)
        self._prev_leaf = leaf
        self.tree.push(leaf)
        report.entries = size = self.tree.size
        if size in self._pending:
            self._check_pending()

    def _check_signers(
        self, entry: Entry, envelope: bytes, signers: tuple[str, ...], position: int
    ) -> None:
        """The entry is signed by the key in force at its seq (a rotation by the new key too);
        then the key history takes it in."""
        for problem in (
            self.schedule.check(entry, signers),
            self.schedule.observe(entry, envelope),
        ):
            if problem is not None:
                self.report.add(Failure(code=problem[0], message=problem[1], seq=position))

    def _check_pending(self) -> None:
        pending = self._pending.pop(self.tree.size, None)
        if pending is None:
            return
        cp, signers = pending
        key = self.schedule.signer_of_last
        if key is not None and key.key_id not in signers:
            self.report.fail(
                CheckpointError(
                    f"checkpoint for size {cp.size} is not signed by registry key "
                    f"{key.key_id}, which signed its last entry (signed by: "
                    f"{', '.join(sorted(signers))})"
                ),
                seq=cp.size,
                checkpoint=True,
            )
        self._compare(cp, self.tree.root())

    def _compare(self, cp: Checkpoint, root: bytes) -> None:
        self._checked = cp
        if cp.root != root:
            self.report.fail(
                CheckpointError(
                    f"checkpoint for size {cp.size} has root {cp.root.hex()}, "
                    f"the entries give {root.hex()}"
                ),
                seq=cp.size,
                checkpoint=True,
            )

    def finish(self) -> LogReport:
        """Report checkpoints for sizes the ledger never reached; return the report."""
        report = self.report
        report.root = self.tree.root()
        for size in sorted(self._pending):
            report.fail(
                CheckpointError(
                    f"a checkpoint signs size {size}, but the ledger holds only "
                    f"{self.tree.size} entries"
                ),
                seq=size,
                checkpoint=True,
            )
        self._pending.clear()
        return report


def audit_log(
    envelopes: Iterable[bytes],
    checkpoint_notes: Iterable[str],
    *,
    keys: Mapping[str, PublicKey],
    origin: str,
    entries_out: list[Entry] | None = None,
) -> LogReport:
    """Check ``envelopes`` (in ledger order) and every signed checkpoint against them.

    ``keys`` are the registry keys entries and checkpoints may be signed with (the ledger's key
    history says which signs what). Pass ``entries_out`` to also receive the opened entries
    (for replay).
    """
    auditor = LogAuditor(keys=keys, origin=origin)
    for note in checkpoint_notes:
        auditor.add_checkpoint(note)
    for envelope in envelopes:
        entry = auditor.add_envelope(envelope)
        if entry is not None and entries_out is not None:
            entries_out.append(entry)
    return auditor.finish()


def verify_log(
    envelopes: Iterable[bytes],
    checkpoint_notes: Iterable[str],
    *,
    keys: Mapping[str, PublicKey],
    origin: str,
) -> LogReport:
    """Like :func:`audit_log`, but raise :class:`VerificationFailedError` listing them."""
    report = audit_log(envelopes, checkpoint_notes, keys=keys, origin=origin)
    if report.failures:
        raise VerificationFailedError(
            f"{len(report.failures)} check(s) failed; first: {report.failures[0]}",
            details={"failures": [str(f) for f in report.failures]},
        )
    return report
