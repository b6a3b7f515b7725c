"""REDD+ issuance and reversal arithmetic, in integers only.

From verified gross emission reductions (tCO2e) a REDD+ issuance deducts leakage (emissions
displaced outside the unit) and then sets aside a non-permanence buffer share in the buffer pool.
Rates are integer basis points (0..10000; 1500 = 15 %), so no float ever decides a tonne.

Rounding is conservative: every deduction is rounded **up** (ceiling), so the proponent is never
issued a fraction of a tonne more than the rules allow, and rounding can only favour the
atmosphere. This is what makes "REDD+ issuance <= net verified reductions after leakage and buffer"
hold exactly, tonne for tonne.

    leakage  = ceil(gross * leakage_bp / 10000)
    net      = gross - leakage            (credits created in the batch)
    buffer   = ceil(net * buffer_bp / 10000)   (to the buffer pool)
    issuable = net - buffer               (to the proponent)

A reversal of ``L`` tonnes against a buffer pool holding ``P`` cancels ``min(L, P)`` buffer credits;
anything the pool cannot cover is a shortfall for the registry to report and act on.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.domain.serials import MAX_SERIAL, require_quantity
from registry.errors import InvalidQuantityError

__all__ = [
    "BASIS_POINTS",
    "MAX_SHORTFALL",
    "ReddIssuance",
    "Reversal",
    "ceil_basis_points",
    "compute_issuance",
    "compute_reversal",
    "unit_shortfall_after",
]

#: 100 % in basis points.
BASIS_POINTS = 10_000

#: The most a forest unit's shortfalls may add up to: the largest integer JSON carries exactly
#: (2^53 - 1, as every quantity), so the unit's public record reads the same in every client.
MAX_SHORTFALL = MAX_SERIAL


def _require_int(value: object, *, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidQuantityError(
            f"{name} must be an integer, got {type(value).__name__} {value!r}",
            details={"field": name, "value": repr(value)},
        )
    if not low <= value <= high:
        raise InvalidQuantityError(
            f"{name} must be between {low} and {high}, got {value}",
            details={"field": name, "value": value},
        )
    return value


def _require_rate(value: object, *, name: str) -> int:
    return _require_int(value, name=name, low=0, high=BASIS_POINTS)


def ceil_basis_points(amount: int, rate_bp: int) -> int:
    """``ceil(amount * rate_bp / 10000)`` computed exactly in integers."""
    amount = _require_int(amount, name="amount", low=0, high=MAX_SERIAL)
    rate_bp = _require_rate(rate_bp, name="rate_bp")
    return -(-amount * rate_bp // BASIS_POINTS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReddIssuance:
    """The figures of one REDD+ issuance, inputs included so an auditor can recompute them.

    Construction re-derives every figure from ``gross`` and the two rates and refuses any that
    differ, so a tampered or hand-written record cannot be built. Use :func:`compute_issuance`.
    ``net`` credits are created: ``issuable`` go to the proponent, ``buffer`` to the buffer pool.
    Either share may be 0 (e.g. a 100 % buffer, or a gross so small leakage takes it all).
    """

    gross: int
    leakage_bp: int
    buffer_bp: int
    leakage: int
    net: int
    buffer: int
    issuable: int

    def __post_init__(self) -> None:
        gross = require_quantity(self.gross, name="gross")
        leakage = ceil_basis_points(gross, _require_rate(self.leakage_bp, name="leakage_bp"))
        net = gross - leakage
        buffer = ceil_basis_points(net, _require_rate(self.buffer_bp, name="buffer_bp"))
        expected = {"leakage": leakage, "net": net, "buffer": buffer, "issuable": net - buffer}
        for name, value in expected.items():
            actual = getattr(self, name)
            if type(actual) is not int or actual != value:
                raise InvalidQuantityError(
                    f"{name} must be {value} for gross {gross}, leakage {self.leakage_bp} bp, "
                    f"buffer {self.buffer_bp} bp; got {actual!r}",
                    details={"field": name, "expected": value, "value": repr(actual)},
                )

    @property
    def total_created(self) -> int:
        """Credits the batch holds: ``issuable + buffer == net``."""
        return self.net


def compute_issuance(*, gross: int, leakage_bp: int, buffer_bp: int) -> ReddIssuance:
    """Split verified gross reductions into leakage, buffer and the proponent's issuable credits.

    ``gross`` is a positive int (tCO2e, at most MAX_SERIAL); rates are ints in 0..10000 basis
    points. Deductions round up (see the module docstring).
    """
    gross = require_quantity(gross, name="gross")
    leakage = ceil_basis_points(gross, _require_rate(leakage_bp, name="leakage_bp"))
    net = gross - leakage
    buffer = ceil_basis_points(net, _require_rate(buffer_bp, name="buffer_bp"))
    return ReddIssuance(
        gross=gross,
        leakage_bp=leakage_bp,
        buffer_bp=buffer_bp,
        leakage=leakage,
        net=net,
        buffer=buffer,
        issuable=net - buffer,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Reversal:
    """A reversal of ``lost`` tonnes against a buffer pool holding ``pool`` credits.

    ``cancelled = min(lost, pool)`` buffer credits are cancelled; ``shortfall = lost - cancelled``
    is carbon the pool could not cover. Construction checks the figures agree.
    """

    lost: int
    pool: int
    cancelled: int
    shortfall: int

    def __post_init__(self) -> None:
        lost = require_quantity(self.lost, name="lost")
        pool = _require_int(self.pool, name="pool", low=0, high=MAX_SERIAL)
        cancelled = min(lost, pool)
        for name, value in (("cancelled", cancelled), ("shortfall", lost - cancelled)):
            actual = getattr(self, name)
            if type(actual) is not int or actual != value:
                raise InvalidQuantityError(
                    f"{name} must be {value} for a loss of {lost} against a pool of {pool}; "
                    f"got {actual!r}",
                    details={"field": name, "expected": value, "value": repr(actual)},
                )


def compute_reversal(*, lost: int, pool: int) -> Reversal:
    """How many buffer credits a reversal of ``lost`` tonnes cancels, and what is left uncovered.

    ``lost`` is a positive int; ``pool`` (the buffer pool's active credits) an int >= 0.
    """
    lost = require_quantity(lost, name="lost")
    pool = _require_int(pool, name="pool", low=0, high=MAX_SERIAL)
    cancelled = min(lost, pool)
    return Reversal(lost=lost, pool=pool, cancelled=cancelled, shortfall=lost - cancelled)


def unit_shortfall_after(*, unit_id: str, shortfall: int, added: int) -> int:
    """A unit's total shortfall once a reversal adds ``added`` to the ``shortfall`` recorded.

    Each reversal's shortfall is at most 2^53 - 1, but they add up: a total past
    :data:`MAX_SHORTFALL` could not be published exactly, so the reversal that would make it
    is refused.
    """
    total = shortfall + added
    if added > 0 and total > MAX_SHORTFALL:  # (a total past it, from before the bound, stays)
        raise InvalidQuantityError(
            f"forest unit {unit_id} already has a shortfall of {shortfall} tCO2e; a further "
            f"{added} would take it past {MAX_SHORTFALL}",
            details={"unit": unit_id, "shortfall": shortfall, "added": added, "max": MAX_SHORTFALL},
        )
    return total
