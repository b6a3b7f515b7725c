"""A small Cambodia–Japan registry built through the real HTTP API, for end-to-end tests.

Parties: the first administrator, Cambodia's and Japan's governments, a Cambodian project
participant, a Japanese buyer, a third-party entity and an auditor, each with its own key.
Projects: KH004 (JCM, energy efficiency) and KH005 (REDD+) with one forest unit, KH005-FU1
(leakage 10 %, buffer 20 %). Helpers submit as a party, read as a party, and check refusals:
:func:`expect_error` the shape of a 4xx answer, :meth:`World.refuse` that a refused request
appended nothing, :meth:`World.unchanged` that nothing a user can see changed at all.

The test registry's clock (``tests.helpers.StepClock``) moves one second per reading: every
submission and every signed read (``holdings``, ``snapshot``) reads it, and signed reads must
be dated within five minutes of it, so one test should stay well under 300 of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from registry.client import RegistryClient, new_nonce, read_auth_headers
from registry.ledger.keys import SigningKey


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


ADMIN = "kh-registry-admin"
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
UNIT = "KH005-FU1"
BUFFER = f"BUF-{UNIT}"
#: Accounts the registry holds itself (read by the administrator).
REGISTRY_ACCOUNTS = ("RETIREMENT", "CANCELLATION", BUFFER)
SQUARE = {
    "type": "Polygon",
    "coordinates": [[[105.8, 13.6], [105.9, 13.6], [105.9, 13.7], [105.8, 13.7], [105.8, 13.6]]],
}


def flip_first_byte(b64: str) -> str:
    """A base64 signature with one bit changed: well-formed, and no longer valid."""
    raw = bytearray(base64.b64decode(b64))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def expect_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The ``error`` of a refused request, after checking its status, code and shape."""
    assert response.status_code == status, f"expected {status} {code}, got {response.text}"
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["details"], dict), error
    return error


@dataclass
class World:
    http: RegistryClient
    keys: dict[str, SigningKey] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """The registry's origin, which every instruction and signed read names."""
        return self.http.origin()

    def as_(self, party: str) -> RegistryClient:
        return self.http.as_party(party, self.keys[party])

    # --- writes ------------------------------------------------------------------------------

    def submit(self, party: str, kind: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """Sign as ``party`` and submit; the registry's answer, or :class:`ClientError`."""
        return self.as_(party).submit(kind, body, **kw)

    def post(self, party: str, kind: str, body: dict[str, Any], *,
             idempotency_key: str | None = None, **sign: Any) -> httpx.Response:
        """Sign as ``party`` and post; the raw HTTP response, whatever it is."""
        client = self.as_(party)
        return client.post_signed(client.sign(kind, body, **sign), idempotency_key=idempotency_key)

    def post_raw(self, path: str, payload: Any, *, idempotency_key: str | None = None
                 ) -> httpx.Response:
        """Post ``payload`` as JSON exactly as given (``idempotency_key=""``: no header)."""
        key = new_nonce() if idempotency_key is None else idempotency_key
        headers = {"Idempotency-Key": key} if key else {}
        return self.http.http.post(path, json=payload, headers=headers)

    def refuse(self, party: str, kind: str, body: dict[str, Any], *, status: int, code: str,
               **sign: Any) -> dict[str, Any]:
        """Submit, expect the refusal ``status``/``code``, and check no entry was appended."""
        before = self.checkpoint()
        error = expect_error(self.post(party, kind, body, **sign), status, code)
        assert self.checkpoint() == before, "a refused request appended a ledger entry"
        return error

    # --- reads -------------------------------------------------------------------------------

    def read(self, path: str, *, party: str | None = None, params: dict[str, Any] | None = None
             ) -> httpx.Response:
        """GET ``path``, signed as ``party`` when given; the raw HTTP response."""
        if party is None:
            return self.http.http.get(path, params=params)
        client = self.http.http
        request = client.build_request("GET", path, params=params)
        headers = read_auth_headers(self.keys[party], registry=self.origin, actor=party,
                                    method="GET",
                                    path=request.url.raw_path.decode())
        return client.get(path, params=params, headers=headers)

    def holdings(self, account: str, reader: str | None = None, **params: Any) -> dict[str, Any]:
        holder = reader or ACCOUNTS.get(account, ADMIN)
        result: dict[str, Any] = self.as_(holder).get(
            f"/v1/accounts/{account}/holdings", signed=True, params={"limit": 500, **params}
        )
        return result

    def active(self, account: str) -> int:
        return int(self.holdings(account)["total_active"])

    def blocks(self, account: str) -> list[tuple[str, int, int, str]]:
        """``(batch, start, end, status)`` of every block ``account`` holds, in serial order."""
        return [(b["batch"], b["start"], b["end"], b["status"])
                for b in self.holdings(account)["blocks"]["data"]]

    def checkpoint(self) -> str:
        """The latest signed checkpoint: it changes with every appended entry."""
        response = self.http.http.get("/v1/checkpoint")
        response.raise_for_status()
        return response.text

    def tree_size(self) -> int:
        size: int = self.http.get("/v1/entries", params={"limit": 1})["tree_size"]
        return size

    def snapshot(self) -> dict[str, Any]:
        """Everything a user could see, to prove a refused request changed nothing."""
        c = self.http
        lists = ("batches", "reports", "projects", "forest-units", "retirements", "reversals",
                 "parties", "accounts")
        return {
            "checkpoint": self.checkpoint(),
            **{name: c.get(f"/v1/{name}", params={"limit": 500}) for name in lists},
            "holdings": {a: self.holdings(a) for a in (*ACCOUNTS, *REGISTRY_ACCOUNTS)},
        }

    @contextmanager
    def unchanged(self) -> Iterator[None]:
        """Assert that whatever runs inside leaves everything a user can see as it was."""
        before = self.snapshot()
        yield
        assert self.snapshot() == before


def build_world(url: str, admin_key: SigningKey) -> World:
    world = World(http=RegistryClient.connect(url))
    world.keys[ADMIN] = admin_key
    for i, (party, (name, role, country)) in enumerate(PRIVATE_PARTIES.items()):
        key = SigningKey.from_seed(bytes([i + 1]) * 32)
        world.keys[party] = key
        world.submit(ADMIN, "party.register", {
            "party_id": party, "name": name, "role": role, "country": country,
            "public_keys": [key.public_key.to_b64()],
        })
    for account, holder in ACCOUNTS.items():
        world.submit(ADMIN, "account.open",
                     {"account_id": account, "holder": holder, "name": f"{holder} holding"})
    world.submit(ADMIN, "project.register", {
        "project_id": "KH004",
        "title": "Energy Saving by Inverters for Distribution Pumps in Water Treatment Plant",
        "partner_country": "KH", "methodology": "KH_AM001", "sector": "Energy efficiency",
        "programme": "JCM",
        "participants": ["kh-water", "kh-gov"], "third_party_entity": "lrqa",
        "crediting_period_start": "2023-06-09", "crediting_period_end": "2030-12-31",
    })
    world.submit(ADMIN, "project.register", {
        "project_id": "KH005",
        "title": "Prey Lang Wildlife Sanctuary - Stung Treng REDD+ project",
        "partner_country": "KH", "methodology": "KH_AM004", "sector": "REDD+", "programme": "REDD+",
        "participants": ["kh-gov"], "third_party_entity": "lrqa",
        "crediting_period_start": "2018-03-12", "crediting_period_end": "2037-12-31",
    })
    world.submit(ADMIN, "forest_unit.register", {
        "unit_id": UNIT, "project_id": "KH005", "name": "Prey Lang block 1 (illustrative)",
        "boundary": json.dumps(SQUARE), "jurisdiction": "Stung Treng",
        "reference_level": 400000, "leakage_rate_bp": 1000, "buffer_rate_bp": 2000,
    })
    return world


def submit_report(world: World, report_id: str, quantity: int, *,
                  period: tuple[str, str] = ("2024-01-01", "2024-12-31"),
                  project: str = "KH004", party: str = "kh-water",
                  unit: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "report_id": report_id, "project_id": project, "period_start": period[0],
        "period_end": period[1], "reductions": quantity, "document_sha256": sha(report_id),
    }
    if unit is not None:
        body["forest_unit_id"] = unit
    return world.submit(party, "report.submit", body)


def verify_report(world: World, report_id: str, quantity: int) -> dict[str, Any]:
    return world.submit("lrqa", "report.verify", {
        "report_id": report_id, "verified_reductions": quantity,
        "statement_sha256": sha(report_id + "/statement"),
    })


def issue_jcm(world: World, report_id: str = "KH004-MR1", quantity: int = 1000,
              period: tuple[str, str] = ("2024-01-01", "2024-12-31")) -> str:
    """Submit, verify and issue a KH004 report; the participant gets 80%, governments 10% each."""
    submit_report(world, report_id, quantity, period=period)
    verify_report(world, report_id, quantity)
    tenth = quantity // 10
    result = world.submit(ADMIN, "credits.issue", {
        "report_id": report_id, "vintage": int(period[0][:4]),
        "allocations": [
            {"account": "KH-WATER-1", "quantity": quantity - 2 * tenth},
            {"account": "KH-GOV-1", "quantity": tenth},
            {"account": "JP-GOV-1", "quantity": tenth},
        ],
    })
    batch: str = result["result"]["batch"]
    return batch


def issue_redd(world: World, *, gross: int, issuable: int, report_id: str = "KH005-MR1",
               period: tuple[str, str] = ("2024-01-01", "2024-12-31")) -> dict[str, Any]:
    """Submit, verify and issue a KH005-FU1 report, ``issuable`` to Cambodia's account."""
    submit_report(world, report_id, gross, period=period, project="KH005", party="kh-gov",
                  unit=UNIT)
    verify_report(world, report_id, gross)
    return world.submit(ADMIN, "credits.issue", {
        "report_id": report_id, "vintage": int(period[0][:4]),
        "allocations": [{"account": "KH-GOV-1", "quantity": issuable}],
    })
