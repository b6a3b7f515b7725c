"""A ledger written before migrations 0004/0005 still verifies with today's auditor.

``data/ledger-0003.jsonl`` is ``registry init --insecure-dev-key && registry demo`` exported by
the code at 9089a01 (schema 0003), with one more forest unit: a one-degree square, whose area
the old code measured along geodesic edges. A registry that ran then and was migrated since
exports exactly such a ledger: its signed instructions cannot be re-signed.
"""

from __future__ import annotations

from pathlib import Path

from registry.ledger.verify_bundle import verify_bundle

LEGACY = Path(__file__).parent / "data" / "ledger-0003.jsonl"
LEGACY_KEY = (
    "kh.carbon-registry.example/ledger+1e6f8dc8+AcsmhAlJpbFm2XVE8cTZ2A+ypvhzLKGpRealHPgW3g2B"
)


def test_a_ledger_from_before_the_programme_field_still_verifies() -> None:
    report = verify_bundle(LEGACY, registry_key=LEGACY_KEY, workers=1).report
    assert report.ok, report.render()
    assert report.summary["projects"] == 2 and report.summary["forest_units"] == 2
