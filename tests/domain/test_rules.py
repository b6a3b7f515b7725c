"""The reporting and issuance rules the registry and the auditor's replay share."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest

from registry.domain.rules import (
    BufferTerms,
    check_no_period_overlap,
    check_report_area,
    check_report_period,
    check_unit_can_join,
    check_within_reference_level,
    plan_issuance,
    reference_level_over,
)
from registry.domain.serials import SerialRange
from registry.errors import ConflictError, InvalidRequestError

TODAY = date(2026, 1, 1)

JCM: dict[str, Any] = {
    "country": "KH",
    "project_id": "KH004",
    "vintage": 2024,
    "batch_number": 1,
    "period_start": "2023-06-09",
    "period_end": "2024-05-31",
    "redd": None,
}


def test_jcm_issuance_is_laid_out_in_allocation_order() -> None:
    plan = plan_issuance(**JCM, verified=1820, allocations=[("A", 1000), ("B", 820)])
    assert plan.batch_id == "KH-JCM-KH004-2024-00001"
    assert plan.blocks == [("A", SerialRange(1, 1000)), ("B", SerialRange(1001, 1820))]
    assert plan.effects()["quantity"] == 1820 and "redd" not in plan.effects()


def test_redd_issuance_deducts_leakage_and_fills_the_buffer_last() -> None:
    terms = BufferTerms(leakage_rate_bp=1000, buffer_rate_bp=1500, buffer_account="BUF-U1")
    plan = plan_issuance(
        **{
            **JCM,
            "redd": terms,
            "vintage": 2020,
            "period_start": "2018-03-12",
            "period_end": "2020-12-31",
        },
        verified=1_150_000,
        allocations=[("KH", 439_875), ("JP", 439_875)],
    )
    assert plan.batch_id == "KH-REDD-KH004-2020-00001" and plan.total == 1_035_000
    assert plan.blocks[-1] == ("BUF-U1", SerialRange(879_751, 1_035_000))
    assert plan.redd == {
        "gross": 1_150_000,
        "leakage": 115_000,
        "net": 1_035_000,
        "buffer": 155_250,
        "buffer_account": "BUF-U1",
    }


def test_a_buffer_share_is_issued_even_when_nothing_is_left_to_allocate() -> None:
    # gross 2: leakage 1 (rounded up), net 1, buffer 1 (rounded up), nothing for proponents.
    terms = BufferTerms(leakage_rate_bp=1000, buffer_rate_bp=2000, buffer_account="BUF-U1")
    args: dict[str, Any] = {**JCM, "redd": terms}
    plan = plan_issuance(**args, verified=2, allocations=[])
    assert plan.blocks == [("BUF-U1", SerialRange(1, 1))] and plan.total == 1
    # Nothing at all to issue is refused, not an empty batch.
    with pytest.raises(InvalidRequestError, match="nothing to issue"):
        plan_issuance(**args, verified=1, allocations=[])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"allocations": []}, "allocations sum to 0 tCO2e but 1820"),
        ({"allocations": [("A", 1819)]}, "allocations sum to 1819 tCO2e but 1820"),
        ({"vintage": 2022}, "vintage 2022 is outside the report's period"),
        ({"vintage": 2025}, "vintage 2025 is outside the report's period"),
    ],
)
def test_bad_issuances_are_refused(change: dict[str, object], message: str) -> None:
    args: dict[str, Any] = {**JCM, "verified": 1820, "allocations": [("A", 1820)], **change}
    with pytest.raises(InvalidRequestError, match=message):
        plan_issuance(**args)


def test_report_periods() -> None:
    check_report_period(
        period_start="2024-01-01",
        period_end="2024-12-31",
        crediting_start="2023-06-09",
        crediting_end="2030-12-31",
        today=TODAY,
    )
    with pytest.raises(InvalidRequestError, match="before it starts"):
        check_report_period(
            period_start="2024-12-31",
            period_end="2024-01-01",
            crediting_start="2023-06-09",
            crediting_end="2030-12-31",
            today=TODAY,
        )
    with pytest.raises(InvalidRequestError, match="outside the crediting period"):
        check_report_period(
            period_start="2023-01-01",
            period_end="2023-12-31",
            crediting_start="2023-06-09",
            crediting_end="2030-12-31",
            today=TODAY,
        )
    # A period not yet over is no period to report: today's reductions are not known yet.
    for end in ("2026-01-01", "2026-06-30"):
        with pytest.raises(InvalidRequestError, match="is not over"):
            check_report_period(
                period_start="2025-01-01",
                period_end=end,
                crediting_start="2023-06-09",
                crediting_end="2030-12-31",
                today=TODAY,
            )
    with pytest.raises(ConflictError, match="overlaps report MR1"):
        check_no_period_overlap(
            period_start="2024-06-01",
            period_end="2024-12-31",
            forest_unit_id=None,
            others=[("MR1", "2024-01-01", "2024-06-01", None)],
        )
    check_no_period_overlap(
        period_start="2024-06-02",
        period_end="2024-12-31",
        forest_unit_id=None,
        others=[("MR1", "2024-01-01", "2024-06-01", None)],
    )


@pytest.mark.parametrize(
    ("new_unit", "old_unit", "overlaps"),
    [(None, "FU1", True), ("FU1", None, True), ("FU1", "FU1", True), ("FU1", "FU2", False)],
)
def test_a_project_wide_report_covers_every_unit(
    new_unit: str | None, old_unit: str | None, overlaps: bool
) -> None:
    def check() -> None:
        check_no_period_overlap(
            period_start="2024-01-01",
            period_end="2024-12-31",
            forest_unit_id=new_unit,
            others=[("MR1", "2024-01-01", "2024-12-31", old_unit)],
        )

    if overlaps:
        with pytest.raises(ConflictError, match="overlaps report MR1"):
            check()
    else:
        check()


def test_no_way_of_cutting_a_year_into_reports_claims_more_than_its_reference_level() -> None:
    # A leap year's level is its level: 366 days of 2024 are one year.
    assert reference_level_over(400_000, date(2024, 1, 1), date(2024, 12, 31)) == 400_000
    assert reference_level_over(365, date(2025, 1, 1), date(2025, 12, 31)) == 365
    # Each calendar year by its own days.
    assert reference_level_over(366 * 365, date(2024, 12, 31), date(2025, 1, 1)) == 365 + 366
    # Rounded down: one-day reports of a 1 t level claim nothing, and any cutting of a year
    # into reports sums to at most its level.
    assert reference_level_over(1, date(2025, 3, 1), date(2025, 3, 1)) == 0
    days = [date(2024, 1, 1) + timedelta(days=d) for d in range(0, 366, 7)] + [date(2025, 1, 1)]
    weekly = sum(
        reference_level_over(1000, first, last - timedelta(days=1))
        for first, last in itertools.pairwise(days)
    )
    assert weekly <= 1000


def test_reductions_cannot_exceed_the_reference_level() -> None:
    check_within_reference_level(
        reductions=365, reference_level=365, period_start="2025-01-01", period_end="2025-12-31"
    )
    with pytest.raises(InvalidRequestError, match="exceeds the reference level for 365 days"):
        check_within_reference_level(
            reductions=366, reference_level=365, period_start="2025-01-01", period_end="2025-12-31"
        )


def _area(programme: str | None, unit: str | None, levels: dict[str, int]) -> None:
    check_report_area(project_id="KH009", programme=programme, forest_unit_id=unit,
                      reference_levels=levels, reductions=10, period_start="2024-01-01",
                      period_end="2024-12-31")


def test_a_project_reports_as_its_programme_says_and_one_of_before_as_its_units_say() -> None:
    _area("JCM", None, {})
    _area("REDD+", "U1", {"U1": 1000})
    with pytest.raises(InvalidRequestError, match="is REDD\\+: name the forest_unit_id"):
        _area("REDD+", None, {})  # before its first unit, too
    with pytest.raises(InvalidRequestError, match="is JCM: it reports project-wide"):
        _area("JCM", "U1", {"U1": 1000})
    # Registered before projects named their programme: REDD+ once it has a unit.
    _area(None, None, {})
    _area(None, "U1", {"U1": 1000})
    with pytest.raises(InvalidRequestError, match="is REDD\\+: name the forest_unit_id"):
        _area(None, None, {"U1": 1000})


def test_forest_units_join_redd_projects_and_projects_of_before_without_project_wide_reports(
) -> None:
    asked: list[bool] = []

    def reports(found: list[str]) -> Callable[[], list[str]]:
        def ask() -> list[str]:
            asked.append(True)
            return found
        return ask

    check_unit_can_join(project_id="KH009", programme="REDD+", project_wide_reports=reports([]))
    with pytest.raises(ConflictError, match="forest units belong to REDD\\+ projects"):
        check_unit_can_join(project_id="KH009", programme="JCM",
                            project_wide_reports=reports([]))
    assert not asked  # the reports are read only for a project of before
    check_unit_can_join(project_id="KH009", programme=None, project_wide_reports=reports([]))
    with pytest.raises(ConflictError, match="project-wide report KH009-MR1"):
        check_unit_can_join(project_id="KH009", programme=None,
                            project_wide_reports=reports(["KH009-MR1"]))
