"""Public, read-only views of the signed ledger: checkpoints, entries, proofs and keys."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse

from registry.api.deps import KnownQuery, ReadSessionDep, RegistryDep
from registry.api.models import (
    ConsistencyProofPublic,
    EntriesPublic,
    EntryPublic,
    ErrorResponse,
    InclusionProofPublic,
    RegistryKeyPublic,
    RegistryKeysPublic,
)
from registry.errors import NotFoundError
from registry.ledger.canonical import MAX_SAFE_INTEGER
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.keys import PublicKey
from registry.service import ledger as ledger_service
from registry.service.ledger import b64
from registry.store import ledger_repo
from registry.store.tables import LedgerEntry

router = APIRouter(
    prefix="/v1",
    tags=["ledger"],
    responses={422: {"model": ErrorResponse}},
    dependencies=KnownQuery,
)

MAX_PAGE = 1000
#: The most bytes of envelopes one page of entries holds (past its first entry): an entry that
#: registers a forest unit carries its boundary, megabytes, and a page of a thousand of them
#: would be gigabytes in the server's memory.
MAX_PAGE_BYTES = 4 << 20

#: Sequence numbers and tree sizes are ledger integers (at most 2**53 - 1); a larger one would
#: overflow the database's 64-bit column, so it is refused as a 422 like any other bad value.
SEQ_MAX = MAX_SAFE_INTEGER

# The checkpoint routes answer text/plain, but their errors are JSON like every other error.
# FastAPI labels a ``model`` response with the route's media type, so spell the content out.
_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
TEXT_ROUTE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
    404: {"description": "Not Found", "content": _JSON_ERROR},
    422: {"description": "Unprocessable Entity", "content": _JSON_ERROR},
}


def _entry_public(row: LedgerEntry) -> EntryPublic:
    return EntryPublic(
        seq=row.seq, kind=row.kind, leaf_hash=b64(row.leaf_hash), envelope=b64(row.envelope)
    )


@router.get(
    "/checkpoint",
    response_class=PlainTextResponse,
    summary="The latest signed checkpoint (C2SP signed note)",
    responses=TEXT_ROUTE_RESPONSES,
)
def get_checkpoint(session: ReadSessionDep) -> str:
    return ledger_service.latest_checkpoint_note(session)


@router.get(
    "/checkpoints/{size}",
    response_class=PlainTextResponse,
    summary="The checkpoint signed for one tree size",
    responses=TEXT_ROUTE_RESPONSES,
)
def get_checkpoint_at(session: ReadSessionDep, size: Annotated[int, Path(ge=0, le=SEQ_MAX)]) -> str:
    row = ledger_repo.checkpoint_at(session, size)
    if row is None:
        raise NotFoundError(f"no checkpoint was signed for tree size {size}")
    return row.note


@router.get("/entries", response_model=EntriesPublic, summary="Ledger entries by range")
def list_entries(
    session: ReadSessionDep,
    start: Annotated[int, Query(ge=0, le=SEQ_MAX, description="first seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> EntriesPublic:
    size = ledger_repo.tree_size(session)
    rows = ledger_repo.entries_page(session, start, min(start + limit, size), MAX_PAGE_BYTES)
    after = start + len(rows)
    return EntriesPublic(
        data=[_entry_public(r) for r in rows],
        count=len(rows),
        tree_size=size,
        next=after if after < size else None,
    )


@router.get(
    "/entries/{seq}",
    response_model=EntryPublic,
    summary="One ledger entry",
    responses={404: {"model": ErrorResponse}},
)
def get_entry(session: ReadSessionDep, seq: Annotated[int, Path(ge=0, le=SEQ_MAX)]) -> EntryPublic:
    row = ledger_repo.entry_at(session, seq)
    if row is None:
        raise NotFoundError(f"no entry with seq {seq}", details={"seq": seq})
    return _entry_public(row)


@router.get(
    "/proofs/inclusion",
    response_model=InclusionProofPublic,
    summary="Inclusion proof of an entry in a tree size",
)
def get_inclusion_proof(
    session: ReadSessionDep,
    index: Annotated[int, Query(ge=0, le=SEQ_MAX)],
    tree_size: Annotated[int, Query(ge=1, le=SEQ_MAX)],
) -> InclusionProofPublic:
    p = ledger_service.inclusion_proof(session, index=index, tree_size=tree_size)
    return InclusionProofPublic(
        index=p.index,
        tree_size=p.tree_size,
        leaf_hash=b64(p.leaf_hash),
        root=b64(p.root),
        proof=[b64(h) for h in p.proof],
    )


@router.get(
    "/proofs/consistency",
    response_model=ConsistencyProofPublic,
    summary="Consistency proof between two tree sizes",
)
def get_consistency_proof(
    session: ReadSessionDep,
    first: Annotated[int, Query(ge=1, le=SEQ_MAX)],
    second: Annotated[int, Query(ge=1, le=SEQ_MAX)],
) -> ConsistencyProofPublic:
    p = ledger_service.consistency_proof(session, first=first, second=second)
    return ConsistencyProofPublic(
        first=p.first,
        second=p.second,
        first_root=b64(p.first_root),
        second_root=b64(p.second_root),
        proof=[b64(h) for h in p.proof],
    )


@router.get("/keys", response_model=RegistryKeysPublic, summary="The registry's public keys")
def list_keys(session: ReadSessionDep, registry: RegistryDep) -> RegistryKeysPublic:
    data = []
    for row in ledger_repo.registry_keys(session):
        key = PublicKey(raw=row.public_key)
        data.append(
            RegistryKeyPublic(
                key_id=row.key_id,
                public_key=base64.b64encode(row.public_key).decode(),
                note_verifier=NoteVerifier(name=registry.origin, key=key).verifier_string(),
                valid_from_seq=row.valid_from_seq,
                valid_until_seq=row.valid_until_seq,
            )
        )
    return RegistryKeysPublic(origin=registry.origin, data=data, count=len(data))
