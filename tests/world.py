"""A small Cambodia–Japan registry built through the real HTTP API, for end-to-end tests.

Parties: the first administrator, Cambodia's and Japan's governments, a Cambodian project
participant, a Japanese buyer, a third-party entity and an auditor, each with its own key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from registry.client import RegistryClient
from registry.ledger.keys import SigningKey


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


PRIVATE_PARTIES = {
    "kh-gov": ("Royal Government of Cambodia", "government", "KH"),
    "jp-gov": ("Government of Japan", "government", "JP"),
    "kh-water": ("Phnom Penh water utility (illustrative)", "participant", "KH"),
    "jp-buyer": ("Japanese buyer (illustrative)", "participant", "JP"),
    "lrqa": ("Lloyd's Register Quality Assurance Limited", "third_party_entity", "GB"),
    "auditor": ("Independent auditor (illustrative)", "auditor", "KH"),
}
ACCOUNTS = {
    "KH-GOV-1": "kh-gov",
    "JP-GOV-1": "jp-gov",
    "KH-WATER-1": "kh-water",
    "JP-BUYER-1": "jp-buyer",
}
SQUARE = {
    "type": "Polygon",
    "coordinates": [[[105.8, 13.6], [105.9, 13.6], [105.9, 13.7], [105.8, 13.7], [105.8, 13.6]]],
}


@dataclass
class World:
    http: RegistryClient
    keys: dict[str, SigningKey] = field(default_factory=dict)

    def as_(self, party: str) -> RegistryClient:
        return self.http.as_party(party, self.keys[party])

    def submit(self, party: str, kind: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return self.as_(party).submit(kind, body, **kw)

    def holdings(self, account: str, reader: str | None = None) -> dict[str, Any]:
        holder = reader or ACCOUNTS.get(account, "kh-registry-admin")
        result: dict[str, Any] = self.as_(holder).get(
            f"/v1/accounts/{account}/holdings", signed=True, params={"limit": 500}
        )
        return result

    def active(self, account: str) -> int:
        return int(self.holdings(account)["total_active"])

    def snapshot(self) -> dict[str, Any]:
        """Everything a user could see, to prove a refused request changed nothing."""
        c = self.http
        return {
            "checkpoint": c.http.get("/v1/checkpoint").text,
            "batches": c.get("/v1/batches", params={"limit": 500}),
            "reports": c.get("/v1/reports", params={"limit": 500}),
            "projects": c.get("/v1/projects", params={"limit": 500}),
            "units": c.get("/v1/forest-units", params={"limit": 500}),
            "retirements": c.get("/v1/retirements", params={"limit": 500}),
            "parties": c.get("/v1/parties", params={"limit": 500}),
            "accounts": c.get("/v1/accounts", params={"limit": 500}),
            "holdings": {a: self.holdings(a) for a in ACCOUNTS},
        }


def build_world(url: str, admin_key: SigningKey) -> World:
    world = World(http=RegistryClient.connect(url))
    world.keys["kh-registry-admin"] = admin_key
    for i, (party, (name, role, country)) in enumerate(PRIVATE_PARTIES.items()):
        key = SigningKey.from_seed(bytes([i + 1]) * 32)
        world.keys[party] = key
        world.submit(
            "kh-registry-admin",
            "party.register",
            {
                "party_id": party,
                "name": name,
                "role": role,
                "country": country,
                "public_keys": [key.public_key.to_b64()],
            },
        )
    for account, holder in ACCOUNTS.items():
        world.submit(
            "kh-registry-admin",
            "account.open",
            {"account_id": account, "holder": holder, "name": f"{holder} holding"},
        )
    world.submit(
        "kh-registry-admin",
        "project.register",
        {
            "project_id": "KH004",
            "title": "Energy Saving by Inverters for Distribution Pumps in Water Treatment Plant",
            "partner_country": "KH",
            "methodology": "KH_AM001",
            "sector": "Energy efficiency",
            "participants": ["kh-water", "kh-gov"],
            "third_party_entity": "lrqa",
            "crediting_period_start": "2023-06-09",
            "crediting_period_end": "2030-12-31",
        },
    )
    world.submit(
        "kh-registry-admin",
        "project.register",
        {
            "project_id": "KH005",
            "title": "Prey Lang Wildlife Sanctuary - Stung Treng REDD+ project",
            "partner_country": "KH",
            "methodology": "KH_AM004",
            "sector": "REDD+",
            "participants": ["kh-gov"],
            "third_party_entity": "lrqa",
            "crediting_period_start": "2018-03-12",
            "crediting_period_end": "2037-12-31",
        },
    )
    world.submit(
        "kh-registry-admin",
        "forest_unit.register",
        {
            "unit_id": "KH005-FU1",
            "project_id": "KH005",
            "name": "Prey Lang block 1 (illustrative)",
            "boundary": json.dumps(SQUARE),
            "jurisdiction": "Stung Treng",
            "reference_level": 400000,
            "leakage_rate_bp": 1000,
            "buffer_rate_bp": 2000,
        },
    )
    return world


def issue_jcm(
    world: World,
    report_id: str = "KH004-MR1",
    quantity: int = 1000,
    period: tuple[str, str] = ("2024-01-01", "2024-12-31"),
) -> str:
    """Submit, verify and issue a KH004 report; the participant gets 80%, governments 10% each."""
    world.submit(
        "kh-water",
        "report.submit",
        {
            "report_id": report_id,
            "project_id": "KH004",
            "period_start": period[0],
            "period_end": period[1],
            "reductions": quantity,
            "document_sha256": sha(report_id),
        },
    )
    world.submit(
        "lrqa",
        "report.verify",
        {
            "report_id": report_id,
            "verified_reductions": quantity,
            "statement_sha256": sha(report_id + "/statement"),
        },
    )
    tenth = quantity // 10
    result = world.submit(
        "kh-registry-admin",
        "credits.issue",
        {
            "report_id": report_id,
            "vintage": int(period[0][:4]),
            "allocations": [
                {"account": "KH-WATER-1", "quantity": quantity - 2 * tenth},
                {"account": "KH-GOV-1", "quantity": tenth},
                {"account": "JP-GOV-1", "quantity": tenth},
            ],
        },
    )
    batch: str = result["result"]["batch"]
    return batch
