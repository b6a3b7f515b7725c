"""OpenAPI examples of every instruction, with Cambodia–Japan JCM and REDD+ data.

Ids and figures marked (illustrative) are made up; project ids, titles, methodologies and
third-party entities follow the public JCM records (see README, "The demo data").
"""

from __future__ import annotations

from typing import Any

from fastapi.openapi.models import Example

PRIVATE_NOTE = "Sign with `registry sign` or registry.client.sign_instruction."

EXAMPLE_BODIES: dict[str, dict[str, Any]] = {
    "party.register": {
        "party_id": "kh-water-supply-co",
        "name": "Phnom Penh water supply company (illustrative)",
        "role": "participant",
        "country": "KH",
        "public_keys": ["MCowBQYDK2VwAyEAillustrativeKeyillustrativeKey0="],
    },
    "party.key_add": {
        "party_id": "kh-water-supply-co",
        "public_key": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    },
    "party.key_revoke": {"party_id": "kh-water-supply-co", "key_id": "0" * 64},
    "account.open": {
        "account_id": "KH-WSC-001",
        "holder": "kh-water-supply-co",
        "name": "Holding account (illustrative)",
    },
    "project.register": {
        "project_id": "KH004",
        "title": "Energy Saving by Inverters for Distribution Pumps in Water Treatment Plant",
        "partner_country": "KH",
        "methodology": "KH_AM001",
        "sector": "Energy efficiency", "programme": "JCM",
        "participants": ["kh-water-supply-co"],
        "third_party_entity": "lrqa",
        "crediting_period_start": "2023-06-09",
        "crediting_period_end": "2030-12-31",
    },
    "project.status": {"project_id": "KH004", "status": "suspended", "reason": "illustrative"},
    "forest_unit.register": {
        "unit_id": "KH005-FU1",
        "project_id": "KH005",
        "name": "Prey Lang Wildlife Sanctuary, Stung Treng (illustrative boundary)",
        "boundary": '{"type":"Polygon","coordinates":[[[105.8,13.6],[106.0,13.6],'
        "[106.0,13.8],[105.8,13.8],[105.8,13.6]]]}",
        "jurisdiction": "Stung Treng, KH",
        "reference_level": 250000,
        "leakage_rate_bp": 1000,
        "buffer_rate_bp": 1500,
    },
    "report.submit": {
        "report_id": "KH004-MR1",
        "project_id": "KH004",
        "period_start": "2024-01-01",
        "period_end": "2024-12-31",
        "reductions": 1200,
        "document_sha256": "a" * 64,
    },
    "report.verify": {
        "report_id": "KH004-MR1",
        "verified_reductions": 1180,
        "statement_sha256": "b" * 64,
    },
    "report.reject": {
        "report_id": "KH004-MR1",
        "statement_sha256": "c" * 64,
        "reason": "monitored electricity data for March are missing",
    },
    "report.withdraw": {
        "report_id": "KH004-MR1",
        "reason": "submitted with the 2023 monitoring sheet; resubmitted as KH004-MR2",
    },
    "credits.issue": {
        "report_id": "KH004-MR1",
        "vintage": 2024,
        "allocations": [
            {"account": "KH-WSC-001", "quantity": 1000},
            {"account": "KH-GOV-001", "quantity": 90},
            {"account": "JP-GOV-001", "quantity": 90},
        ],
    },
    "credits.transfer": {
        "account": "KH-WSC-001",
        "batch": "KH-JCM-KH004-2024-00001",
        "quantity": 250,
        "to_account": "JP-BUYER-001",
    },
    "credits.retire": {
        "account": "JP-BUYER-001",
        "batch": "KH-JCM-KH004-2024-00001",
        "range": {"start": 1, "end": 100},
        "beneficiary": "Example Corporation (illustrative)",
        "purpose": "voluntary",
        "jurisdiction": "JP",
        "reason": "Offsetting 2024 office electricity use",
    },
    "credits.cancel": {
        "account": "KH-WSC-001",
        "batch": "KH-JCM-KH004-2024-00001",
        "quantity": 10,
        "reason": "Correction of an over-issuance (illustrative)",
    },
    "redd.reversal": {
        "unit_id": "KH005-FU1",
        "lost": 5000,
        "document_sha256": "c" * 64,
        "reason": "Forest fire, verified loss (illustrative)",
    },
}


def example_signed(kind: str) -> dict[str, Example]:
    return {
        "example": Example(
            summary=f"A signed {kind} instruction",
            description=PRIVATE_NOTE,
            value={
                "instruction": {
                    "type": kind,
                    "registry": "kh.carbon-registry.example/ledger",
                    "actor": "kh-registry-admin",
                    "key_id": "9f" * 32,
                    "nonce": "q5dVh2m3bY8xWmR1tZ0sLk",
                    "expires": "2026-11-25T12:00:00Z",
                    "body": EXAMPLE_BODIES[kind],
                },
                "signature": "base64 Ed25519 signature over the canonical instruction",
            },
        )
    }
