"""The one door for every change: a signed instruction in, one ledger entry out, or nothing.

:func:`submit` runs a whole use case atomically in a serialised write transaction: it honours
the ``Idempotency-Key``, authenticates the instruction, lets the use case check and update the
state tables, appends exactly one signed ledger entry carrying the instruction and its effects,
and records the answer for retries. Any error rolls all of it back. Under load, concurrent use
cases share a transaction, each in its own savepoint (``registry.service.group_commit``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlmodel import Session

from registry.domain import instructions as ins
from registry.errors import IdempotencyConflictError, InvalidRequestError, RegistryError
from registry.service import issuance, movements, parties, projects, reports, reversal
from registry.service.context import Registry
from registry.service.group_commit import ReadingWork, Work
from registry.service.instructions import (
    Acting,
    Parsed,
    authenticate,
    check_signer,
    parse_request,
    signer_read,
)
from registry.service.ledger import LedgerTail, b64
from registry.store import write_behind
from registry.store.db import read_session
from registry.store.statements import Read, Statement, read_ahead
from registry.store.tables import IdempotencyRow, table

Handler = Callable[[Session, Acting[Any]], dict[str, Any]]

HANDLERS: dict[str, Handler] = {
    ins.RegisterParty.TYPE: parties.register_party,
    ins.AddPartyKey.TYPE: parties.add_party_key,
    ins.RevokePartyKey.TYPE: parties.revoke_party_key,
    ins.OpenAccount.TYPE: parties.open_account,
    ins.RegisterProject.TYPE: projects.register_project,
    ins.SetProjectStatus.TYPE: projects.set_project_status,
    ins.RegisterForestUnit.TYPE: projects.register_forest_unit,
    ins.SubmitReport.TYPE: reports.submit_report,
    ins.VerifyReport.TYPE: reports.verify_report,
    ins.RejectReport.TYPE: reports.reject_report,
    ins.WithdrawReport.TYPE: reports.withdraw_report,
    ins.Issue.TYPE: issuance.issue,
    ins.Transfer.TYPE: movements.transfer,
    ins.Retire.TYPE: movements.retire,
    ins.Cancel.TYPE: movements.cancel,
    ins.RecordReversal.TYPE: reversal.record_reversal,
}
assert set(HANDLERS) == set(ins.BODIES), "every instruction type has exactly one use case"

#: Use cases whose first reads are known from the instruction alone: they are sent ahead, with
#: the answer and signer reads every use case makes (``read_ahead``); a group commit sends those
#: of all its use cases with its lock, in one round trip (``ReadingWork``).
READS_AHEAD: dict[str, Callable[[Any], list[Read]]] = {
    ins.Transfer.TYPE: movements.reads,
    ins.Retire.TYPE: movements.reads,
    ins.Cancel.TYPE: movements.reads,
}

_IDEMPOTENCY = table(IdempotencyRow)
_PRIOR_ANSWER = Statement(
    select(
        _IDEMPOTENCY.c.request_hash,
        _IDEMPOTENCY.c.status_code,
        _IDEMPOTENCY.c.response,
        _IDEMPOTENCY.c.seq,
    ).where(_IDEMPOTENCY.c.key == bindparam("key"))
)
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True)
class Outcome:
    """The answer to a submission; ``replayed`` when it is the stored answer to a retry."""

    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def request_hash(kind: str, raw: object) -> str:
    """Fingerprint of a request for idempotency (key order does not matter)."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # JSON can spell a lone surrogate ("\\ud800"); it is refused later, not a 500 here. For
    # every well-formed string the bytes (and so the stored fingerprints) are unchanged.
    return hashlib.sha256(f"{kind}\n{text}".encode("utf-8", "surrogatepass")).hexdigest()


def _scoped_key(raw: dict[str, Any], idempotency_key: str) -> str:
    """Idempotency keys belong to the party that signs: one party's key never blocks another's.

    The actor is read before authentication, but an answer is only stored for a request that
    authenticated as that actor, so nobody can take another party's key first.
    """
    instruction = raw.get("instruction")
    actor = instruction.get("actor") if isinstance(instruction, dict) else None
    scope = actor if isinstance(actor, str) else ""
    # A lone surrogate (JSON can spell one) is refused later, not a 500 here; every
    # well-formed actor's bytes, and so every stored key, are unchanged.
    text = f"{scope}\n{idempotency_key}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class _Prior:
    request_hash: str
    status_code: int
    response: str
    seq: int


def _prior_answer(session: Session, scoped_key: str) -> _Prior | None:
    """The answer already given to this key: earlier in this transaction, or stored."""
    for row in write_behind.kept(session, _IDEMPOTENCY):
        if row["key"] == scoped_key:
            return _Prior(row["request_hash"], row["status_code"], row["response"], row["seq"])
    query, params = _prior_answer_read(scoped_key)
    found = query.first(session, params)
    return None if found is None else _Prior(*found)


def _prior_answer_read(scoped_key: str) -> Read:
    return _PRIOR_ANSWER, {"key": scoped_key}


def stored_answer(registry: Registry, kind: str, raw: object, idempotency_key: str
                  ) -> Outcome | None:
    """The answer already given to this very request under ``idempotency_key``, if any: read
    on its own, for a retry that never reaches :func:`submit` because the API's own check of
    the body refuses it (a request accepted by an earlier version of the API)."""
    if not isinstance(raw, dict) or not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        return None
    with read_session(registry.engine) as session:
        prior = _prior_answer(session, _scoped_key(raw, idempotency_key))
    if prior is None or prior.request_hash != request_hash(kind, raw):
        return None
    return Outcome(prior.status_code, json.loads(prior.response), replayed=True)


def submit(registry: Registry, raw: object, *, expected_type: str, idempotency_key: str) -> Outcome:
    """Carry out one signed instruction of type ``expected_type``; see the module docstring."""
    return registry.writes.run(
        prepare(registry, raw, expected_type=expected_type, idempotency_key=idempotency_key)
    )


async def submit_async(
    registry: Registry, raw: object, *, expected_type: str, idempotency_key: str
) -> Outcome:
    """:func:`submit` for the event loop: no thread waits while the writer works."""
    return await registry.writes.run_async(
        prepare(registry, raw, expected_type=expected_type, idempotency_key=idempotency_key)
    )


def prepare(
    registry: Registry, raw: object, *, expected_type: str, idempotency_key: str
) -> Work[Outcome]:
    """Check what needs no database, and return the work the writer carries out."""
    if not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise InvalidRequestError(
            "Idempotency-Key must be 1 to 128 printable ASCII characters without spaces"
        )
    if not isinstance(raw, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    fingerprint = request_hash(expected_type, raw)
    try:
        parsed: Parsed | None = parse_request(
            raw, expected_type=expected_type, registry=registry.origin
        )
        refusal: RegistryError | None = None
    except RegistryError as e:
        # A retry of an accepted request must get its answer even if it would not parse now;
        # so a refusal is only raised once the idempotency key has been looked up.
        parsed, refusal = None, e
    scoped_key = _scoped_key(raw, idempotency_key)
    reads = [_prior_answer_read(scoped_key)]
    if parsed is not None:
        reads.append(signer_read(parsed))
        if expected_type in READS_AHEAD:
            reads += READS_AHEAD[expected_type](parsed.body)

    def carry_out(session: Session, tail: LedgerTail) -> Outcome:
        read_ahead(session, reads)
        prior = _prior_answer(session, scoped_key)
        if prior is not None and prior.request_hash == fingerprint:
            return Outcome(prior.status_code, json.loads(prior.response), replayed=True)
        if parsed is None:
            assert refusal is not None
            raise refusal
        if prior is not None:
            # Only the party the key belongs to learns that it used it, and for which entry:
            # anyone else naming it as the actor is refused as unauthenticated.
            check_signer(session, parsed)
            raise IdempotencyConflictError(
                f"Idempotency-Key {idempotency_key!r} was used for a different request",
                details={"idempotency_key": idempotency_key, "seq": prior.seq},
            )
        seq = tail.size
        # With the clock stepped back, the entry is dated as the last one: the instruction
        # is checked at that time, the one the auditor checks it at (an instruction expiring
        # in between would be accepted here and fail the audit).
        now = tail.next_time(registry.clock())
        acting = authenticate(session, parsed, seq=seq, now=now)
        effects = HANDLERS[expected_type](session, acting)
        appended = tail.append(
            session,
            registry,
            kind=expected_type,
            actor=acting.party.id,
            now=now,
            payload={**acting.signed, "effects": effects},
        )
        body = {
            "seq": seq,
            "kind": expected_type,
            "leaf_hash": b64(appended.leaf_hash),
            "tree_size": seq + 1,
            "result": effects,
        }
        write_behind.defer(
            session,
            _IDEMPOTENCY,
            [
                {
                    "key": scoped_key,
                    "request_hash": fingerprint,
                    "status_code": 200,
                    "response": json.dumps(body),
                    "seq": seq,
                }
            ],
        )
        return Outcome(200, body)

    return ReadingWork(carry_out, reads)
