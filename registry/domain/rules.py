"""Rules of reporting and issuance that both the registry and the auditor's replay apply.

The service layer checks them against the database, the replay (``registry.ledger.replay``)
against the state it rebuilt from the ledger; both call these functions, so the two can never
disagree about what a valid report or issuance is.
"""

from __future__ import annotations

import math
from calendar import isleap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from typing import Any

from iso3166 import countries_by_alpha2

from registry.domain.redd import compute_issuance
from registry.domain.serials import MAX_SERIAL, SerialRange, allocate, batch_serial_id
from registry.errors import ConflictError, InvalidQuantityError, InvalidRequestError


def check_report_period(
    *, period_start: str, period_end: str, crediting_start: str, crediting_end: str, today: date
) -> None:
    """A monitoring period runs forwards, lies inside the project's crediting period, and is
    over: reductions are monitored after they happened, not credited ahead of time."""
    if period_end < period_start:
        raise InvalidRequestError(f"period ends ({period_end}) before it starts ({period_start})")
    if period_start < crediting_start or period_end > crediting_end:
        raise InvalidRequestError(
            f"period {period_start}..{period_end} lies outside the crediting period "
            f"{crediting_start}..{crediting_end}"
        )
    if period_end >= today.isoformat():
        raise InvalidRequestError(
            f"period {period_start}..{period_end} is not over (today is {today.isoformat()}): "
            "reductions are reported once they have happened"
        )


def check_report_area(
    *,
    project_id: str,
    programme: str | None,
    forest_unit_id: str | None,
    reference_levels: Mapping[str, int],
    reductions: int,
    period_start: str,
    period_end: str,
) -> None:
    """A report of a REDD+ project names one of its forest units and stays within its level;
    a JCM project reports project-wide.

    ``reference_levels`` maps each forest unit of the project to its reference level. A
    project registered before projects named their programme (``None``) is REDD+ once it
    has a forest unit.
    """
    if programme is None:
        programme = "REDD+" if reference_levels else "JCM"
    if programme == "REDD+" and forest_unit_id is None:
        raise InvalidRequestError(f"project {project_id} is REDD+: name the forest_unit_id")
    if forest_unit_id is None:
        return
    if programme != "REDD+":
        raise InvalidRequestError(
            f"project {project_id} is {programme}: it reports project-wide, without a "
            "forest_unit_id"
        )
    if forest_unit_id not in reference_levels:
        raise InvalidRequestError(
            f"forest unit {forest_unit_id} is not a unit of project {project_id}"
        )
    check_within_reference_level(
        reductions=reductions,
        reference_level=reference_levels[forest_unit_id],
        period_start=period_start,
        period_end=period_end,
    )


def check_within_reference_level(
    *, reductions: int, reference_level: int, period_start: str, period_end: str
) -> None:
    """A REDD+ unit cannot reduce more than its reference level emits over the period."""
    start, end = date.fromisoformat(period_start), date.fromisoformat(period_end)
    days = (end - start).days + 1
    ceiling = reference_level_over(reference_level, start, end)
    if reductions > ceiling:
        raise InvalidRequestError(
            f"{reductions} tCO2e exceeds the reference level for {days} days ({ceiling})",
            details={"reductions": reductions, "ceiling": ceiling},
        )


def reference_level_over(reference_level: int, start: date, end: date) -> int:
    """What a reference level of ``reference_level`` tCO2e a year emits over ``start..end``
    (both included): each calendar year's share by its own days (366 in a leap year), summed
    exactly and rounded down, so that no way of cutting a year into reports claims more than
    the year's level (rounding each report up, one-day reports of a 1 t level made 365 t)."""
    total = Fraction(0)
    for year in range(start.year, end.year + 1):
        first, last = max(start, date(year, 1, 1)), min(end, date(year, 12, 31))
        total += Fraction(reference_level * ((last - first).days + 1), 366 if isleap(year) else 365)
    return math.floor(total)


CLOSED_REPORT_STATUSES = frozenset({"rejected", "withdrawn"})
"""A report rejected by its verifier or withdrawn by its project issues nothing, ever: it
claims no period, and no area."""


def check_no_period_overlap(
    *,
    period_start: str,
    period_end: str,
    forest_unit_id: str | None,
    others: Iterable[tuple[str, str, str, str | None]],
) -> None:
    """Two reports covering the same days of the same area would count the reductions twice.

    ``others`` are ``(report_id, start, end, forest_unit_id)`` of every open report of the
    project (not rejected nor withdrawn: see :data:`CLOSED_REPORT_STATUSES`).
    A project-wide report (no forest unit) covers every unit, so it overlaps reports of any
    unit; reports of two different units do not overlap.
    """
    for other_id, start, end, other_unit in others:
        same_area = forest_unit_id is None or other_unit is None or other_unit == forest_unit_id
        if same_area and start <= period_end and period_start <= end:
            raise ConflictError(
                f"period overlaps report {other_id} ({start}..{end})",
                details={"report": other_id},
            )


def check_allocation_holder(
    *, project_id: str, participants: Sequence[str], account_id: str, holder: str, role: str
) -> None:
    """Issued credits go where the Joint Committee allocates them: to the project's participants
    and to governments (the partner country's, Japan's); never to a party outside the project,
    the registry's own administrators included. ``holder`` (a ``role``) holds ``account_id``."""
    if role != "government" and holder not in participants:
        raise InvalidRequestError(
            f"account {account_id} is held by {holder}, who is neither a participant of project "
            f"{project_id} nor a government: credits are allocated to the project's side",
            details={"account": account_id, "holder": holder},
        )


@dataclass(frozen=True)
class BufferTerms:
    """What a REDD+ forest unit's issuance deducts and where its buffer share goes."""

    leakage_rate_bp: int
    buffer_rate_bp: int
    buffer_account: str
    pool: int = 0
    """Credits the buffer pool holds now (active)."""


@dataclass(frozen=True)
class IssuancePlan:
    """A checked issuance: the batch id and every block it creates, in serial order."""

    batch_id: str
    programme: str
    total: int
    blocks: list[tuple[str, SerialRange]]
    redd: dict[str, Any] | None

    def effects(self) -> dict[str, Any]:
        """The ``effects`` the ledger entry records for this issuance."""
        effects: dict[str, Any] = {
            "batch": self.batch_id,
            "quantity": self.total,
            "blocks": [
                {"account": account, "start": r.start, "end": r.end} for account, r in self.blocks
            ],
        }
        if self.redd is not None:
            effects["redd"] = self.redd
        return effects


def plan_issuance(
    *,
    country: str,
    project_id: str,
    vintage: int,
    batch_number: int,
    period_start: str,
    period_end: str,
    verified: int,
    allocations: Sequence[tuple[str, int]],
    redd: BufferTerms | None,
) -> IssuancePlan:
    """Check an issuance against its verified report and lay out its serial blocks.

    JCM: the allocations must sum exactly to the verified reductions. REDD+: leakage is
    deducted, the buffer share goes to the unit's buffer pool (last in serial order), and the
    allocations must sum exactly to what remains, none when nothing does (a buffer share is
    still issued then: it belongs to the pool whatever the proponents get).
    """
    if not int(period_start[:4]) <= vintage <= int(period_end[:4]):
        raise InvalidRequestError(
            f"vintage {vintage} is outside the report's period {period_start}..{period_end}",
            details={"vintage": vintage, "period": [period_start, period_end]},
        )
    shares = list(allocations)
    allocated = sum(q for _, q in shares)
    redd_effects: dict[str, Any] | None = None
    if redd is None:
        expected = verified
    else:
        calc = compute_issuance(
            gross=verified, leakage_bp=redd.leakage_rate_bp, buffer_bp=redd.buffer_rate_bp
        )
        expected = calc.issuable
        if redd.pool + calc.buffer > MAX_SERIAL:
            # A reversal states the pool it draws on, which no ledger entry could then write.
            raise InvalidQuantityError(
                f"the buffer pool {redd.buffer_account} would hold {redd.pool + calc.buffer} "
                f"credits, more than {MAX_SERIAL}",
                details={"pool": redd.pool, "buffer": calc.buffer, "max": MAX_SERIAL},
            )
        if calc.buffer:
            shares.append((redd.buffer_account, calc.buffer))
        redd_effects = {
            "gross": calc.gross,
            "leakage": calc.leakage,
            "net": calc.net,
            "buffer": calc.buffer,
            "buffer_account": redd.buffer_account,
        }
    if allocated != expected:
        raise InvalidRequestError(
            f"allocations sum to {allocated} tCO2e but {expected} must be allocated",
            details={"allocated": allocated, "expected": expected},
        )
    programme = "JCM" if redd is None else "REDD"
    total = sum(q for _, q in shares)
    if total == 0:
        raise InvalidRequestError(
            "nothing to issue: the report's reductions leave no credit to allocate or to put in "
            "the buffer pool",
            details={"verified": verified},
        )
    return IssuancePlan(
        batch_id=batch_serial_id(
            country=country,
            programme=programme,
            project_id=project_id,
            vintage=vintage,
            number=batch_number,
        ),
        programme=programme,
        total=total,
        blocks=allocate(total, shares),
        redd=redd_effects,
    )


def check_unit_can_join(
    *, project_id: str, programme: str | None, project_wide_reports: Callable[[], Sequence[str]]
) -> None:
    """Only a REDD+ project has forest units (and it never reports project-wide, so no
    report counts a unit's hectares twice).

    A project registered before projects named their programme (``None``) gains a unit unless
    it has an open project-wide report (``project_wide_reports``, asked only then): those
    reports covered the whole project area, and a unit's reports would count it again.
    """
    if programme is None:
        reports = project_wide_reports()
        if reports:
            raise ConflictError(
                f"project {project_id} already has project-wide report {reports[0]}; a forest "
                "unit now would count its area twice",
                details={"project": project_id, "report": reports[0]},
            )
        return
    if programme != "REDD+":
        raise ConflictError(
            f"project {project_id} is a {programme} project; forest units belong to REDD+ "
            "projects",
            details={"project": project_id, "programme": programme},
        )


def check_country_and_methodology(country: str, methodology: str) -> None:
    """``country`` must be an ISO 3166-1 alpha-2 code that names a country, and
    ``methodology`` one approved for it: a JCM methodology is approved by the Joint Committee
    of one partner country and named by its code (``KH_AM001`` is Cambodia's)."""
    # ISO 3166-1 leaves the codes X? to its users; the package lists one of them (XK).
    if country not in countries_by_alpha2 or country.startswith("X"):
        raise InvalidRequestError(
            f"partner country {country!r} is not an ISO 3166-1 alpha-2 country code "
            "(Cambodia is 'KH')",
            details={"field": "partner_country", "partner_country": country},
        )
    approved_for = methodology.partition("_")[0]
    if approved_for != country:
        raise InvalidRequestError(
            f"methodology {methodology} is approved for partner country {approved_for}, and "
            f"this project's partner country is {country}: a JCM project applies a "
            f"methodology of its own partner country ({country}_AM...)",
            details={"field": "methodology", "methodology": methodology,
                     "partner_country": country},
        )
