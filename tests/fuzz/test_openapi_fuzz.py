"""Fuzz every documented endpoint: no 5xx, and every answer matches what the OpenAPI promises.

Schemathesis reads ``/openapi.json`` from a real server on loopback (the ``server`` fixture,
around the ``registry`` fixture's database) and generates requests for every operation, valid
and invalid (positive and negative generation). A small Cambodia–Japan world (``tests.world``)
with a JCM batch, a transfer, a retirement, a cancellation, a REDD+ issuance and a reversal is
entered first, so list reads return real rows. What must never happen is a 5xx, an undocumented
status code or content type, or a body that breaks its schema (errors are
``{"error": {"code", "message", "details"}}``, documented as ``ErrorResponse``). Besides random
examples, schemathesis's coverage phase puts every parameter and body field at and just past
its documented bounds (2,787 requests): an upper bound the database cannot hold, say, is a 500
there, which 20 random examples per operation did not find.

Fuzzed instructions carry made-up signatures and stop at authentication, so one test re-signs
schema-valid bodies with the administrator's real key: they reach the use cases, which must
answer 200 or a documented 4xx. Likewise the holdings read is fuzzed with a real reader's actor
and key id, so its date and signature checks run. Out-of-range integers and non-ASCII ids are
tried on every parameter that takes them, and every read is called once with ids that exist, so
200 answers, not only 404s, are checked against their schemas.

``schemathesis.pytest.from_fixture`` relies on a private pytest attribute that pytest 9 removed,
so each operation runs as a pytest subtest over ``APIOperation.as_strategy``; the checks are
schemathesis's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from registry.api.paths import (
    AUTH_ACTOR,
    AUTH_DATE,
    AUTH_KEY_ID,
    AUTH_SIGNATURE,
    INSTRUCTION_PATHS,
)
from registry.client import new_nonce, read_auth_headers, sign_instruction
from registry.errors import CanonicalEncodingError
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from tests.helpers import LiveServer
from tests.world import ADMIN, UNIT, World, build_world, issue_jcm, issue_redd, sha

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def _validate(case: Any, response: Any) -> None:
    case.validate_response(response, checks=CHECKS)


# --- the world and the schema ---------------------------------------------------------------


def _populate(world: World) -> dict[str, str]:
    """Credits in every state, so every list read has rows; returns ids that exist."""
    batch = issue_jcm(world, quantity=1000)
    world.submit("kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": batch, "quantity": 300, "to_account": "JP-BUYER-1",
    })
    retired = world.submit("jp-buyer", "credits.retire", {
        "account": "JP-BUYER-1", "batch": batch, "range": {"start": 101, "end": 150},
        "beneficiary": "Fuzz Co. (illustrative)", "purpose": "voluntary", "jurisdiction": "JP",
        "reason": "fuzzing",
    })
    world.submit("kh-gov", "credits.cancel", {
        "account": "KH-GOV-1", "batch": batch, "quantity": 5, "reason": "fuzzing",
    })
    issue_redd(world, gross=1000, issuable=720)
    world.submit(ADMIN, "redd.reversal", {
        "unit_id": UNIT, "lost": 50, "document_sha256": sha("fire"), "reason": "fire",
    })
    return {"batch": batch, "retirement": retired["result"]["retirement_id"]}


@pytest.fixture
def world(server: LiveServer, admin_key: SigningKey) -> Iterator[World]:
    world = build_world(server.url, admin_key)
    yield world
    world.http.http.close()


@pytest.fixture
def ids(world: World) -> dict[str, str]:
    return _populate(world)


@pytest.fixture
def api_schema(server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.fixture
def budget(registry: Registry) -> int:
    """Examples per operation: SQLite is the main run, PostgreSQL a lighter second opinion."""
    return 20 if registry.engine.dialect.name == "sqlite" else 10


def _operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


def _mixed(operation: Any, **fixed: Any) -> Any:
    return st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE, **fixed),
        operation.as_strategy(GenerationMode.NEGATIVE, **fixed),
    )


# --- fuzzing --------------------------------------------------------------------------------


def test_every_operation_fuzzed(
    api_schema: Any, ids: dict[str, str], budget: int, subtests: pytest.Subtests
) -> None:
    """Anything schemathesis makes up, on every operation: documented answers only, no 5xx."""
    operations = _operations(api_schema)
    assert len(operations) >= 30, [op.label for op in operations]
    for operation in operations:
        with subtests.test(msg=operation.label):
            _fuzz(operation, budget)


def _fuzz(operation: Any, budget: int) -> None:
    @_fuzz_settings(budget)
    @given(case=_mixed(operation))
    def run(case: Any) -> None:
        _validate(case, case.call())

    run()


def test_every_operation_at_the_edges_of_its_schema(
    api_schema: Any, ids: dict[str, str], subtests: pytest.Subtests
) -> None:
    """Schemathesis's coverage phase on every operation: each parameter and body field at and
    just past the bounds the schema gives it (a limit of 0, 1 and 1001, an offset one past the
    largest integer, a string one character too long, a field missing or of another type), the
    values random examples rarely draw."""
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    tried = 0
    for operation in _operations(api_schema):
        config = api_schema.config.generation_for(operation=operation, phase="coverage")
        with subtests.test(msg=operation.label):
            for case in api_schema.iter_coverage_cases(
                operation, generation_modes=modes, generation_config=config
            ):
                _validate(case, case.call())
                tried += 1
    assert tried >= 1000, tried


def _signed_by_admin(case: Any, kind: str, key: SigningKey, origin: str) -> bool:
    """Replace the case's made-up signature with a real one by the administrator."""
    body = case.body
    if not (isinstance(body, dict) and isinstance(body.get("instruction"), dict)):
        return False
    inner = body["instruction"].get("body")
    if not isinstance(inner, dict):
        return False
    try:
        case.body = sign_instruction(key, registry=origin, actor=ADMIN, type=kind, body=inner)
    except CanonicalEncodingError:
        return False  # a value no client could sign; the plain fuzz covers it
    case.headers = {**(case.headers or {}), "Idempotency-Key": new_nonce()}
    return True


def test_signed_instructions_reach_the_use_cases(
    api_schema: Any, ids: dict[str, str], admin_key: SigningKey, budget: int,
    registry: Registry, subtests: pytest.Subtests,
) -> None:
    """Schema-valid bodies signed with a real key: each use case answers 200 or a 4xx."""
    for kind, path in INSTRUCTION_PATHS.items():
        with subtests.test(msg=kind):
            _fuzz_signed(api_schema[path]["POST"], kind, admin_key, budget, registry.origin)


def _fuzz_signed(
    operation: Any, kind: str, key: SigningKey, budget: int, origin: str
) -> None:
    @_fuzz_settings(budget)
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def run(case: Any) -> None:
        signed = _signed_by_admin(case, kind, key, origin)
        response = case.call()
        _validate(case, response)
        # The registry verifies exactly what its own client signs, whatever the body.
        assert not (signed and response.status_code == 401), response.text

    run()


def test_holdings_fuzzed_as_a_real_reader(api_schema: Any, ids: dict[str, str],
                                          admin_key: SigningKey, budget: int) -> None:
    """A real actor and key id, the rest made up: the date and signature checks answer 4xx."""
    operation = api_schema["/v1/accounts/{account_id}/holdings"]["GET"]
    identity = {AUTH_ACTOR: ADMIN, AUTH_KEY_ID: admin_key.public_key.key_id}

    @_fuzz_settings(2 * budget)
    @given(case=_mixed(operation, headers=identity))
    def run(case: Any) -> None:
        _validate(case, case.call())

    run()


# --- edges the generators rarely reach ------------------------------------------------------

#: Beyond the 64-bit columns, and beyond the ledger's 2**53 - 1 integers.
HUGE = (2**64, -(2**64), 2**53)
#: Ids no record can have: NUL (which PostgreSQL text cannot even hold) and non-ASCII.
ODD_IDS = ("a\x00b", "\u00e9", "KH004\x00")


def _parameters(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "get":
                yield path, method, op


def _request_parts(op: dict[str, Any], name: str, value: Any) -> tuple[dict[str, Any], ...]:
    """Path and query values for ``op``: ``value`` for ``name``, something plain elsewhere."""
    path: dict[str, Any] = {}
    query: dict[str, Any] = {}
    for p in op.get("parameters", []):
        if p["in"] not in {"path", "query"}:
            continue
        if p["name"] == name:
            v = value
        elif p.get("required"):
            v = 1 if p["schema"].get("type") == "integer" else "X"
        else:
            continue
        (path if p["in"] == "path" else query)[p["name"]] = v
    return path, query


def test_out_of_range_and_odd_parameters(api_schema: Any, server: LiveServer,
                                         ids: dict[str, str]) -> None:
    """Every integer parameter given 2**64 and friends, every string id NUL or non-ASCII."""
    spec = server.client.get("/openapi.json").json()
    tried = 0
    for path, method, op in _parameters(spec):
        for p in op.get("parameters", []):
            if p["in"] not in {"path", "query"}:
                continue
            kind = p["schema"].get("type") or next(
                (s.get("type") for s in p["schema"].get("anyOf", []) if s.get("type") != "null"),
                None,
            )
            values: tuple[Any, ...] = HUGE if kind == "integer" else ODD_IDS
            if kind not in {"integer", "string"}:
                continue
            for value in values:
                path_params, query = _request_parts(op, p["name"], value)
                case = api_schema[path][method.upper()].Case(
                    path_parameters=path_params, query=query
                )
                response = case.call()
                assert 400 <= response.status_code < 500, (path, p["name"], value,
                                                             response.text)
                _validate(case, response)
                tried += 1
    assert tried >= 40, tried


#: Dates a signed read may carry that are not instants: no offset, or not a date at all.
ODD_DATES = ("2024-01-01", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z", "garbage", "0")


def test_holdings_with_odd_dates(api_schema: Any, ids: dict[str, str],
                                 admin_key: SigningKey) -> None:
    """A real reader's identity with dates that name no instant: a 4xx, never a 500."""
    operation = api_schema["/v1/accounts/{account_id}/holdings"]["GET"]
    for date in ODD_DATES:
        headers = {AUTH_ACTOR: ADMIN, AUTH_KEY_ID: admin_key.public_key.key_id,
                   AUTH_DATE: date, AUTH_SIGNATURE: "AAAA"}
        case = operation.Case(path_parameters={"account_id": "RETIREMENT"}, headers=headers)
        response = case.call()
        assert 400 <= response.status_code < 500, (date, response.text)
        _validate(case, response)


def test_reads_of_records_that_exist(api_schema: Any, world: World, ids: dict[str, str],
                                     admin_key: SigningKey) -> None:
    """Each read once with a real id: the 200 bodies match their documented schemas."""
    batch, retirement = ids["batch"], ids["retirement"]
    reads: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("/v1/checkpoint", {}, {}),
        ("/v1/checkpoints/{size}", {"size": 3}, {}),
        ("/v1/entries", {}, {"start": 0, "limit": 1000}),
        ("/v1/entries/{seq}", {"seq": 1}, {}),
        ("/v1/proofs/inclusion", {}, {"index": 2, "tree_size": 9}),
        ("/v1/proofs/consistency", {}, {"first": 3, "second": 9}),
        ("/v1/keys", {}, {}),
        ("/v1/parties", {}, {"limit": 500}),
        ("/v1/parties/{party_id}", {"party_id": "kh-water"}, {}),
        ("/v1/accounts", {}, {"limit": 500}),
        ("/v1/accounts/{account_id}", {"account_id": "KH-WATER-1"}, {}),
        ("/v1/projects", {}, {}),
        ("/v1/projects/{project_id}", {"project_id": "KH004"}, {}),
        ("/v1/forest-units", {}, {}),
        ("/v1/forest-units/{unit_id}", {"unit_id": UNIT}, {}),
        ("/v1/reports", {}, {"project_id": "KH005"}),
        ("/v1/reports/{report_id}", {"report_id": "KH004-MR1"}, {}),
        ("/v1/batches", {}, {}),
        ("/v1/batches/{batch_id}", {"batch_id": batch}, {}),
        ("/v1/serials/{serial}", {"serial": f"{batch}-120"}, {}),
        ("/v1/retirements", {}, {}),
        ("/v1/retirements/{retirement_id}", {"retirement_id": retirement}, {}),
        ("/v1/retirements/{retirement_id}/receipt", {"retirement_id": retirement}, {}),
        ("/v1/reversals", {}, {}),
    ]
    documented = {path for path, item in api_schema.raw_schema["paths"].items() if "get" in item}
    missing = {path for path, _, _ in reads} - documented
    assert not missing, f"reads the OpenAPI document no longer describes: {sorted(missing)}"
    for path, path_params, query in reads:
        case = api_schema[path]["GET"].Case(path_parameters=path_params, query=query)
        response = case.call()
        assert response.status_code == 200, (path, response.text)
        _validate(case, response)
    for account, reader in (("KH-WATER-1", "kh-water"), ("CANCELLATION", ADMIN)):
        target = f"/v1/accounts/{account}/holdings"
        headers = read_auth_headers(world.keys[reader], registry=world.origin, actor=reader,
                                    method="GET", path=target)
        case = api_schema["/v1/accounts/{account_id}/holdings"]["GET"].Case(
            path_parameters={"account_id": account}, headers=headers
        )
        response = case.call()
        assert response.status_code == 200, (account, response.text)
        assert response.json()["blocks"]["count"] > 0
        _validate(case, response)
    unread = documented - {path for path, _, _ in reads} - {"/v1/accounts/{account_id}/holdings"}
    assert not unread, f"reads with no call here: {sorted(unread)}"
