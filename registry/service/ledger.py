"""Appending to the signed ledger, publishing checkpoints, and serving proofs.

Every state change of the registry ends in :func:`append_entry`, inside the caller's write
transaction: the entry is built, signed, chained to the previous leaf, added to the Merkle tree,
and a new checkpoint is signed for the new size after proving it consistent with the last one.
If anything fails the transaction rolls back and nothing of it remains.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from registry.errors import CheckpointError, InvalidRequestError, NotFoundError, ProofError
from registry.ledger import merkle
from registry.ledger.audit import LogReport, audit_log
from registry.ledger.checkpoint import Checkpoint, sign_checkpoint
from registry.ledger.entry import Entry, envelope_time, format_time, seal_entry
from registry.ledger.keys import PublicKey
from registry.service.context import Registry
from registry.store import ledger_repo
from registry.store.ledger_repo import SessionNodeReader


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
    head: ledger_repo.Head | None = None,
) -> Appended:
    """Sign ``payload`` as the next entry, add it to the tree and publish a checkpoint.

    Reads the head (``ledger_repo.head``, unless the caller read it in this transaction) and
    the tree's right frontier (O(log n) rows); writes the entry, the subtrees it completes and
    the new checkpoint.
    """
    end = head if head is not None else ledger_repo.head(session)
    seq, last_leaf = end.size, end.last_leaf
    time = format_time(now or registry.clock())
    if end.last_envelope is not None:
        # Entry times never run backwards, even if this machine's clock is stepped back
        # (the auditor checks it); fixed-width RFC 3339 UTC compares as text.
        time = max(time, envelope_time(end.last_envelope))
    entry = Entry(
        v=1,
        seq=seq,
        time=time,
        kind=kind,
        actor=actor,
        payload=payload,
        prev=None if last_leaf is None else last_leaf.hex(),
    )
    envelope = seal_entry(entry, registry.signer)
    leaf = merkle.leaf_hash(envelope)
    frontier_keys = merkle.range_nodes(0, seq) if seq else []
    frontier = SessionNodeReader(session).get_nodes(frontier_keys)
    tree = merkle.CompactRange.from_frontier(seq, [frontier[k] for k in frontier_keys])
    previous_root = tree.root()
    completed = tree.append(leaf)
    ledger_repo.add_entry(session, seq=seq, kind=kind, leaf_hash=leaf, envelope=envelope)
    ledger_repo.add_nodes(session, completed)
    _publish(session, registry, size=seq + 1, root=tree.root(), previous=(seq, previous_root))
    return Appended(entry=entry, envelope=envelope, leaf_hash=leaf)


def _publish(
    session: Session,
    registry: Registry,
    *,
    size: int,
    root: bytes,
    previous: tuple[int, bytes],
) -> str:
    """Sign a checkpoint for ``size``, refusing one inconsistent with the last one signed.

    ``previous`` is the tree this one extends by appending (its size and root, rebuilt from the
    stored frontier): when the last checkpoint signed that size, equal roots prove consistency
    without a proof. Otherwise (a checkpoint was skipped) the consistency proof is checked.
    """
    last = ledger_repo.latest_checkpoint(session)
    if last is not None:
        if last.size >= size:
            raise CheckpointError(
                f"refusing to sign size {size}: a checkpoint for size {last.size} exists"
            )
        if last.size == previous[0]:
            consistent = last.root == previous[1]
        else:
            reader = SessionNodeReader(session)
            proof = merkle.consistency_proof(last.size, size - 1, reader)
            try:
                merkle.verify_consistency(last.size, size - 1, proof, last.root, previous[1])
                consistent = True
            except ProofError:
                consistent = False
        if not consistent:
            raise CheckpointError(
                f"refusing to sign size {size}: not consistent with checkpoint {last.size}"
            )
    note = sign_checkpoint(
        Checkpoint(origin=registry.origin, size=size, root=root),
        name=registry.origin,
        key=registry.signer,
    )
    ledger_repo.add_checkpoint(session, size=size, root=root, note=note)
    return note


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
        verifier=registry.note_verifier,
        origin=registry.origin,
    )
