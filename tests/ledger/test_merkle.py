"""Tests of ``registry.ledger.merkle``: roots, storage layout, proofs, verification, read cost.

The oracle is a naive recursive transcription of RFC 9162 section 2.1 (MTH, PATH, SUBPROOF)
over a plain list of leaf hashes, written here independently of the module's iterative,
storage-backed code. Property tests run against one 300-leaf ``MemoryTree``: a tree stores only
complete subtrees, so it can answer for every smaller size too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from registry.errors import LedgerError, ProofError
from registry.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MemoryTree,
    NodeKey,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    left_siblings_for_append,
    node_hash,
    nodes_completed_by_append,
    range_nodes,
    root,
    verify_consistency,
    verify_inclusion,
)

# --- the naive oracle (RFC 9162 2.1, recursively) ---------------------------------------------


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(naive_mth(leaves[:k]), naive_mth(leaves[k:]))


def naive_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_mth(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_mth(leaves[:k])]


def naive_subproof(m: int, leaves: Sequence[bytes], complete: bool = True) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [naive_mth(leaves)]
    k = _split(n)
    if m <= k:
        return [*naive_subproof(m, leaves[:k], complete), naive_mth(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_mth(leaves[:k])]


def inclusion_shape(index: int, size: int) -> tuple[str, ...] | None:
    """Which side each PATH node hangs on: all an inclusion verifier may use besides hashes."""
    if not 0 <= index < size:
        return None
    if size == 1:
        return ()
    k = _split(size)
    if index < k:
        return (*(inclusion_shape(index, k) or ()), "right")
    return (*(inclusion_shape(index - k, size - k) or ()), "left")


def consistency_shape(size1: int, size2: int) -> tuple[str, ...] | None:
    """The SUBPROOF structure: all a consistency verifier may depend on besides hashes."""

    def sub(m: int, n: int, complete: bool) -> tuple[str, ...]:
        if m == n:
            return () if complete else ("old",)
        k = _split(n)
        if m <= k:
            return (*sub(m, k, complete), "right")
        return (*sub(m - k, n - k, False), "left")

    return sub(size1, size2, True) if 0 < size1 <= size2 else None


# --- fixtures as module constants (built once; about a millisecond) ---------------------------

MAX_N = 300
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_N)]
TREE = MemoryTree()
for _leaf in LEAVES:
    TREE.append(_leaf)
ROOTS = [root(n, TREE) for n in range(MAX_N + 1)]

# RFC 6962's test leaves (as in certificate-transparency and transparency-dev/merkle), and the
# roots of their first 1..8; sizes 1, 2, 3, 5 and 8 also appear in the conformance vectors.
RFC6962_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

PROPERTY = settings(max_examples=60, deadline=None)


class CountingReader:
    """A ``NodeReader`` for a tree too big to build: hashes are made up from the key."""

    def __init__(self) -> None:
        self.calls: list[list[NodeKey]] = []

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        self.calls.append(list(keys))
        return {key: hashlib.sha256(repr(key).encode()).digest() for key in keys}


# --- hashing and roots ------------------------------------------------------------------------


def test_hashes_are_domain_separated() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    # A node cannot pass for a leaf whose data is its two children.
    assert node_hash(b"a" * 32, b"b" * 32) != leaf_hash(b"a" * 32 + b"b" * 32)


def test_rfc6962_roots() -> None:
    tree = MemoryTree()
    compact = CompactRange()
    assert tree.root() == compact.root() == EMPTY_ROOT
    hashes = [leaf_hash(data) for data in RFC6962_LEAVES]
    for size, (leaf, want) in enumerate(zip(hashes, RFC6962_ROOTS, strict=True), start=1):
        assert tree.append(leaf) == size - 1
        compact.append(leaf)
        assert tree.size == compact.size == size
        assert tree.root().hex() == compact.root().hex() == want
        assert naive_mth(hashes[:size]).hex() == want


def test_roots_match_naive_mth() -> None:
    for n in range(MAX_N + 1):
        assert ROOTS[n] == naive_mth(LEAVES[:n]), n


def test_compact_range_root_equals_memory_tree_root_at_every_size() -> None:
    compact = CompactRange()
    assert compact.root() == ROOTS[0]
    for n, leaf in enumerate(LEAVES, start=1):
        compact.append(leaf)
        assert compact.size == n
        assert compact.root() == ROOTS[n], n


# --- storage layout ---------------------------------------------------------------------------


def test_memory_tree_stores_exactly_the_complete_subtrees() -> None:
    want = {
        (level, index)
        for level in range(MAX_N.bit_length())
        for index in range(MAX_N >> level)
        if (index + 1) << level <= MAX_N
    }
    assert set(TREE.nodes) == want
    for (level, index), value in TREE.nodes.items():
        assert value == naive_mth(LEAVES[index << level : (index + 1) << level])


def test_append_reads_trailing_ones_and_writes_their_ancestors() -> None:
    assert left_siblings_for_append(0) == []
    assert left_siblings_for_append(6) == []
    assert left_siblings_for_append(7) == [(0, 6), (1, 2), (2, 0)]
    siblings = {key: TREE.nodes[key] for key in left_siblings_for_append(7)}
    completed = nodes_completed_by_append(7, LEAVES[7], siblings)
    assert completed == {key: TREE.nodes[key] for key in [(0, 7), (1, 3), (2, 1), (3, 0)]}


def test_append_without_its_siblings_is_refused() -> None:
    with pytest.raises(LedgerError, match=r"\(1, 2\)"):
        nodes_completed_by_append(7, LEAVES[7], {(0, 6): LEAVES[6], (2, 0): ROOTS[4]})


@given(start=st.integers(0, 2**64), length=st.integers(1, 2**64))
@settings(max_examples=200)
def test_range_nodes_tiles_the_range_with_aligned_perfect_subtrees(start: int, length: int) -> None:
    end = start + length
    keys = range_nodes(start, end)
    position = start
    for level, index in keys:
        assert index << level == position  # aligned, contiguous, left to right
        position += 1 << level
    assert position == end
    assert len(keys) <= 2 * length.bit_length()


def test_range_nodes_refuses_empty_ranges() -> None:
    with pytest.raises(ValueError, match=r"\[5, 5\)"):
        range_nodes(5, 5)


# --- proofs match the RFC's definition, and verify ---------------------------------------------


def test_proofs_equal_the_rfc_definition_for_small_trees() -> None:
    for n in range(1, 65):
        for i in range(n):
            assert inclusion_proof(i, n, TREE) == naive_path(i, LEAVES[:n]), (i, n)
        for m in range(1, n + 1):
            assert consistency_proof(m, n, TREE) == naive_subproof(m, LEAVES[:n]), (m, n)


@given(n=st.integers(1, MAX_N))
@PROPERTY
def test_every_proof_verifies(n: int) -> None:
    for i in range(n):
        verify_inclusion(LEAVES[i], i, n, inclusion_proof(i, n, TREE), ROOTS[n])
    for m in range(1, n + 1):
        verify_consistency(m, n, consistency_proof(m, n, TREE), ROOTS[m], ROOTS[n])


def _flip(proof: list[bytes], data: st.DataObject) -> list[bytes]:
    position = data.draw(st.integers(0, len(proof) - 1), label="node")
    byte = data.draw(st.integers(0, len(proof[position]) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    node = bytearray(proof[position])
    node[byte] ^= 1 << bit
    return [*proof[:position], bytes(node), *proof[position + 1 :]]


def _tamper(proof: list[bytes], how: str, data: st.DataObject) -> list[bytes]:
    if how == "flip":
        assume(proof)
        return _flip(proof, data)
    if how == "drop":
        assume(proof)
        position = data.draw(st.integers(0, len(proof) - 1), label="dropped")
        return [*proof[:position], *proof[position + 1 :]]
    position = data.draw(st.integers(0, len(proof)), label="inserted at")
    extra = data.draw(st.sampled_from([*LEAVES[:4], *ROOTS[1:5], b"\x00" * 32]), label="node")
    return [*proof[:position], extra, *proof[position:]]


@given(n=st.integers(1, MAX_N), data=st.data(), how=st.sampled_from(["flip", "drop", "add"]))
@PROPERTY
def test_tampered_inclusion_proof_fails(n: int, data: st.DataObject, how: str) -> None:
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = _tamper(inclusion_proof(i, n, TREE), how, data)
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[i], i, n, proof, ROOTS[n])


@given(n=st.integers(1, MAX_N), data=st.data(), how=st.sampled_from(["flip", "drop", "add"]))
@PROPERTY
def test_tampered_consistency_proof_fails(n: int, data: st.DataObject, how: str) -> None:
    m = data.draw(st.integers(1, n), label="size1")
    proof = _tamper(consistency_proof(m, n, TREE), how, data)
    with pytest.raises(ProofError):
        verify_consistency(m, n, proof, ROOTS[m], ROOTS[n])


@given(n=st.integers(1, MAX_N), data=st.data())
@PROPERTY
def test_inclusion_proof_binds_index_and_size(n: int, data: st.DataObject) -> None:
    """A proof checked at another index or size fails, unless RFC 9162's tree has the same shape.

    Same shape is a real property of RFC 9162, not a bug: leaf 0's proof in a tree of 3 leaves
    is also a well-formed proof for leaf 0 of 4 leaves (two right siblings either way), so it
    verifies against the same root. The size is bound by the signed checkpoint, not the proof.
    """
    i = data.draw(st.integers(0, n - 1), label="index")
    other_i = data.draw(st.integers(-1, 2 * n + 1), label="claimed index")
    other_n = data.draw(st.integers(0, 2 * n + 1), label="claimed size")
    assume((other_i, other_n) != (i, n))
    proof = inclusion_proof(i, n, TREE)
    if inclusion_shape(other_i, other_n) == inclusion_shape(i, n):
        verify_inclusion(LEAVES[i], other_i, other_n, proof, ROOTS[n])
    else:
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[i], other_i, other_n, proof, ROOTS[n])


def test_same_shape_sizes_are_indistinguishable_to_the_verifier() -> None:
    """Pins the rare case the two binding tests above allow, so it is always exercised."""
    assert inclusion_shape(0, 3) == inclusion_shape(0, 4) == ("right", "right")
    verify_inclusion(LEAVES[0], 0, 4, inclusion_proof(0, 3, TREE), ROOTS[3])
    assert consistency_shape(1, 3) == consistency_shape(1, 4)
    verify_consistency(1, 4, consistency_proof(1, 3, TREE), ROOTS[1], ROOTS[3])


@given(n=st.integers(1, MAX_N), data=st.data())
@PROPERTY
def test_consistency_proof_binds_sizes(n: int, data: st.DataObject) -> None:
    """As for inclusion: other sizes fail unless their SUBPROOF has the very same structure."""
    m = data.draw(st.integers(1, n), label="size1")
    other_m = data.draw(st.integers(-1, 2 * n + 1), label="claimed size1")
    other_n = data.draw(st.integers(-1, 2 * n + 1), label="claimed size2")
    assume((other_m, other_n) != (m, n))
    proof = consistency_proof(m, n, TREE)
    if consistency_shape(other_m, other_n) == consistency_shape(m, n):
        verify_consistency(other_m, other_n, proof, ROOTS[m], ROOTS[n])
    else:
        with pytest.raises(ProofError):
            verify_consistency(other_m, other_n, proof, ROOTS[m], ROOTS[n])


def test_failures_say_what_failed() -> None:
    proof = inclusion_proof(5, 13, TREE)
    with pytest.raises(ProofError, match="too short"):
        verify_inclusion(LEAVES[5], 5, 13, proof[:-1], ROOTS[13])
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion(LEAVES[5], 5, 13, [*proof, ROOTS[1]], ROOTS[13])
    with pytest.raises(ProofError, match="computes root"):
        verify_inclusion(LEAVES[6], 5, 13, proof, ROOTS[13])
    with pytest.raises(ProofError, match="proof node 1 is 31 bytes"):
        verify_inclusion(LEAVES[5], 5, 13, [proof[0], proof[1][:31], *proof[2:]], ROOTS[13])
    with pytest.raises(ProofError, match="not in a tree of size 13"):
        verify_inclusion(LEAVES[5], 13, 13, proof, ROOTS[13])
    proof = consistency_proof(6, 13, TREE)
    with pytest.raises(ProofError, match="old root"):
        verify_consistency(6, 13, proof, ROOTS[5], ROOTS[13])
    with pytest.raises(ProofError, match="new root"):
        verify_consistency(6, 13, proof, ROOTS[6], ROOTS[12])
    with pytest.raises(ProofError, match="is empty"):
        verify_consistency(6, 13, [], ROOTS[6], ROOTS[13])
    with pytest.raises(ProofError, match="greater than size2"):
        verify_consistency(13, 6, proof, ROOTS[13], ROOTS[6])
    with pytest.raises(ProofError, match="size1 > 0"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match=r"root1 \w+ != root2"):
        verify_consistency(6, 6, [], ROOTS[6], ROOTS[7])


def test_proofs_that_cannot_be_built_are_refused() -> None:
    for index, size in [(0, 0), (5, 5), (-1, 5)]:
        with pytest.raises(ProofError, match="no inclusion proof"):
            inclusion_proof(index, size, TREE)
    for size1, size2 in [(0, 0), (0, 5), (6, 5), (-1, 5)]:
        with pytest.raises(ProofError, match="no consistency proof"):
            consistency_proof(size1, size2, TREE)


def test_reading_past_the_stored_tree_is_refused() -> None:
    with pytest.raises(LedgerError, match="missing"):
        inclusion_proof(0, MAX_N + 1, TREE)


def test_a_reader_that_leaves_out_a_node_fails_the_proof() -> None:
    class ForgetfulReader:
        def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
            return {key: TREE.nodes[key] for key in keys[1:]}

    with pytest.raises(ProofError, match="missing"):
        inclusion_proof(3, 13, ForgetfulReader())


# --- read cost --------------------------------------------------------------------------------

BIG_SIZES = [10**6, 10**6 + 1, 999_999, 2**20 - 1, 2**20, 2**20 + 1, 1_234_567]


def _assert_one_small_read(reader: CountingReader, size: int, bound: float) -> None:
    assert len(reader.calls) == 1
    keys = reader.calls[0]
    assert len(keys) <= bound, (size, len(keys), bound)
    assert len(set(keys)) == len(keys)
    # Only ever complete subtrees: they are the only rows a store has.
    assert all((index + 1) << level <= size for level, index in keys)


@pytest.mark.parametrize("size", BIG_SIZES)
def test_proofs_and_roots_read_once_and_logarithmically(size: int) -> None:
    bound = 2 * math.log2(size) + 2
    for index in sorted({0, 1, size // 3, size // 2, size - 2, size - 1}):
        reader = CountingReader()
        inclusion_proof(index, size, reader)
        _assert_one_small_read(reader, size, bound)
    for size1 in sorted({1, 2, 3, size // 3, size // 2, 2**19, size - 1}):
        reader = CountingReader()
        consistency_proof(size1, size, reader)
        _assert_one_small_read(reader, size, bound)
    reader = CountingReader()
    root(size, reader)
    _assert_one_small_read(reader, size, math.log2(size) + 1)


@given(data=st.data(), size=st.integers(2, 2**63))
@settings(max_examples=200)
def test_read_cost_bound_holds_for_any_size(data: st.DataObject, size: int) -> None:
    bound = 2 * math.log2(size) + 2
    reader = CountingReader()
    inclusion_proof(data.draw(st.integers(0, size - 1), label="index"), size, reader)
    _assert_one_small_read(reader, size, bound)
    reader = CountingReader()
    consistency_proof(data.draw(st.integers(1, size - 1), label="size1"), size, reader)
    _assert_one_small_read(reader, size, bound)


def test_trivial_proofs_read_nothing() -> None:
    reader = CountingReader()
    assert inclusion_proof(0, 1, reader) == []
    assert consistency_proof(7, 7, reader) == []
    assert root(0, reader) == EMPTY_ROOT
    assert reader.calls == []
