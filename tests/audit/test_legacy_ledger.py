"""A ledger written before migrations 0004/0005 still verifies with today's auditor.

``data/ledger-0003.jsonl`` is ``registry init --insecure-dev-key && registry demo`` exported by
the code at 9089a01 (schema 0003), with one more forest unit: a one-degree square, whose area
the old code measured along geodesic edges. A registry that ran then and was migrated since
exports exactly such a ledger: its signed instructions cannot be re-signed.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from registry.audit_cli import verify_cmd
from registry.domain.instructions import MAX_ACTIVE_KEYS
from registry.ledger.replay import ReplayedState
from registry.ledger.verify_bundle import EXIT_FAILED, verify_bundle

LEGACY = Path(__file__).parent / "data" / "ledger-0003.jsonl"
LEGACY_KEY = (
    "kh.carbon-registry.example/ledger+1e6f8dc8+AcsmhAlJpbFm2XVE8cTZ2A+ypvhzLKGpRealHPgW3g2B"
)


def test_a_ledger_from_before_the_programme_field_still_verifies() -> None:
    report = verify_bundle(LEGACY, registry_key=LEGACY_KEY, workers=1).report
    assert report.ok, report.render()
    assert report.summary["projects"] == 2 and report.summary["forest_units"] == 2


RULES = ["instructions_name_registry", "issuance_to_project_side", "status_changes_change",
         "max_active_keys", "plain_text", "methodology_of_partner_country"]


def test_the_report_names_the_rules_an_older_ledger_is_not_held_to() -> None:
    """A genesis without a rule's flag escapes that rule's check: right for a ledger begun
    before it, and what a registry hiding a breach would do. The report says which, and an
    auditor who knows the ledger began under this version fails it with
    --require-every-rule."""
    app = typer.Typer()
    app.command()(verify_cmd)
    runner = CliRunner()
    args = [str(LEGACY), "--registry-key", LEGACY_KEY, "--workers", "1"]
    passed = runner.invoke(app, args)
    assert passed.exit_code == 0, passed.output
    assert "PASS: every check passed" in passed.output
    assert ("rules       not adopted by the genesis, so not checked: " + ", ".join(RULES)
            in passed.output)
    as_json = json.loads(runner.invoke(app, [*args, "--json"]).output)
    assert as_json["ok"] is True and as_json["rules_not_adopted"] == RULES

    strict = runner.invoke(app, [*args, "--require-every-rule"])
    assert strict.exit_code == EXIT_FAILED, strict.output
    assert f"FAIL: {len(RULES)} check(s) failed" in strict.output
    for rule in RULES:
        assert (f"seq 0: the genesis does not adopt {rule}: the ledger is not held to it "
                "[rule_not_adopted]") in strict.output


def test_a_key_limit_above_this_versions_is_not_the_rule_adopted() -> None:
    """A genesis could name the key limit with a figure no party ever reaches: that escapes the
    check as surely as leaving it out, and the report says so."""
    state = ReplayedState()
    state.instructions_name_registry = state.issuance_to_project_side = True
    state.status_changes_change = state.plain_text = True
    state.methodology_of_partner_country = True
    state.max_active_keys = MAX_ACTIVE_KEYS
    assert state.rules_not_adopted() == []
    state.max_active_keys = 2**62
    assert state.rules_not_adopted() == ["max_active_keys"]
