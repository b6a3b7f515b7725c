"""Appending to the signed ledger, publishing checkpoints, and serving proofs.

Every state change of the registry ends in an append to the :class:`LedgerTail`, inside the
caller's write transaction: the entry is built, signed, chained to the previous leaf and added to
the Merkle tree; once the transaction's appends are done, one checkpoint is signed for the new
size after proving it consistent with the last one. If anything fails the transaction rolls back
and nothing of it remains. :func:`append_entry` does all of it for a single entry.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from registry.errors import (
    CheckpointError,
    InvalidRequestError,
    NotFoundError,
    ProofError,
    RegistryKeyReplacedError,
)
from registry.ledger import merkle
from registry.ledger.audit import LogReport, audit_log
from registry.ledger.checkpoint import Checkpoint, add_signature, sign_checkpoint
from registry.ledger.entry import Entry, envelope_time, format_time, parse_time, seal_entry
from registry.ledger.keys import PublicKey, SigningKey
from registry.ledger.registry_keys import ROTATION_KIND, rotation_payload
from registry.store import ledger_repo, write_behind
from registry.store.ledger_repo import SessionNodeReader
from registry.store.statements import Read, pipeline

if TYPE_CHECKING:
    from registry.service.context import Registry


@dataclass(frozen=True)
class Appended:
    """What an append produced: the entry, its exact envelope bytes and its leaf hash."""

    entry: Entry
    envelope: bytes
    leaf_hash: bytes


def append_entry(
    session: Session,
    registry: Registry,
    *,
    kind: str,
    actor: str,
    payload: dict[str, Any],
    now: datetime | None = None,
) -> Appended:
    """Append one entry and publish a checkpoint for it: a transaction that appends only once."""
    tail = LedgerTail.read(session)
    appended = tail.append(session, registry, kind=kind, actor=actor, payload=payload, now=now)
    tail.publish(session, registry)
    return appended


@dataclass(frozen=True)
class TailMark:
    """Where a :class:`LedgerTail` stood, to go back to when a savepoint rolls back."""

    size: int
    last_leaf: bytes | None
    last_time: str | None
    frontier: tuple[bytes, ...]


class LedgerTail:
    """The end of the ledger inside one write transaction: appends without re-reading it.

    It holds the size, the last leaf and time, and the tree's right frontier (O(log n) hashes),
    so each append writes its entry and the subtrees it completes and nothing is read back.
    :meth:`publish` signs one checkpoint for everything appended in the transaction, after
    checking that the last checkpoint signed is consistent with the tree the transaction
    started from.
    """

    def __init__(
        self,
        *,
        size: int,
        last_leaf: bytes | None,
        last_time: str | None,
        frontier: list[bytes],
        checkpoint: tuple[int, bytes] | None,
        registry_key: str | None = None,
    ) -> None:
        self.size = size
        self.last_leaf = last_leaf
        self.last_time = last_time
        self._tree = merkle.CompactRange.from_frontier(size, frontier)
        self.start = (size, self._tree.root())
        self.checkpoint = checkpoint
        """Size and root of the last checkpoint signed, read under this transaction's lock."""
        self.registry_key = registry_key
        """The key id of the registry key in force, read under the lock: the only key that
        may sign the next entry."""
        self._cosigner: SigningKey | None = None
        # Appends are written by publish, one statement per table for the whole transaction
        # (entries through the write-behind); nothing reads them back before, the tail itself
        # knowing the end of the ledger.
        self._nodes: dict[merkle.NodeKey, bytes] = {}

    @staticmethod
    def first_reads() -> list[Read]:
        """What :meth:`read` reads first, to send with the transaction's lock."""
        return [ledger_repo.tip_read()]

    @classmethod
    def read(cls, session: Session, *, cached: LedgerTail | None = None) -> LedgerTail:
        """The tail as stored: the head (one indexed read), the frontier and the last checkpoint.

        ``cached`` is a tail this process committed earlier. When the stored head is still its
        head (same size and last leaf hash, which commits to every entry before it) nobody has
        appended since, so its frontier and last time are reused instead of read again. The
        last checkpoint is always read from the store: a writer that finds it changed under
        its feet refuses to sign rather than trust its memory.
        """
        tip = ledger_repo.tip(session)
        if cached is not None and (cached.size, cached.last_leaf) == (tip.size, tip.last_leaf):
            return cls(
                size=tip.size,
                last_leaf=tip.last_leaf,
                last_time=cached.last_time,
                frontier=cached.frontier,
                checkpoint=tip.checkpoint,
                registry_key=tip.registry_key,
            )
        end = ledger_repo.head(session)
        last_time = None if end.last_envelope is None else envelope_time(end.last_envelope)
        keys = merkle.range_nodes(0, end.size) if end.size else []
        nodes = SessionNodeReader(session).get_nodes(keys)
        return cls(
            size=end.size,
            last_leaf=end.last_leaf,
            last_time=last_time,
            frontier=[nodes[k] for k in keys],
            checkpoint=tip.checkpoint,
            registry_key=tip.registry_key,
        )

    @property
    def frontier(self) -> list[bytes]:
        return self._tree.frontier

    def mark(self) -> TailMark:
        return TailMark(self.size, self.last_leaf, self.last_time, tuple(self._tree.frontier))

    def reset(self, session: Session, mark: TailMark) -> None:
        """Forget every append since ``mark``."""
        self.size, self.last_leaf, self.last_time = mark.size, mark.last_leaf, mark.last_time
        self._tree = merkle.CompactRange.from_frontier(mark.size, list(mark.frontier))
        write_behind.forget(session, mark.size)
        self._nodes = {k: h for k, h in self._nodes.items() if (k[1] + 1) << k[0] <= mark.size}

    def next_time(self, now: datetime) -> datetime:
        """The time the next entry will bear if appended ``now``: never before the last one's.
        A use case checks its instruction at this time, the one the auditor checks it at."""
        if self.last_time is not None and format_time(now) < self.last_time:
            return parse_time(self.last_time)
        return now

    def append(
        self,
        session: Session,
        registry: Registry,
        *,
        kind: str,
        actor: str,
        payload: dict[str, Any],
        now: datetime | None = None,
        cosigner: SigningKey | None = None,
    ) -> Appended:
        """Sign ``payload`` as the next entry, chain it, and add it to the tree."""
        self._refuse_a_replaced_key(registry)
        seq = self.size
        time = format_time(now or registry.clock())
        if self.last_time is not None:
            # Entry times never run backwards, even if this machine's clock is stepped back
            # (the auditor checks it); fixed-width RFC 3339 UTC compares as text.
            time = max(time, self.last_time)
        entry = Entry(
            v=1,
            seq=seq,
            time=time,
            kind=kind,
            actor=actor,
            payload=payload,
            prev=None if self.last_leaf is None else self.last_leaf.hex(),
        )
        envelope = seal_entry(entry, registry.signer, cosigner=cosigner)
        leaf = merkle.leaf_hash(envelope)
        completed = self._tree.append(leaf)
        ledger_repo.defer_entry(session, seq=seq, kind=kind, leaf_hash=leaf, envelope=envelope)
        self._nodes.update(completed)
        self.size, self.last_leaf, self.last_time = seq + 1, leaf, time
        return Appended(entry=entry, envelope=envelope, leaf_hash=leaf)

    def _refuse_a_replaced_key(self, registry: Registry) -> None:
        """Refuse to sign with a key the ledger has rotated away from (a server started before
        the rotation and not restarted): an auditor would reject all it signed."""
        mine = registry.signer.public_key.key_id
        if self.registry_key is not None and mine != self.registry_key:
            raise RegistryKeyReplacedError(
                f"this server signs with registry key {mine}, but the ledger's registry key is "
                f"now {self.registry_key}: nothing was written. Restart it with the current "
                "key (REGISTRY_KEY_FILE)",
                details={"server_key": mine, "registry_key": self.registry_key},
            )

    def rotate(
        self, session: Session, registry: Registry, new: SigningKey, *, now: datetime | None = None
    ) -> Appended:
        """Append a rotation to ``new``, signed by the key in force and by ``new``, and record
        the change of key: from the next entry on, only ``new`` signs. The checkpoint
        :meth:`publish` then signs is co-signed by ``new``."""
        old = registry.signer.public_key
        appended = self.append(
            session,
            registry,
            kind=ROTATION_KIND,
            actor="registry",
            payload=rotation_payload(old, new.public_key, registry.origin),
            now=now,
            cosigner=new,
        )
        ledger_repo.end_registry_key(session, key_id=old.key_id, valid_until_seq=self.size)
        ledger_repo.add_registry_key(
            session,
            key_id=new.public_key.key_id,
            public_key=new.public_key.raw,
            valid_from_seq=self.size,
        )
        self.registry_key = new.public_key.key_id
        self._cosigner = new
        return appended

    def publish(self, session: Session, registry: Registry) -> str | None:
        """Write the appended entries, their rows and subtrees (sent together: one round trip
        on PostgreSQL), then sign a checkpoint for the new size and write it.

        The writes come first so that the registry key never signs a tree head the store then
        refuses to hold. ``None`` if nothing was appended.
        """
        with pipeline(session):
            write_behind.flush(session)
            ledger_repo.add_nodes(session, self._nodes)
        self._nodes = {}
        if self.size == self.start[0]:
            return None
        root = self._tree.root()
        note = _sign_checkpoint(
            session,
            registry,
            size=self.size,
            root=root,
            previous=self.start,
            last=self.checkpoint,
        )
        if self._cosigner is not None:
            note = add_signature(note, name=registry.origin, key=self._cosigner)
        ledger_repo.add_checkpoint(session, size=self.size, root=root, note=note)
        return note


def _sign_checkpoint(
    session: Session,
    registry: Registry,
    *,
    size: int,
    root: bytes,
    previous: tuple[int, bytes],
    last: tuple[int, bytes] | None,
) -> str:
    """Sign a checkpoint for ``size``, refusing one inconsistent with ``last``, the last signed.

    ``previous`` is the tree this one extends by appending (its size and root, rebuilt from the
    stored frontier): when the last checkpoint signed that size, equal roots prove consistency
    without a proof. Otherwise (a checkpoint was skipped) the consistency proof is checked.
    """
    if last is not None:
        last_size, last_root = last
        if last_size >= size:
            raise CheckpointError(
                f"refusing to sign size {size}: a checkpoint for size {last_size} exists"
            )
        if last_size == previous[0]:
            consistent = last_root == previous[1]
        else:
            reader = SessionNodeReader(session)
            proof = merkle.consistency_proof(last_size, previous[0], reader)
            try:
                merkle.verify_consistency(last_size, previous[0], proof, last_root, previous[1])
                consistent = True
            except ProofError:
                consistent = False
        if not consistent:
            raise CheckpointError(
                f"refusing to sign size {size}: not consistent with checkpoint {last_size}"
            )
    return sign_checkpoint(
        Checkpoint(origin=registry.origin, size=size, root=root),
        name=registry.origin,
        key=registry.signer,
    )


def latest_checkpoint_note(session: Session) -> str:
    row = ledger_repo.latest_checkpoint(session)
    if row is None:
        raise NotFoundError("the ledger is empty: no checkpoint has been signed yet")
    return row.note


@dataclass(frozen=True)
class InclusionProof:
    index: int
    tree_size: int
    leaf_hash: bytes
    root: bytes
    proof: list[bytes]


@dataclass(frozen=True)
class ConsistencyProof:
    first: int
    second: int
    first_root: bytes
    second_root: bytes
    proof: list[bytes]


def _prefetch(
    session: Session, keys: list[merkle.NodeKey], size: int, what: str
) -> merkle.NodeCache:
    """Every node a root and proof need, in one query; a size beyond the tree is a 422."""
    nodes = ledger_repo.fetch_nodes(session, keys)
    if len(nodes) < len(set(keys)):
        current = ledger_repo.tree_size(session)
        raise InvalidRequestError(
            f"{what} must be between 1 and the tree size {current}, got {size}",
            details={what: size, "tree_size": current},
        )
    return merkle.NodeCache(nodes)


def inclusion_proof(session: Session, *, index: int, tree_size: int) -> InclusionProof:
    """The audit path proving entry ``index`` is in the tree of ``tree_size`` leaves."""
    if tree_size < 1:
        raise InvalidRequestError(f"tree_size must be at least 1, got {tree_size}")
    if not 0 <= index < tree_size:
        raise InvalidRequestError(
            f"index must be in [0, {tree_size}), got {index}",
            details={"index": index, "tree_size": tree_size},
        )
    root_keys = merkle.range_nodes(0, tree_size)
    keys = [(0, index), *root_keys, *merkle.inclusion_keys(index, tree_size)]
    nodes = _prefetch(session, keys, tree_size, "tree_size")
    return InclusionProof(
        index=index,
        tree_size=tree_size,
        leaf_hash=nodes.get_nodes([(0, index)])[(0, index)],
        root=merkle.root(tree_size, nodes),
        proof=merkle.inclusion_proof(index, tree_size, nodes),
    )


def consistency_proof(session: Session, *, first: int, second: int) -> ConsistencyProof:
    """The proof that the tree of ``first`` leaves is a prefix of the tree of ``second``."""
    if not 1 <= first <= second:
        raise InvalidRequestError(
            f"first must be in [1, second={second}], got {first}",
            details={"first": first, "second": second},
        )
    keys = [
        *merkle.range_nodes(0, first),
        *merkle.range_nodes(0, second),
        *merkle.consistency_keys(first, second),
    ]
    nodes = _prefetch(session, keys, second, "second")
    return ConsistencyProof(
        first=first,
        second=second,
        first_root=merkle.root(first, nodes),
        second_root=merkle.root(second, nodes),
        proof=merkle.consistency_proof(first, second, nodes),
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def audit_store(session: Session, registry: Registry) -> LogReport:
    """Check the stored ledger as an auditor would, pinning this registry's own key."""
    keys = {row.key_id: PublicKey(raw=row.public_key) for row in ledger_repo.registry_keys(session)}
    return audit_log(
        ledger_repo.iter_envelopes(session),
        ledger_repo.iter_checkpoint_notes(session),
        keys=keys,
        origin=registry.origin,
    )
