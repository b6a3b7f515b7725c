"""Checking a whole ledger from its bytes alone: signatures, chain, tree and checkpoints.

The server (for ``--against`` and self-checks) and the offline auditor use this same code. It
streams: entries are read once, in order, and memory stays O(log n) for the tree plus the
checkpoints not yet reached. :func:`audit_log` collects every failure for a report;
:func:`verify_log` raises on the first, for callers that only need yes or no.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from registry.errors import (
    ChainError,
    CheckpointError,
    ForkError,
    RegistryError,
    VerificationFailedError,
)
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, open_checkpoint
from registry.ledger.entry import Entry, open_entry
from registry.ledger.keys import PublicKey
from registry.ledger.merkle import CompactRange, leaf_hash


@dataclass(frozen=True)
class Failure:
    """One thing found wrong; ``seq`` is the entry (or checkpoint size) it concerns."""

    code: str
    message: str
    seq: int | None = None

    def __str__(self) -> str:
        where = "" if self.seq is None else f"seq {self.seq}: "
        return f"{where}{self.message} [{self.code}]"


@dataclass
class LogReport:
    """What an audit of the log found: how far it got and every failure on the way."""

    entries: int = 0
    checkpoints: int = 0
    root: bytes = b""
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, error: RegistryError, seq: int | None = None) -> None:
        self.failures.append(Failure(code=error.code, message=error.message, seq=seq))


def audit_log(
    envelopes: Iterable[bytes],
    checkpoint_notes: Iterable[str],
    *,
    keys: Mapping[str, PublicKey],
    verifier: NoteVerifier,
    origin: str,
    entries_out: list[Entry] | None = None,
) -> LogReport:
    """Check ``envelopes`` (in ledger order) and every signed checkpoint against them.

    ``keys`` are the registry keys entries may be signed with; ``verifier`` is the pinned key
    checkpoints must carry. Pass ``entries_out`` to also receive the opened entries (for replay).
    """
    report = LogReport()
    pending: dict[int, Checkpoint] = {}
    for note in checkpoint_notes:
        try:
            cp = open_checkpoint(note, origin=origin, verifiers=[verifier])
        except RegistryError as e:
            report.fail(e)
            continue
        report.checkpoints += 1
        seen = pending.get(cp.size)
        if seen is not None and seen.root != cp.root:
            report.fail(
                ForkError(f"two checkpoints for size {cp.size} with different roots: a fork"),
                seq=cp.size,
            )
        pending[cp.size] = cp

    tree = CompactRange()
    prev_leaf: bytes | None = None
    for position, envelope in enumerate(envelopes):
        leaf = leaf_hash(envelope)
        try:
            entry = open_entry(envelope, keys)
        except RegistryError as e:
            report.fail(e, seq=position)
        else:
            if entry.seq != position:
                report.fail(
                    ChainError(f"entry at position {position} says seq {entry.seq}"), seq=position
                )
            expected_prev = None if prev_leaf is None else prev_leaf.hex()
            if entry.prev != expected_prev:
                report.fail(
                    ChainError(
                        f"prev is {entry.prev}, but the previous leaf hash is {expected_prev}"
                    ),
                    seq=position,
                )
            if entries_out is not None:
                entries_out.append(entry)
        prev_leaf = leaf
        tree.append(leaf)
        report.entries = tree.size
        reached = pending.pop(tree.size) if tree.size in pending else None
        if reached is not None and reached.root != tree.root():
            report.fail(
                CheckpointError(
                    f"checkpoint for size {reached.size} has root {reached.root.hex()}, "
                    f"the entries give {tree.root().hex()}"
                ),
                seq=reached.size,
            )
    report.root = tree.root()
    for size in sorted(pending):
        report.fail(
            CheckpointError(
                f"a checkpoint signs size {size}, but the ledger holds only {tree.size} entries"
            ),
            seq=size,
        )
    return report


def verify_log(
    envelopes: Iterable[bytes],
    checkpoint_notes: Iterable[str],
    *,
    keys: Mapping[str, PublicKey],
    verifier: NoteVerifier,
    origin: str,
) -> LogReport:
    """Like :func:`audit_log`, but raise :class:`VerificationFailedError` listing them."""
    report = audit_log(envelopes, checkpoint_notes, keys=keys, verifier=verifier, origin=origin)
    if report.failures:
        raise VerificationFailedError(
            f"{len(report.failures)} check(s) failed; first: {report.failures[0]}",
            details={"failures": [str(f) for f in report.failures]},
        )
    return report
