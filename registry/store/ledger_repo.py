"""Reads and appends of the ledger tables; every function takes the session first.

Nothing here signs or decides: the service layer builds and signs entries and checkpoints, and
this module only moves their bytes in and out of the database in as few queries as it can.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Label, func, text, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from registry.errors import LedgerError
from registry.ledger.merkle import NodeKey
from registry.store import write_behind
from registry.store.statements import Read, Statement, insert_rows, text_rows
from registry.store.tables import CheckpointRow, LedgerEntry, RegistryKeyRow, TreeNode, core, table

_ENTRY = table(LedgerEntry)
_NODE = table(TreeNode)
_CHECKPOINT = table(CheckpointRow)
_REGISTRY_KEY = table(RegistryKeyRow)


def fetch_nodes(session: Session, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
    """The stored subtree hashes among ``keys``, in one query (absent keys are left out).

    The keys are passed as one parameter and joined with the table, so each is one
    primary-key probe and the plan does not grow with the number of keys: two arrays unnested
    on PostgreSQL, a JSON array read by ``json_each`` on SQLite. (Conditions written out per
    key or per level cost more to plan than to run, about 1 ms at 10^6 leaves.)
    """
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    if session.get_bind().dialect.name == "postgresql":
        params: dict[str, object] = {
            "levels": [level for level, _ in wanted],
            "idxs": [idx for _, idx in wanted],
        }
        rows = _NODES_BY_ARRAYS.rows(session, params)
    else:
        rows = _NODES_BY_JSON.rows(session, {"keys": json.dumps(wanted)})
    return {(level, idx): bytes(h) for level, idx, h in rows}


_NODE_FIELDS = ("level", "idx", "hash")
_NODES_BY_ARRAYS = text_rows(
    text(
        "SELECT t.level, t.idx, t.hash FROM tree_node AS t"
        " JOIN unnest(CAST(:levels AS integer[]), CAST(:idxs AS bigint[])) AS k(level, idx)"
        " ON t.level = k.level AND t.idx = k.idx"
    ),
    _NODE_FIELDS,
)
_NODES_BY_JSON = text_rows(
    text(
        "SELECT t.level, t.idx, t.hash FROM json_each(:keys) AS k JOIN tree_node AS t"
        " ON t.level = json_extract(k.value, '$[0]') AND t.idx = json_extract(k.value, '$[1]')"
    ),
    _NODE_FIELDS,
)


class SessionNodeReader:
    """Serves Merkle subtree hashes from ``tree_node``: one query per batch of keys."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        found = fetch_nodes(self._session, keys)
        missing = [key for key in keys if key not in found]
        if missing:
            raise LedgerError(f"tree nodes missing from the store: {missing[:5]}")
        return found


def tree_size(session: Session) -> int:
    """How many entries the ledger holds (the next entry's seq)."""
    last = session.exec(select(func.max(LedgerEntry.seq))).one()
    return 0 if last is None else int(last) + 1


@dataclass(frozen=True)
class Head:
    """The end of the ledger: its size, and the last entry's leaf hash and envelope."""

    size: int
    last_leaf: bytes | None = None
    last_envelope: bytes | None = None


def head(session: Session) -> Head:
    """The ledger's size and last entry, in one indexed read."""
    c = _ENTRY.c
    row = (
        core(session)
        .execute(select(c.seq, c.leaf_hash, c.envelope).order_by(c.seq.desc()).limit(1))
        .first()
    )
    return Head(0) if row is None else Head(row[0] + 1, row[1], row[2])


@dataclass(frozen=True)
class Tip:
    """What a writer reads first: the ledger's size and last leaf hash (which tell it whether
    anyone appended since it last wrote) and the size and root of the last checkpoint."""

    size: int
    last_leaf: bytes | None
    checkpoint: tuple[int, bytes] | None
    registry_key: str | None = None
    """The key id of the registry key in force: the one that signs the next entry."""


def tip_read() -> Read:
    """The read :func:`tip` makes, to send ahead (``statements.read_ahead``)."""
    return _TIP, {}


def tip(session: Session) -> Tip:
    """The ledger's :class:`Tip`, in one statement (four index probes)."""
    row = _TIP.first(session)
    assert row is not None  # scalar subqueries always give one row
    checkpoint = None if row.checkpoint_size is None else (row.checkpoint_size, row.root)
    size = 0 if row.seq is None else row.seq + 1
    return Tip(
        size=size, last_leaf=row.leaf_hash, checkpoint=checkpoint, registry_key=row.registry_key
    )


def _last(column: ColumnElement[Any], order: ColumnElement[Any], label: str) -> Label[Any]:
    return select(column).order_by(order.desc()).limit(1).scalar_subquery().label(label)


_TIP = Statement(
    core_select(
        _last(_ENTRY.c.seq, _ENTRY.c.seq, "seq"),
        _last(_ENTRY.c.leaf_hash, _ENTRY.c.seq, "leaf_hash"),
        _last(_CHECKPOINT.c.size, _CHECKPOINT.c.size, "checkpoint_size"),
        _last(_CHECKPOINT.c.root, _CHECKPOINT.c.size, "root"),
        _last(_REGISTRY_KEY.c.key_id, _REGISTRY_KEY.c.valid_from_seq, "registry_key"),
    )
)


# Appends are Core statements on the session's connection: they run on every request, and
# these rows are never read back as objects in the same transaction.


def defer_entry(
    session: Session, *, seq: int, kind: str, leaf_hash: bytes, envelope: bytes
) -> None:
    """Queue a ledger entry: the transaction's write-behind inserts it before its checkpoint."""
    row = {"seq": seq, "kind": kind, "leaf_hash": leaf_hash, "envelope": envelope}
    write_behind.defer(session, _ENTRY, [row])


def add_nodes(session: Session, nodes: Mapping[NodeKey, bytes]) -> None:
    if not nodes:
        return
    _ADD_NODE.execute_many(
        session, [{"level": level, "idx": idx, "hash": h} for (level, idx), h in nodes.items()]
    )


_ADD_NODE = insert_rows(_NODE, _NODE_FIELDS)


def entries_between(session: Session, start: int, end: int) -> Sequence[LedgerEntry]:
    """Entries with ``start <= seq < end`` in order."""
    return session.exec(
        select(LedgerEntry)
        .where(col(LedgerEntry.seq) >= start, col(LedgerEntry.seq) < end)
        .order_by(col(LedgerEntry.seq))
    ).all()


def entries_page(session: Session, start: int, end: int, max_bytes: int) -> Sequence[LedgerEntry]:
    """Entries with ``start <= seq < end`` in order, as many as ``max_bytes`` of envelopes hold,
    and the first one whatever its size (so that a reader paging through them moves on). The
    sizes are read first, so no envelope past the page is loaded."""
    sizes = session.exec(
        select(col(LedgerEntry.seq), func.length(col(LedgerEntry.envelope)))
        .where(col(LedgerEntry.seq) >= start, col(LedgerEntry.seq) < end)
        .order_by(col(LedgerEntry.seq))
    ).all()
    stop, total = start, 0
    for seq, size in sizes:
        total += int(size)
        if stop > start and total > max_bytes:
            break
        stop = seq + 1
    return entries_between(session, start, stop)


def entry_at(session: Session, seq: int) -> LedgerEntry | None:
    return session.get(LedgerEntry, seq)


def latest_checkpoint(session: Session) -> CheckpointRow | None:
    return session.exec(
        select(CheckpointRow).order_by(col(CheckpointRow.size).desc()).limit(1)
    ).first()


def checkpoint_at(session: Session, size: int) -> CheckpointRow | None:
    return session.get(CheckpointRow, size)


def checkpoints_between(session: Session, start: int, limit: int) -> Sequence[CheckpointRow]:
    return session.exec(
        select(CheckpointRow)
        .where(col(CheckpointRow.size) >= start)
        .order_by(col(CheckpointRow.size))
        .limit(limit)
    ).all()


def add_checkpoint(session: Session, *, size: int, root: bytes, note: str) -> None:
    _ADD_CHECKPOINT.execute(session, {"size": size, "root": root, "note": note})


# A signed note in an error message would be a signed tree head the store never held.
_ADD_CHECKPOINT = insert_rows(_CHECKPOINT, ("size", "root", "note"), secret=True)


def registry_keys(session: Session) -> Sequence[RegistryKeyRow]:
    return session.exec(select(RegistryKeyRow).order_by(col(RegistryKeyRow.valid_from_seq))).all()


def add_registry_key(
    session: Session, *, key_id: str, public_key: bytes, valid_from_seq: int
) -> None:
    session.add(RegistryKeyRow(key_id=key_id, public_key=public_key, valid_from_seq=valid_from_seq))


def rotation_seqs(session: Session, *, below: int) -> list[int]:
    """The seqs of the registry key's rotations before entry ``below``, in order (the registry
    key table's starts, less genesis's)."""
    starts = session.exec(
        select(RegistryKeyRow.valid_from_seq)
        .where(col(RegistryKeyRow.valid_from_seq) > 0, col(RegistryKeyRow.valid_from_seq) <= below)
        .order_by(col(RegistryKeyRow.valid_from_seq))
    ).all()
    return [start - 1 for start in starts]


def end_registry_key(session: Session, *, key_id: str, valid_until_seq: int) -> None:
    """Record that ``key_id`` signs no entry from ``valid_until_seq`` on (a rotation)."""
    session.execute(
        update(_REGISTRY_KEY)
        .where(_REGISTRY_KEY.c.key_id == key_id)
        .values(valid_until_seq=valid_until_seq)
    )


def iter_envelopes(session: Session, batch: int = 1000) -> Iterator[bytes]:
    """Every envelope in seq order, read in pages so memory stays flat."""
    start = 0
    while True:
        rows = session.exec(
            select(LedgerEntry.seq, LedgerEntry.envelope)
            .where(col(LedgerEntry.seq) >= start)
            .order_by(col(LedgerEntry.seq))
            .limit(batch)
        ).all()
        if not rows:
            return
        for _seq, envelope in rows:
            yield envelope
        start = rows[-1][0] + 1


def iter_checkpoint_notes(session: Session, batch: int = 1000) -> Iterator[str]:
    start = 0
    while True:
        rows = checkpoints_between(session, start, batch)
        if not rows:
            return
        for row in rows:
            yield row.note
        start = rows[-1].size + 1
