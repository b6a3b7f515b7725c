"""The credit life cycle over HTTP: signed instructions in, public and private reads out.

Each instruction type has its own POST route (listed in ``registry.api.paths``), all served by
one endpoint factory that hands the body, exactly as received, to ``registry.service.submit``.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the generated body models.

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from registry.api.deps import KnownQuery, ReadSessionDep, RegistryDep
from registry.api.examples import example_signed
from registry.api.models import ErrorResponse, SubmissionPublic
from registry.api.paths import (
    AUTH_ACTOR,
    AUTH_DATE,
    AUTH_KEY_ID,
    AUTH_SIGNATURE,
    INSTRUCTION_PATHS,
)
from registry.domain.instructions import BODIES, read_auth_message, signed_model
from registry.errors import AuthenticationError, MalformedError
from registry.ledger.canonical import MAX_SAFE_INTEGER, object_without_duplicates
from registry.ledger.receipt import RetirementReceipt
from registry.service import views
from registry.service.instructions import authenticate_read
from registry.service.receipts import retirement_receipt
from registry.service.submit import submit_async
from registry.service.writer_process import WriterProcess

# Every route's 422 is our ErrorResponse (the one handler), not FastAPI's HTTPValidationError.
router = APIRouter(prefix="", tags=["credits"], responses={422: {"model": ErrorResponse}})
#: The reads of what instructions made. No read takes a query parameter it does not declare (a
#: misspelt filter is refused); instructions, the busiest routes, take none and are not checked.
reads = APIRouter(
    prefix="", tags=["credits"], responses={422: {"model": ErrorResponse}}, dependencies=KnownQuery
)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422)
}
#: A body that is not even text (not UTF-8) is a 400 from FastAPI, before any validation.
SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 400: {"model": ErrorResponse}}


def _members(value: Any) -> int:
    """How many object members ``value`` (parsed JSON) holds, at every depth."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


_NAME_ENDS = (b'":', b'" ', b'"\t', b'"\n', b'"\r')
_ONE_BYTE_ASCII = ("utf-8", "utf-8-sig")
"""Encodings the JSON reader detects in which a quote or a colon is one byte of its own."""


def _named_twice(text: bytes, parsed: Any) -> str | None:
    """What names a member twice in some object of the JSON ``text`` (parsed as ``parsed``).

    RFC 8785 signs I-JSON (RFC 7493), whose names are unique; Python's parser keeps the last
    of two, so the bytes a proxy or a log reads could say another instruction than the one
    signed and carried out. Every member on the wire ends its name with a quote followed by a
    colon or a blank: when those pairs of bytes (which strings can only add to) occur no more
    often than ``parsed`` has members, none was dropped (the common case, counted without
    parsing again). The count only holds for UTF-8 (with or without a byte order mark): a body
    in UTF-16 or UTF-32, which the JSON reader also takes, is always parsed again."""
    if json.detect_encoding(text) in _ONE_BYTE_ASCII and (
        sum(text.count(pair) for pair in _NAME_ENDS) <= _members(parsed)
    ):
        return None
    try:
        json.loads(text, object_pairs_hook=object_without_duplicates)
    except MalformedError as e:
        return e.message
    return None


def _instruction_endpoint(kind: str) -> Callable[..., Coroutine[Any, Any, JSONResponse]]:
    model = signed_model(kind)

    # No dependency for the registry: every request pays for resolving one, and only the
    # in-process writer needs it.
    async def endpoint(
        request: Request,
        body: Annotated[model, Body(openapi_examples=example_signed(kind))],  # type: ignore[valid-type]
        idempotency_key: Annotated[
            str,
            Header(alias="Idempotency-Key", description="Unique per request; a retry reuses it"),
        ],
    ) -> JSONResponse:
        raw = await request.json()
        twice = _named_twice(await request.body(), raw)
        if twice is not None:
            # Answered by the handler of every body refused: a retry of a request accepted
            # before this check gets its answer.
            raise RequestValidationError(
                [{"loc": ("body",), "type": "json_invalid",
                  "msg": f"an object names a member twice ({twice}): JSON names must be unique"}],
                body=raw,
            )
        writer: WriterProcess | None = request.app.state.writer
        if writer is not None:
            outcome = await writer.submit(kind, raw, idempotency_key)
        else:
            outcome = await submit_async(
                request.app.state.registry, raw, expected_type=kind,
                idempotency_key=idempotency_key,
            )
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)

    endpoint.__name__ = "submit_" + kind.replace(".", "_")
    return endpoint


# Routes are matched in order, so the movements of credits (what a registry is asked most) come
# first; the rest keep the order of the life cycle.
_BUSIEST = ("credits.transfer", "credits.retire", "credits.cancel")
for _kind in sorted(INSTRUCTION_PATHS, key=lambda kind: kind not in _BUSIEST):
    _path = INSTRUCTION_PATHS[_kind]
    router.add_api_route(
        _path,
        _instruction_endpoint(_kind),
        methods=["POST"],
        response_model=SubmissionPublic,
        responses=SUBMIT_ERRORS,
        summary=f"Submit a signed {_kind} instruction",
        description=(BODIES[_kind].__doc__ or "").strip(),
    )

# Bounded so that no offset overflows the database's 64-bit integers (a 500, not a 422).
Offset = Annotated[int, Query(ge=0, le=MAX_SAFE_INTEGER)]
Limit = Annotated[int, Query(ge=1, le=500)]
# Every record id is printable ASCII. Anything else names nothing, and PostgreSQL text cannot
# even hold a NUL (a 500 there), so such an id is refused as a 422 before any query.
_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"
RecordId = Annotated[str, Path(pattern=_ID_PATTERN)]


@reads.get(
    "/v1/parties",
    response_model=views.Page[views.PartyPublic],
    tags=["reads"],
    description="Parties, each with the keys it may sign with now (revoked keys are listed by "
    "the party's own read, `/v1/parties/{party_id}`).",
)
def list_parties(session: ReadSessionDep, offset: Offset = 0, limit: Limit = 100) -> Any:
    return views.parties(session, offset, limit)


@reads.get(
    "/v1/parties/{party_id}", response_model=views.PartyPublic, tags=["reads"], responses=ERRORS
)
def get_party(session: ReadSessionDep, party_id: RecordId) -> Any:
    return views.party(session, party_id)


@reads.get("/v1/accounts", response_model=views.Page[views.AccountPublic], tags=["reads"])
def list_accounts(session: ReadSessionDep, offset: Offset = 0, limit: Limit = 100) -> Any:
    return views.accounts(session, offset, limit)


@reads.get(
    "/v1/accounts/{account_id}", response_model=views.AccountPublic, tags=["reads"],
    responses=ERRORS,
)
def get_account(session: ReadSessionDep, account_id: RecordId) -> Any:
    return views.account(session, account_id)


@reads.get("/v1/projects", response_model=views.Page[views.ProjectPublic], tags=["reads"])
def list_projects(session: ReadSessionDep, offset: Offset = 0, limit: Limit = 100) -> Any:
    return views.projects(session, offset, limit)


@reads.get(
    "/v1/projects/{project_id}",
    response_model=views.ProjectPublic,
    tags=["reads"],
    responses=ERRORS,
)
def get_project(session: ReadSessionDep, project_id: RecordId) -> Any:
    return views.project(session, project_id)


@reads.get(
    "/v1/forest-units", response_model=views.Page[views.ForestUnitListed], tags=["reads"]
)
def list_forest_units(session: ReadSessionDep, offset: Offset = 0, limit: Limit = 100) -> Any:
    return views.forest_units(session, offset, limit)


@reads.get(
    "/v1/forest-units/{unit_id}",
    response_model=views.ForestUnitPublic,
    tags=["reads"],
    responses=ERRORS,
)
def get_forest_unit(session: ReadSessionDep, unit_id: RecordId) -> Any:
    return views.forest_unit(session, unit_id)


@reads.get("/v1/reports", response_model=views.Page[views.ReportPublic], tags=["reads"])
def list_reports(
    session: ReadSessionDep,
    offset: Offset = 0,
    limit: Limit = 100,
    project_id: Annotated[str | None, Query(pattern=_ID_PATTERN)] = None,
) -> Any:
    return views.reports(session, offset, limit, project_id)


@reads.get(
    "/v1/reports/{report_id}", response_model=views.ReportPublic, tags=["reads"], responses=ERRORS
)
def get_report(session: ReadSessionDep, report_id: RecordId) -> Any:
    return views.report(session, report_id)


@reads.get("/v1/batches", response_model=views.Page[views.BatchPublic], tags=["reads"])
def list_batches(session: ReadSessionDep, offset: Offset = 0, limit: Limit = 100) -> Any:
    return views.batches(session, offset, limit)


@reads.get(
    "/v1/batches/{batch_id}", response_model=views.BatchPublic, tags=["reads"], responses=ERRORS
)
def get_batch(session: ReadSessionDep, batch_id: RecordId) -> Any:
    return views.batch(session, batch_id)


@reads.get(
    "/v1/serials/{serial}",
    response_model=views.SerialStoryPublic,
    tags=["reads"],
    responses=ERRORS,
    summary="Where one credit is now and the entries that moved it, a page at a time",
)
def get_serial(
    session: ReadSessionDep,
    serial: str,
    limit: Limit = 100,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_SAFE_INTEGER, description="a seq, the previous page's `next`"),
    ] = None,
) -> Any:
    return views.serial_story(session, serial, after=after, limit=limit)


@reads.get("/v1/retirements", response_model=views.Page[views.RetirementListed], tags=["reads"])
def list_retirements(session: ReadSessionDep, offset: Offset = 0, limit: Limit = 100) -> Any:
    return views.retirements(session, offset, limit)


@reads.get(
    "/v1/retirements/{retirement_id}",
    response_model=views.RetirementPublic,
    tags=["reads"],
    responses=ERRORS,
)
def get_retirement(session: ReadSessionDep, retirement_id: RecordId) -> Any:
    return views.retirement(session, retirement_id)


@reads.get(
    "/v1/retirements/{retirement_id}/receipt",
    response_model=RetirementReceipt,
    tags=["reads"],
    responses=ERRORS,
    summary="A receipt proving the retirement is in the signed ledger",
)
def get_retirement_receipt(session: ReadSessionDep, retirement_id: RecordId) -> Any:
    return retirement_receipt(session, retirement_id)


@reads.get("/v1/reversals", response_model=views.Page[views.ReversalPublic], tags=["reads"])
def list_reversals(session: ReadSessionDep, offset: Offset = 0, limit: Limit = 100) -> Any:
    return views.reversals(session, offset, limit)


@reads.get(
    "/v1/accounts/{account_id}/holdings",
    response_model=views.HoldingsPublic,
    tags=["reads"],
    responses=ERRORS,
    summary="An account's credit blocks (signed read: holder, administrators, auditors)",
)
def get_holdings(
    request: Request,
    session: ReadSessionDep,
    registry: RegistryDep,
    account_id: RecordId,
    actor: Annotated[str | None, Header(alias=AUTH_ACTOR)] = None,
    key_id: Annotated[str | None, Header(alias=AUTH_KEY_ID)] = None,
    date: Annotated[str | None, Header(alias=AUTH_DATE)] = None,
    signature: Annotated[str | None, Header(alias=AUTH_SIGNATURE)] = None,
    offset: Offset = 0,
    limit: Limit = 100,
    after: Annotated[
        str | None,
        Query(
            max_length=200,
            description="a unit serial, the previous page's `next`: blocks past it",
        ),
    ] = None,
) -> Any:
    if not (actor and key_id and date and signature):
        raise AuthenticationError(
            f"holdings are private: sign the request ({AUTH_ACTOR}, {AUTH_KEY_ID}, "
            f"{AUTH_DATE}, {AUTH_SIGNATURE}); `registry holdings` does this for you"
        )
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    message = read_auth_message(
        registry=registry.origin, method="GET", path=path, actor=actor, date=date
    )
    reader = authenticate_read(
        session,
        actor=actor,
        key_id=key_id,
        date=date,
        signature=signature,
        message=message,
        now=registry.clock(),
    )
    return views.holdings(
        session, account_id=account_id, reader=reader, offset=offset, limit=limit, after=after
    )
