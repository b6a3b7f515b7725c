"""`registry demo`: a realistic Cambodia–Japan data set, entered the way real users would.

Every change goes through the same signed-instruction path as the HTTP API
(``registry.service.submit``), each party signing with its own key; the party keys are written
under ``var/demo-keys/`` so the README's walkthrough can use them with ``registry sign``.

Public facts (JCM records): KH004 and KH005 with their titles and registration dates, the
methodologies KH_AM001/KH_AM004, KH005's first monitoring period (12 March 2018 – 31 December
2020), and the third-party entities' names. Everything else — companies, figures, the
allocation, boundaries, transfers, retirements and the fire — is illustrative and says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.client import sign_instruction
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from registry.service.setup import write_key_file
from registry.service.submit import submit

PARTIES: dict[str, tuple[str, str, str]] = {
    "kh-moe": ("Ministry of Environment, Kingdom of Cambodia", "government", "KH"),
    "jp-moej": ("Ministry of the Environment, Japan", "government", "JP"),
    "kh-water-utility": ("Phnom Penh water utility (illustrative)", "participant", "KH"),
    "jp-pump-engineering": (
        "Japanese pump engineering company (illustrative)",
        "participant",
        "JP",
    ),
    "jp-forest-partner": ("Japanese REDD+ project partner (illustrative)", "participant", "JP"),
    "jp-airline": ("Japanese airline (illustrative)", "participant", "JP"),
    "lrqa": ("Lloyd's Register Quality Assurance Limited", "third_party_entity", "GB"),
    "scs-global": ("SCS Global Services", "third_party_entity", "US"),
    "kh-audit": ("Independent registry auditor (illustrative)", "auditor", "KH"),
}

ACCOUNTS: dict[str, tuple[str, str]] = {
    "KH-MOE-001": ("kh-moe", "Cambodia government holding account"),
    "JP-MOEJ-001": ("jp-moej", "Japan government holding account (in the partner registry)"),
    "KH-PPWU-001": ("kh-water-utility", "Water utility holding account (illustrative)"),
    "JP-PUMP-001": ("jp-pump-engineering", "Pump engineering holding account (illustrative)"),
    "JP-FOREST-001": ("jp-forest-partner", "REDD+ partner holding account (illustrative)"),
    "JP-AIR-001": ("jp-airline", "Airline holding account (illustrative)"),
}

# Illustrative boundary inside Prey Lang Wildlife Sanctuary (12.9–14.2 N, 105.2–106.2 E).
PREY_LANG_BOUNDARY = {
    "type": "Polygon",
    "coordinates": [
        [
            [105.62, 13.52],
            [105.78, 13.49],
            [105.93, 13.55],
            [105.97, 13.70],
            [105.88, 13.83],
            [105.70, 13.86],
            [105.58, 13.74],
            [105.62, 13.52],
        ]
    ],
}


def _doc(name: str) -> str:
    """A stand-in document hash (the real report PDFs are not part of the demo)."""
    return hashlib.sha256(f"demo document: {name}".encode()).hexdigest()


@dataclass
class DemoRun:
    registry: Registry
    keys: dict[str, SigningKey]
    log: Callable[[str], None]
    counter: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)

    def do(self, party: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        signed = sign_instruction(
            self.keys[party],
            registry=self.registry.origin,
            actor=party,
            type=kind,
            body=body,
            now=self.registry.clock(),
        )
        self.counter += 1
        outcome = submit(
            self.registry, signed, expected_type=kind, idempotency_key=f"demo-{self.counter}"
        )
        self.results.append(outcome.body)
        self.log(f"  #{outcome.body['seq']:>3} {kind:<22} by {party}")
        return outcome.body["result"]  # type: ignore[no-any-return]


def run_demo(
    registry: Registry,
    *,
    admin_id: str,
    admin_key: SigningKey,
    keys_dir: Path,
    log: Callable[[str], None] = print,
) -> DemoRun:
    """Seed ``registry`` (freshly initialised) with the demo data set."""
    keys = {admin_id: admin_key}
    keys_dir.mkdir(parents=True, exist_ok=True)
    for party in PARTIES:
        key = SigningKey.generate()
        path = keys_dir / f"{party}.pem"
        if path.exists():
            path.unlink()
        write_key_file(path, key, passphrase=None)
        keys[party] = key
    run = DemoRun(registry=registry, keys=keys, log=log)
    admin = admin_id

    log("parties and accounts")
    for party, (name, role, country) in PARTIES.items():
        run.do(
            admin,
            "party.register",
            {
                "party_id": party,
                "name": name,
                "role": role,
                "country": country,
                "public_keys": [keys[party].public_key.to_b64()],
            },
        )
    for account, (holder, name) in ACCOUNTS.items():
        run.do(admin, "account.open", {"account_id": account, "holder": holder, "name": name})

    log("KH004: JCM energy efficiency")
    run.do(
        admin,
        "project.register",
        {
            "project_id": "KH004",
            "title": "Energy Saving by Inverters for Distribution Pumps in Water Treatment Plant",
            "partner_country": "KH",
            "methodology": "KH_AM001",
            "sector": "Energy efficiency",
            "programme": "JCM",
            "participants": ["kh-water-utility", "jp-pump-engineering"],
            "third_party_entity": "lrqa",
            "crediting_period_start": "2023-06-09",
            "crediting_period_end": "2030-12-31",
        },
    )
    run.do(
        "kh-water-utility",
        "report.submit",
        {
            "report_id": "KH004-MR1",
            "project_id": "KH004",
            "period_start": "2023-06-09",
            "period_end": "2024-05-31",
            "reductions": 1850,
            "document_sha256": _doc("KH004 monitoring report 1"),
        },
    )
    run.do(
        "lrqa",
        "report.verify",
        {
            "report_id": "KH004-MR1",
            "verified_reductions": 1820,
            "statement_sha256": _doc("KH004 verification report 1"),
        },
    )
    jcm = run.do(
        admin,
        "credits.issue",
        {
            "report_id": "KH004-MR1",
            "vintage": 2024,
            "allocations": [
                {"account": "KH-PPWU-001", "quantity": 820},
                {"account": "JP-PUMP-001", "quantity": 640},
                {"account": "KH-MOE-001", "quantity": 180},
                {"account": "JP-MOEJ-001", "quantity": 180},
            ],
        },
    )
    jcm_batch = jcm["batch"]

    log("KH005: Prey Lang REDD+")
    run.do(
        admin,
        "project.register",
        {
            "project_id": "KH005",
            "title": "Prey Lang Wildlife Sanctuary - Stung Treng REDD+ project",
            "partner_country": "KH",
            "methodology": "KH_AM004",
            "sector": "REDD+",
            "programme": "REDD+",
            "participants": ["kh-moe", "jp-forest-partner"],
            "third_party_entity": "scs-global",
            "crediting_period_start": "2018-03-12",
            "crediting_period_end": "2037-12-31",
        },
    )
    run.do(
        admin,
        "forest_unit.register",
        {
            "unit_id": "KH005-FU1",
            "project_id": "KH005",
            "name": "Prey Lang Wildlife Sanctuary, Stung Treng (illustrative boundary)",
            "boundary": json.dumps(PREY_LANG_BOUNDARY),
            "jurisdiction": "Stung Treng Province, Cambodia",
            "reference_level": 480000,
            "leakage_rate_bp": 1000,
            "buffer_rate_bp": 1500,
        },
    )
    run.do(
        "kh-moe",
        "report.submit",
        {
            "report_id": "KH005-MR1",
            "project_id": "KH005",
            "forest_unit_id": "KH005-FU1",
            "period_start": "2018-03-12",
            "period_end": "2020-12-31",
            "reductions": 1200000,
            "document_sha256": _doc("KH005 monitoring report 1"),
        },
    )
    run.do(
        "scs-global",
        "report.verify",
        {
            "report_id": "KH005-MR1",
            "verified_reductions": 1150000,
            "statement_sha256": _doc("KH005 verification report 1"),
        },
    )
    # 1,150,000 gross - 115,000 leakage = 1,035,000 net; 155,250 to the buffer; 879,750 issuable.
    redd = run.do(
        admin,
        "credits.issue",
        {
            "report_id": "KH005-MR1",
            "vintage": 2020,
            "allocations": [
                {"account": "KH-MOE-001", "quantity": 439875},
                {"account": "JP-FOREST-001", "quantity": 439875},
            ],
        },
    )
    redd_batch = redd["batch"]

    log("transfers, retirements, a cancellation, a reversal")
    run.do(
        "jp-pump-engineering",
        "credits.transfer",
        {
            "account": "JP-PUMP-001",
            "batch": jcm_batch,
            "quantity": 300,
            "to_account": "JP-AIR-001",
        },
    )
    run.do(
        "jp-airline",
        "credits.retire",
        {
            "account": "JP-AIR-001",
            "batch": jcm_batch,
            "quantity": 120,
            "beneficiary": "Japanese airline (illustrative)",
            "purpose": "corsia",
            "jurisdiction": "JP",
            "reason": "CORSIA offsetting requirement 2024 (illustrative)",
        },
    )
    run.do(
        "jp-forest-partner",
        "credits.transfer",
        {
            "account": "JP-FOREST-001",
            "batch": redd_batch,
            "quantity": 50000,
            "to_account": "JP-AIR-001",
        },
    )
    run.do(
        "jp-airline",
        "credits.retire",
        {
            "account": "JP-AIR-001",
            "batch": redd_batch,
            "range": {"start": 440001, "end": 450000},
            "beneficiary": "Japanese airline passengers (illustrative)",
            "purpose": "voluntary",
            "jurisdiction": "JP",
            "reason": "Voluntary offsetting programme (illustrative)",
        },
    )
    run.do(
        "jp-moej",
        "credits.retire",
        {
            "account": "JP-MOEJ-001",
            "batch": jcm_batch,
            "quantity": 180,
            "beneficiary": "Government of Japan",
            "purpose": "ndc",
            "jurisdiction": "JP",
            "reason": "Use towards Japan's NDC (illustrative)",
        },
    )
    run.do(
        "kh-water-utility",
        "credits.cancel",
        {
            "account": "KH-PPWU-001",
            "batch": jcm_batch,
            "quantity": 20,
            "reason": "Voluntary cancellation for a national mitigation target (illustrative)",
        },
    )
    run.do(
        admin,
        "redd.reversal",
        {
            "unit_id": "KH005-FU1",
            "lost": 12000,
            "document_sha256": _doc("KH005 fire loss verification (illustrative)"),
            "reason": "Forest fire in the dry season, verified loss (illustrative)",
        },
    )
    return run
