"""The ledger's RFC 6962 / RFC 9162 Merkle tree: hashing, storage layout, proofs and verification.

This module owns the tree over ledger leaves (SHA-256; leaf = H(0x00 || data),
node = H(0x01 || left || right); the empty tree's root is H("")), how that tree is laid out in
storage, how inclusion and consistency proofs are built from storage, and how they are verified.
The server (through the store) and the offline auditor use this same code.

Storage layout. A tree is stored as its *perfect subtrees*: the ``NodeKey`` ``(level, index)``
names the hash of the complete subtree over leaves ``[index << level, (index + 1) << level)``;
level 0 is a leaf hash. A perfect subtree never changes once its last leaf is appended, so every
stored row is written once and never updated, which fits an append-only table. Incomplete
("ephemeral") subtrees on the right edge are never stored; they are folded on demand from the
perfect subtrees that tile them (``range_nodes``).

Cost. For a tree of ``n`` leaves:

- appending a leaf reads ``t`` stored nodes and writes ``t + 1``, where ``t`` is the number of
  trailing one bits of the leaf's index (amortised < 1 read and < 2 writes per append);
- ``root`` reads at most ``log2(n) + 1`` nodes;
- ``inclusion_proof`` and ``consistency_proof`` read at most ``2 * log2(n) + 2`` nodes;

and each of these does all its reads in ONE ``NodeReader.get_nodes`` call (none when nothing is
needed, e.g. a size-1 inclusion proof), then fewer SHA-256 calls than it read nodes. What to
read is computed purely from the sizes first.

Pure Python and ``hashlib`` only: this module knows neither the web nor the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Protocol

from registry.errors import LedgerError, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "CompactRange",
    "MemoryTree",
    "NodeKey",
    "NodeReader",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "left_siblings_for_append",
    "node_hash",
    "nodes_completed_by_append",
    "range_nodes",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

NodeKey = tuple[int, int]
"""``(level, index)``: the perfect subtree over leaves ``[index << level, (index+1) << level)``."""

LEAF_PREFIX = b"\x00"
"""RFC 6962 domain separation byte for leaf hashes."""
NODE_PREFIX = b"\x01"
"""RFC 6962 domain separation byte for interior node hashes."""
HASH_SIZE = 32
"""Bytes in a SHA-256 digest, hence in every leaf, node and root hash."""


def leaf_hash(data: bytes) -> bytes:
    """Hash one leaf's bytes (for the ledger: a DSSE envelope's exact stored bytes)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two child hashes into their parent."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""Root hash of the tree with no leaves (RFC 6962 section 2.1: MTH({}) = SHA-256())."""


class NodeReader(Protocol):
    """Where proof and root computations read stored perfect-subtree hashes from.

    ``get_nodes`` must return a hash for every key asked for and raise if any is missing; it
    is called at most once per ``root``/``inclusion_proof``/``consistency_proof`` call, so a
    database-backed reader answers it with one query.
    """

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]: ...


# --- pure arithmetic on sizes -----------------------------------------------------------------


def _check_size(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 9162 2.1.1: the largest power of two strictly less than ``n > 1``."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[NodeKey]:
    """Decompose leaves ``[start, end)`` into the fewest aligned perfect subtrees, left to right.

    The result has at most ``2 * log2(end - start)`` keys, and sizes that rise then fall. For a
    range the RFC 6962 tree treats as one subtree (``root`` and every proof element), ``start``
    is aligned to a power of two at least ``end - start``, so sizes only fall and the range's
    hash is the right fold of the keys' hashes (``_fold``).
    """
    _check_size("start", start)
    if end <= start:
        raise ValueError(f"range must be non-empty, got [{start}, {end})")
    keys: list[NodeKey] = []
    while start < end:
        # The largest subtree that starts at ``start`` is bounded by the alignment of ``start``
        # (its lowest set bit; unbounded at 0) and by what is left of the range.
        level = (end - start).bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def left_siblings_for_append(index: int) -> list[NodeKey]:
    """The stored nodes that ``nodes_completed_by_append`` needs to append leaf ``index``.

    Appending leaf ``index`` completes one subtree per trailing one bit of ``index``; each is
    the hash of an already-complete left sibling and the newly completed right one. The store
    fetches these keys in one query before the append.
    """
    _check_size("index", index)
    keys: list[NodeKey] = []
    level = 0
    while (index >> level) & 1:
        keys.append((level, (index >> level) - 1))
        level += 1
    return keys


def nodes_completed_by_append(
    index: int, leaf: bytes, left_siblings: Mapping[NodeKey, bytes]
) -> dict[NodeKey, bytes]:
    """The perfect subtrees that become complete when leaf number ``index`` is appended.

    ``leaf`` is the leaf *hash* (``leaf_hash(data)``), which is node ``(0, index)``;
    ``left_siblings`` must hold every key of ``left_siblings_for_append(index)``. The result
    maps ``(0, index)`` and every ancestor whose right edge is this leaf to its hash: exactly the
    rows the store inserts, none of which exist before and none of which ever change after.
    """
    keys = left_siblings_for_append(index)
    _require(left_siblings, keys, LedgerError, f"appending leaf {index}")
    completed: dict[NodeKey, bytes] = {(0, index): leaf}
    current = leaf
    for level, sibling in keys:
        current = node_hash(left_siblings[(level, sibling)], current)
        completed[(level + 1, sibling >> 1)] = current
    return completed


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges of the nodes of PATH(index, D[0:size]) (RFC 9162 2.1.3.1), leaf end first."""
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def _consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """Leaf ranges of the nodes of PROOF(size1, D[0:size2]) (RFC 9162 2.1.4.1); 0 < size1 < size2.

    Follows SUBPROOF(m, D[lo:hi], b): ``whole_old_tree`` is ``b``, true while D[lo:hi] starts at
    leaf 0 and so the verifier already knows MTH(D[lo:size1]) as the old root.
    """
    ranges: list[tuple[int, int]] = []
    lo, hi, whole_old_tree = 0, size2, True
    while size1 != hi:
        k = _largest_power_of_two_below(hi - lo)
        if size1 - lo <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            whole_old_tree = False
    if not whole_old_tree:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


# --- reading stored nodes ---------------------------------------------------------------------


def _require(
    nodes: Mapping[NodeKey, bytes], keys: Sequence[NodeKey], error: type[LedgerError], what: str
) -> None:
    missing = [key for key in keys if key not in nodes]
    if missing:
        raise error(
            f"{what} needs stored nodes that are missing: {missing[:8]}",
            details={"missing": [list(key) for key in missing]},
        )


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Hash of a subtree from its perfect subtrees in falling size order (see ``range_nodes``).

    ``node_hash`` written out: a streaming verifier folds at every checkpoint.
    """
    sha256 = hashlib.sha256
    current = hashes[-1]
    for left in reversed(hashes[:-1]):
        current = sha256(NODE_PREFIX + left + current).digest()
    return current


def _range_hashes(ranges: Sequence[tuple[int, int]], reader: NodeReader, what: str) -> list[bytes]:
    """Hash of each range, with every stored node they need read in one ``get_nodes`` call."""
    per_range = [range_nodes(start, end) for start, end in ranges]
    keys = [key for keys_of_range in per_range for key in keys_of_range]
    if not keys:
        return []
    nodes = reader.get_nodes(keys)
    _require(nodes, keys, ProofError, what)
    return [_fold([nodes[key] for key in keys_of_range]) for keys_of_range in per_range]


def inclusion_keys(index: int, size: int) -> list[NodeKey]:
    """Every stored node ``inclusion_proof(index, size)`` reads (for a store to prefetch)."""
    return [key for start, end in _inclusion_ranges(index, size) for key in range_nodes(start, end)]


def consistency_keys(size1: int, size2: int) -> list[NodeKey]:
    """Every stored node ``consistency_proof(size1, size2)`` reads (for a store to prefetch)."""
    if size1 == size2:
        return []
    return [
        key for start, end in _consistency_ranges(size1, size2) for key in range_nodes(start, end)
    ]


class NodeCache:
    """A ``NodeReader`` over nodes already fetched: lets one query serve a root and a proof."""

    def __init__(self, nodes: Mapping[NodeKey, bytes]) -> None:
        self._nodes = nodes

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        missing = [key for key in keys if key not in self._nodes]
        if missing:
            raise ProofError(f"tree nodes not available: {missing[:5]}")
        return {key: self._nodes[key] for key in keys}


# --- building ---------------------------------------------------------------------------------


def root(size: int, reader: NodeReader) -> bytes:
    """MTH(D[0:size]), the root of the first ``size`` leaves; one read of <= log2(size)+1 nodes."""
    _check_size("size", size)
    if size == 0:
        return EMPTY_ROOT
    keys = range_nodes(0, size)
    nodes = reader.get_nodes(keys)
    _require(nodes, keys, LedgerError, f"the root of size {size}")
    return _fold([nodes[key] for key in keys])


def inclusion_proof(index: int, size: int, reader: NodeReader) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 2.1.3.1).

    Reads at most ``2 * log2(size) + 2`` stored nodes in one ``get_nodes`` call: the siblings
    on the path are perfect subtrees except at most one on the right edge, which is folded from
    its ``range_nodes``. Raises ``ProofError`` if ``index`` is not a leaf of that tree.
    """
    if not 0 <= index < size:
        raise ProofError(
            f"no inclusion proof for leaf {index} in a tree of size {size}: need 0 <= index < size",
            details={"index": index, "size": size},
        )
    return _range_hashes(
        _inclusion_ranges(index, size), reader, f"inclusion proof of {index} in {size}"
    )


def consistency_proof(size1: int, size2: int, reader: NodeReader) -> list[bytes]:
    """Proof that the tree of ``size2`` leaves extends the one of ``size1`` (RFC 9162 2.1.4.1).

    Empty when the sizes are equal. Reads at most ``2 * log2(size2) + 2`` stored nodes in one
    ``get_nodes`` call, for the same reason as ``inclusion_proof``. Raises ``ProofError`` unless
    ``0 < size1 <= size2`` (a proof from the empty tree proves nothing, RFC 9162 2.1.4).
    """
    if not 0 < size1 <= size2:
        raise ProofError(
            f"no consistency proof from size {size1} to size {size2}: need 0 < size1 <= size2",
            details={"size1": size1, "size2": size2},
        )
    if size1 == size2:
        return []
    return _range_hashes(
        _consistency_ranges(size1, size2), reader, f"consistency proof of {size1} to {size2}"
    )


# --- verifying --------------------------------------------------------------------------------


def _fail(message: str, **details: object) -> ProofError:
    return ProofError(message, details=dict(details))


def _check_hash_sizes(proof: Sequence[bytes], **hashes: bytes) -> None:
    """Refuse inputs to SHA-256 that cannot be SHA-256 outputs.

    Beyond RFC 9162's steps, but it rejects no honest proof. It is what makes a size-1 tree
    with an empty leaf hash and an empty root fail, as the conformance vectors (and
    transparency-dev/merkle) require, and it names a malformed node instead of reporting a
    root mismatch. Roots are only compared, never hashed, so their size is not checked here.
    """
    for name, value in hashes.items():
        if len(value) != HASH_SIZE:
            raise _fail(f"{name} is {len(value)} bytes, want {HASH_SIZE}", **{name: value.hex()})
    for position, node in enumerate(proof):
        if len(node) != HASH_SIZE:
            raise _fail(
                f"proof node {position} is {len(node)} bytes, want {HASH_SIZE}",
                position=position,
                node=node.hex(),
            )


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) is leaf ``index`` of the tree ``(size, root)``.

    RFC 9162 section 2.1.3.2, step for step, after checking that the leaf hash and every proof
    node are 32 bytes. Returns ``None`` on success and raises ``ProofError`` saying which check
    failed otherwise.
    """
    if not 0 <= index < size:
        raise _fail(f"leaf index {index} is not in a tree of size {size}", index=index, size=size)
    _check_hash_sizes(proof, leaf_hash=leaf)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise _fail(
                f"inclusion proof for leaf {index} in size {size} is too long: {len(proof)} nodes",
                index=index,
                size=size,
                proof_length=len(proof),
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail(
            f"inclusion proof for leaf {index} in size {size} is too short: {len(proof)} nodes",
            index=index,
            size=size,
            proof_length=len(proof),
        )
    if r != root:
        raise _fail(
            f"inclusion proof for leaf {index} in size {size} computes root {r.hex()}, "
            f"not the expected {root.hex()}",
            index=index,
            size=size,
            computed=r.hex(),
            expected=root.hex(),
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree ``(size2, root2)`` is an append-only extension of ``(size1, root1)``.

    RFC 9162 section 2.1.4.2, step for step, preceded by the cases the RFC leaves to the caller:
    ``size1 > size2`` fails; ``size1 == 0`` fails (the empty tree is consistent with everything,
    so such a "proof" proves nothing; the conformance vectors reject it even when
    ``size2 == 0``); ``size1 == size2`` needs an empty proof and equal roots. Every proof node
    must be 32 bytes. Returns ``None`` on success and raises ``ProofError`` saying which check
    failed otherwise.
    """
    sizes = {"size1": size1, "size2": size2}
    if size1 > size2:
        raise _fail(f"size1 {size1} is greater than size2 {size2}", **sizes)
    if size1 <= 0:
        raise _fail(f"a consistency proof needs size1 > 0, got {size1}", **sizes)
    if size1 == size2:
        if proof:
            raise _fail(
                f"sizes are equal ({size1}) but the proof has {len(proof)} nodes, want 0", **sizes
            )
        if root1 != root2:
            raise _fail(
                f"sizes are equal ({size1}) but root1 {root1.hex()} != root2 {root2.hex()}",
                **sizes,
            )
        return
    # Step 1.
    if not proof:
        raise _fail(f"consistency proof from {size1} to {size2} is empty", **sizes)
    _check_hash_sizes(proof)
    # Step 2: an old tree of a power-of-two size is a node of the new one; its hash starts the
    # path.
    path = [root1, *proof] if size1 & (size1 - 1) == 0 else list(proof)
    # Steps 3-4.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            raise _fail(
                f"consistency proof from {size1} to {size2} is too long: {len(proof)} nodes",
                **sizes,
                proof_length=len(proof),
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise _fail(
            f"consistency proof from {size1} to {size2} is too short: {len(proof)} nodes",
            **sizes,
            proof_length=len(proof),
        )
    if fr != root1:
        raise _fail(
            f"consistency proof from {size1} to {size2} computes old root {fr.hex()}, "
            f"not root1 {root1.hex()}",
            **sizes,
            computed=fr.hex(),
            expected=root1.hex(),
        )
    if sr != root2:
        raise _fail(
            f"consistency proof from {size1} to {size2} computes new root {sr.hex()}, "
            f"not root2 {root2.hex()}",
            **sizes,
            computed=sr.hex(),
            expected=root2.hex(),
        )


# --- in-memory trees --------------------------------------------------------------------------


class MemoryTree:
    """A whole tree in a dict, stored exactly as the database stores it; a ``NodeReader``.

    For tests, and for replaying an exported ledger to recompute its roots and proofs. It
    appends through ``left_siblings_for_append``/``nodes_completed_by_append``, the same path
    the store takes, so ``nodes`` holds exactly the rows the store would hold.
    """

    def __init__(self) -> None:
        self.nodes: dict[NodeKey, bytes] = {}
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended."""
        return self._size

    def append(self, leaf: bytes) -> int:
        """Append a leaf *hash* (``leaf_hash(data)``); returns its 0-based index."""
        index = self._size
        siblings = self.get_nodes(left_siblings_for_append(index))
        self.nodes.update(nodes_completed_by_append(index, leaf, siblings))
        self._size += 1
        return index

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        """Stored hashes for ``keys``; ``LedgerError`` if any is not a complete subtree here."""
        _require(self.nodes, keys, LedgerError, f"reading a tree of size {self._size}")
        return {key: self.nodes[key] for key in keys}

    def root(self) -> bytes:
        """Root hash of all leaves appended so far."""
        return root(self._size, self)


class CompactRange:
    """The right frontier of a tree: O(log n) hashes that are enough to extend it and hash it.

    For streaming verifiers (the auditor replaying an export) that must recompute the root at
    every checkpoint without keeping every node. It holds one perfect subtree per set bit of
    ``size``, largest (leftmost) first, i.e. the hashes of ``range_nodes(0, size)``.
    """

    def __init__(self) -> None:
        self._size = 0
        self._frontier: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaves appended."""
        return self._size

    @property
    def frontier(self) -> list[bytes]:
        """The hashes of ``range_nodes(0, size)``: what ``from_frontier`` resumes from."""
        return list(self._frontier)

    @classmethod
    def from_frontier(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Resume a tree of ``size`` leaves from the hashes of ``range_nodes(0, size)``.

        This is how the store appends without reading more than O(log n) rows.
        """
        expected = len(range_nodes(0, size)) if size else 0
        if len(hashes) != expected:
            raise LedgerError(f"a frontier of size {size} has {expected} hashes, got {len(hashes)}")
        compact = cls()
        compact._size = size
        compact._frontier = list(hashes)
        return compact

    def append(self, leaf: bytes) -> dict[NodeKey, bytes]:
        """Append a leaf *hash* (``leaf_hash(data)``); returns the subtrees it completes."""
        index = self._size
        current = leaf
        completed: dict[NodeKey, bytes] = {(0, index): leaf}
        level = 0
        # Each trailing one bit of the index is a left sibling that this leaf now completes.
        while (index >> level) & 1:
            current = node_hash(self._frontier.pop(), current)
            level += 1
            completed[(level, index >> level)] = current
        self._frontier.append(current)
        self._size += 1
        return completed

    def push(self, leaf: bytes) -> None:
        """``append`` for callers that keep no nodes (a streaming verifier): the same frontier,
        without collecting the subtrees the leaf completes."""
        frontier = self._frontier
        index = self._size
        current = leaf
        while index & 1:
            current = node_hash(frontier.pop(), current)
            index >>= 1
        frontier.append(current)
        self._size += 1

    def root(self) -> bytes:
        """Root hash of all leaves appended so far."""
        return _fold(self._frontier) if self._frontier else EMPTY_ROOT
