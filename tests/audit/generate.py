"""Random credit histories, submitted through the service layer, for replay and load tests.

:func:`random_history` drives a registry with seeded random transfers, retirements and
cancellations (by quantity and by serial range, some refused), JCM and REDD+ issuances and
reversals across several buffer batches: the kind of history where the replay must split blocks
exactly as the store does to re-derive every effect.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from registry.client import sign_instruction
from registry.errors import RegistryError
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from registry.service.submit import submit
from registry.store.credits_repo import held_blocks
from registry.store.db import read_session
from tests.world import ACCOUNTS, PRIVATE_PARTIES, SQUARE, sha

ADMIN = "kh-registry-admin"


class Driver:
    """Signs and submits instructions as parties, straight to the service (no HTTP)."""

    def __init__(self, registry: Registry, admin_key: SigningKey) -> None:
        self.registry = registry
        self.keys = {ADMIN: admin_key}
        self.count = 0
        self.refused = 0

    def __call__(self, party: str, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        signed = sign_instruction(
            self.keys[party], registry=self.registry.origin, actor=party, type=kind, body=body,
            now=self.registry.clock() - timedelta(seconds=1),
        )
        self.count += 1
        try:
            return submit(self.registry, signed, expected_type=kind,
                          idempotency_key=f"gen-{self.count}").body
        except RegistryError:
            self.refused += 1
            return None

    def holdings(self, account: str) -> list[tuple[str, int, int]]:
        with read_session(self.registry.engine) as s:
            return [(b.batch_id, b.start, b.end) for b in held_blocks(s, account_id=account)]


def setup_world(drive: Driver) -> None:
    for i, (party, (name, role, country)) in enumerate(PRIVATE_PARTIES.items()):
        drive.keys[party] = SigningKey.from_seed(bytes([i + 1]) * 32)
        drive(ADMIN, "party.register", {
            "party_id": party, "name": name, "role": role, "country": country,
            "public_keys": [drive.keys[party].public_key.to_b64()]})
    for account, holder in ACCOUNTS.items():
        drive(ADMIN, "account.open", {"account_id": account, "holder": holder, "name": holder})
    drive(ADMIN, "project.register", {
        "project_id": "KH004", "title": "Inverters", "partner_country": "KH",
        "methodology": "KH_AM001", "sector": "Energy",
        "programme": "JCM", "participants": ["kh-water", "kh-gov"],
        "third_party_entity": "lrqa", "crediting_period_start": "2020-01-01",
        "crediting_period_end": "2040-12-31"})
    drive(ADMIN, "project.register", {
        "project_id": "KH005", "title": "Prey Lang", "partner_country": "KH",
        "methodology": "KH_AM004", "sector": "REDD+",
        "programme": "REDD+", "participants": ["kh-gov"],
        "third_party_entity": "lrqa", "crediting_period_start": "2018-01-01",
        "crediting_period_end": "2040-12-31"})
    drive(ADMIN, "forest_unit.register", {
        "unit_id": "KH005-FU1", "project_id": "KH005", "name": "Prey Lang block 1",
        "boundary": json.dumps(SQUARE), "jurisdiction": "Stung Treng",
        "reference_level": 400000, "leakage_rate_bp": 1000, "buffer_rate_bp": 2000})


def issue(drive: Driver, n: int, *, redd: bool, quantity: int) -> None:
    project, party = ("KH005", "kh-gov") if redd else ("KH004", "kh-water")
    report = f"{project}-R{n}"
    year = 2020 + n
    body: dict[str, Any] = {
        "report_id": report, "project_id": project, "period_start": f"{year}-01-01",
        "period_end": f"{year}-03-31", "reductions": quantity, "document_sha256": sha(report)}
    if redd:
        body["forest_unit_id"] = "KH005-FU1"
    drive(party, "report.submit", body)
    drive("lrqa", "report.verify", {"report_id": report, "verified_reductions": quantity,
                                    "statement_sha256": sha(report + "/v")})
    if redd:
        leakage = -(-quantity * 1000 // 10000)
        net = quantity - leakage
        issuable = net - -(-net * 2000 // 10000)
        allocations = [{"account": "KH-GOV-1", "quantity": issuable}]
    else:
        tenth = quantity // 10
        allocations = [{"account": "KH-WATER-1", "quantity": quantity - 2 * tenth},
                       {"account": "KH-GOV-1", "quantity": tenth},
                       {"account": "JP-GOV-1", "quantity": tenth}]
    drive("kh-registry-admin", "credits.issue",
          {"report_id": report, "vintage": year, "allocations": allocations})


def random_moves(drive: Driver, rng: random.Random, count: int,
                 on_step: Callable[[int], None] | None = None) -> None:
    holders = list(ACCOUNTS.items())
    for step in range(count):
        account, party = rng.choice(holders)
        blocks = drive.holdings(account)
        if not blocks:
            continue
        batch, start, end = rng.choice(blocks)
        kind = rng.choices(["credits.transfer", "credits.retire", "credits.cancel"],
                           weights=[6, 2, 1])[0]
        body: dict[str, Any] = {"account": account, "batch": batch}
        if rng.random() < 0.5:
            total = sum(e - s + 1 for b, s, e in blocks if b == batch)
            body["quantity"] = rng.randint(1, total + (1 if rng.random() < 0.05 else 0))
        else:
            lo = rng.randint(start, end)
            hi = min(lo + rng.randint(0, 2 * (end - start + 1)), 2**20)
            body["range"] = {"start": lo, "end": hi}
        if kind == "credits.transfer":
            body["to_account"] = rng.choice([a for a, _ in holders if a != account])
        elif kind == "credits.retire":
            body.update(beneficiary="B", purpose="voluntary", jurisdiction="JP", reason="r")
        else:
            body["reason"] = "c"
        drive(party, kind, body)
        if on_step is not None:
            on_step(step)


def random_history(registry: Registry, admin_key: SigningKey, *, seed: int, moves: int) -> Driver:
    drive = Driver(registry, admin_key)
    rng = random.Random(seed)
    setup_world(drive)
    issue(drive, 1, redd=False, quantity=1000)
    issue(drive, 2, redd=True, quantity=500)
    issue(drive, 3, redd=True, quantity=700)

    def reversal(step: int) -> None:
        if step % 25 == 24:
            drive(ADMIN, "redd.reversal", {
                "unit_id": "KH005-FU1", "lost": rng.randint(1, 120),
                "document_sha256": sha(f"loss-{step}"), "reason": "loss"})
        if step == moves // 2:
            issue(drive, 4, redd=False, quantity=300)

    random_moves(drive, rng, moves, on_step=reversal)
    return drive
