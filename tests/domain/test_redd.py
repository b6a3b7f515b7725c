"""REDD+ issuance and reversal arithmetic: integers, deductions rounded up."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.domain.redd import (
    BASIS_POINTS,
    ReddIssuance,
    Reversal,
    ceil_basis_points,
    compute_issuance,
    compute_reversal,
)
from registry.domain.serials import MAX_SERIAL, allocate
from registry.errors import InvalidQuantityError

rates = st.integers(0, BASIS_POINTS)
grosses = st.one_of(st.integers(1, 10_000), st.integers(1, MAX_SERIAL))


def test_example() -> None:
    i = compute_issuance(gross=10_000, leakage_bp=1500, buffer_bp=2000)
    assert (i.leakage, i.net, i.buffer, i.issuable) == (1500, 8500, 1700, 6800)
    assert i.total_created == 8500


def test_deductions_round_up() -> None:
    i = compute_issuance(gross=101, leakage_bp=1000, buffer_bp=1500)
    assert i.leakage == 11  # ceil(10.1)
    assert i.net == 90
    assert i.buffer == 14  # ceil(13.5)
    assert i.issuable == 76
    assert compute_issuance(gross=1, leakage_bp=1, buffer_bp=0).issuable == 0  # ceil(0.0001) = 1


def test_edge_rates() -> None:
    none = compute_issuance(gross=500, leakage_bp=0, buffer_bp=0)
    assert (none.leakage, none.net, none.buffer, none.issuable) == (0, 500, 0, 500)
    all_leak = compute_issuance(gross=500, leakage_bp=BASIS_POINTS, buffer_bp=5000)
    assert (all_leak.net, all_leak.buffer, all_leak.issuable) == (0, 0, 0)
    all_buffer = compute_issuance(gross=500, leakage_bp=0, buffer_bp=BASIS_POINTS)
    assert (all_buffer.buffer, all_buffer.issuable) == (500, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gross": 0}, "gross must be between 1"),
        ({"gross": -5}, "gross"),
        ({"gross": True}, "gross must be an integer, got bool"),
        ({"gross": 100.0}, "gross must be an integer, got float"),
        ({"gross": "100"}, "gross must be an integer, got str"),
        ({"gross": MAX_SERIAL + 1}, "gross"),
        ({"leakage_bp": -1}, "leakage_bp must be between 0 and 10000, got -1"),
        ({"leakage_bp": 10_001}, "leakage_bp"),
        ({"leakage_bp": 15.0}, "leakage_bp must be an integer"),
        ({"buffer_bp": False}, "buffer_bp must be an integer, got bool"),
        ({"buffer_bp": 0.15}, "buffer_bp"),
    ],
)
def test_bad_inputs_rejected(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"gross": 1000, "leakage_bp": 1000, "buffer_bp": 1000, **kwargs}
    with pytest.raises(InvalidQuantityError, match=match):
        compute_issuance(**args)  # type: ignore[arg-type]


@given(gross=grosses, leakage_bp=rates, buffer_bp=rates)
def test_issuance_properties(gross: int, leakage_bp: int, buffer_bp: int) -> None:
    i = compute_issuance(gross=gross, leakage_bp=leakage_bp, buffer_bp=buffer_bp)
    assert i.leakage + i.net == gross
    assert i.issuable + i.buffer == i.net == i.total_created
    assert all(v >= 0 for v in (i.leakage, i.net, i.buffer, i.issuable))
    # Each deduction is the exact share rounded up: at least the share, less than one more.
    assert i.leakage * BASIS_POINTS >= gross * leakage_bp > (i.leakage - 1) * BASIS_POINTS
    assert i.buffer * BASIS_POINTS >= i.net * buffer_bp > (i.buffer - 1) * BASIS_POINTS
    # Conservative: never more to the proponent than the exact net-of-buffer share.
    assert i.issuable * BASIS_POINTS <= i.net * (BASIS_POINTS - buffer_bp)
    assert all(type(v) is int for v in dataclasses.astuple(i))


@given(gross=st.integers(2, 10**9), leakage_bp=rates, buffer_bp=rates)
def test_issuance_allocates_between_proponent_and_pool(
    gross: int, leakage_bp: int, buffer_bp: int
) -> None:
    i = compute_issuance(gross=gross, leakage_bp=leakage_bp, buffer_bp=buffer_bp)
    shares = [(a, q) for a, q in (("proponent", i.issuable), ("buffer-pool", i.buffer)) if q > 0]
    if i.net == 0:
        return
    blocks = allocate(i.total_created, shares)
    assert sum(r.quantity for _, r in blocks) == i.net


def test_record_is_checked_at_construction() -> None:
    good = compute_issuance(gross=10_000, leakage_bp=1500, buffer_bp=2000)
    assert ReddIssuance(**dataclasses.asdict(good)) == good
    for field, value in (("issuable", 6801), ("buffer", 1699), ("net", 8501), ("leakage", 1499)):
        with pytest.raises(InvalidQuantityError, match=f"{field} must be"):
            dataclasses.replace(good, **{field: value})
    with pytest.raises(InvalidQuantityError, match=r"issuable must be 6800 .* got 6800\.0"):
        dataclasses.replace(good, issuable=6800.0)  # type: ignore[arg-type]


def test_ceil_basis_points() -> None:
    assert ceil_basis_points(0, 1500) == 0
    assert ceil_basis_points(3, 3334) == 2  # 1.0002 -> 2
    assert ceil_basis_points(3, 3333) == 1  # 0.9999 -> 1
    assert ceil_basis_points(10**15, 10_000) == 10**15


# --- reversal ---------------------------------------------------------------------------------


def test_reversal_examples() -> None:
    assert compute_reversal(lost=100, pool=1000) == Reversal(
        lost=100, pool=1000, cancelled=100, shortfall=0
    )
    r = compute_reversal(lost=1500, pool=1000)
    assert (r.cancelled, r.shortfall) == (1000, 500)
    r = compute_reversal(lost=7, pool=0)
    assert (r.cancelled, r.shortfall) == (0, 7)


@pytest.mark.parametrize(
    ("lost", "pool", "match"),
    [
        (0, 10, "lost"),
        (True, 10, "lost"),
        (1.5, 10, "lost"),
        (10, -1, "pool must be between 0"),
        (10, 10.0, "pool must be an integer"),
    ],
)
def test_reversal_rejects(lost: object, pool: object, match: str) -> None:
    with pytest.raises(InvalidQuantityError, match=match):
        compute_reversal(lost=lost, pool=pool)  # type: ignore[arg-type]


def test_reversal_record_is_checked() -> None:
    with pytest.raises(InvalidQuantityError, match="cancelled must be 10"):
        Reversal(lost=10, pool=50, cancelled=9, shortfall=1)


@given(lost=st.integers(1, MAX_SERIAL), pool=st.integers(0, MAX_SERIAL))
def test_reversal_properties(lost: int, pool: int) -> None:
    r = compute_reversal(lost=lost, pool=pool)
    assert r.cancelled + r.shortfall == lost
    assert 0 <= r.cancelled <= pool
    assert r.shortfall == 0 or r.cancelled == pool
