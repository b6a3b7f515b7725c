"""Checking a signed instruction: who signs, with which key, whether it is fresh and unused.

Every mutating use case starts here. :func:`authenticate` returns an :class:`Acting` (the party,
its validated body, the exact signed bytes) or raises; the nonce is recorded in the same
transaction, so a replay is refused for ever and a failed request leaves no trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from pydantic import ValidationError
from sqlalchemy import and_, bindparam, exists
from sqlmodel import Session, select

from registry.domain.instructions import (
    BODIES,
    Body,
    Instruction,
    SignedInstruction,
    text_problem,
)
from registry.errors import (
    AuthenticationError,
    BadSignatureError,
    InstructionExpiredError,
    InvalidRequestError,
    KeyRevokedError,
    PermissionDeniedError,
    ReplayError,
    WrongRegistryError,
)
from registry.ledger.canonical import canonical_bytes
from registry.ledger.keys import PublicKey, b64decode_strict, loaded_public_key
from registry.store import write_behind
from registry.store.statements import Read, Statement
from registry.store.tables import NonceRow, PartyKeyRow, PartyRow, table

#: How far ahead an instruction may expire: long enough for an offline signing ceremony,
#: short enough that a leaked signed instruction is soon worthless.
MAX_VALIDITY = timedelta(days=7)

B = TypeVar("B", bound=Body)


@dataclass(frozen=True)
class Signer:
    """The party that signed an instruction: who it is, and in which role it acts."""

    id: str
    role: str


_PARTY = table(PartyRow)
_PARTY_KEY = table(PartyKeyRow)
_NONCE = table(NonceRow)
#: The signing party, the key if it is one of the party's, and whether the party has used the
#: nonce before: one read of three primary keys.
_SIGNER_AND_KEY = Statement(
    select(_PARTY.c.id, _PARTY.c.role, _PARTY_KEY.c.public_key, _PARTY_KEY.c.revoked_seq)
    .add_columns(
        exists()
        .where(_NONCE.c.party_id == bindparam("actor"), _NONCE.c.nonce == bindparam("nonce"))
        .label("nonce_used")
    )
    .select_from(
        _PARTY.outerjoin(
            _PARTY_KEY,
            and_(_PARTY_KEY.c.party_id == _PARTY.c.id, _PARTY_KEY.c.key_id == bindparam("key_id")),
        )
    )
    .where(_PARTY.c.id == bindparam("actor"))
)


@dataclass(frozen=True)
class Acting(Generic[B]):
    """An authenticated instruction about to become ledger entry ``seq``."""

    seq: int
    now: datetime
    party: Signer
    instruction: Instruction
    body: B
    signed: dict[str, Any]
    """``{"instruction", "signature"}`` exactly as received: carried into the ledger entry."""

    def require_role(self, *roles: str) -> None:
        if self.party.role not in roles:
            raise PermissionDeniedError(
                f"{self.instruction.type} needs the role {' or '.join(roles)}; "
                f"party {self.party.id} is {self.party.role}",
                details={"party": self.party.id, "role": self.party.role, "allowed": list(roles)},
            )


def _validation_error(e: ValidationError, what: str) -> InvalidRequestError:
    errors = [
        {"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in e.errors(include_url=False, include_input=False)
    ]
    first = errors[0]
    return InvalidRequestError(
        f"{what}.{'.'.join(first['loc'])}: {first['msg']}", details={"errors": errors}
    )


def parse_signed(raw: object, *, expected_type: str) -> tuple[SignedInstruction, Body]:
    """Validate the shape of a signed instruction and its body, without touching the database."""
    try:
        signed = SignedInstruction.model_validate(raw)
    except ValidationError as e:
        raise _validation_error(e, "$") from e
    kind = signed.instruction.type
    if kind != expected_type:
        raise InvalidRequestError(
            f"this endpoint takes {expected_type} instructions, got {kind!r}",
            details={"expected": expected_type, "got": kind},
        )
    try:
        body = BODIES[kind].model_validate(signed.instruction.body)
    except ValidationError as e:
        raise _validation_error(e, "$.instruction.body") from e
    problem = text_problem(signed.instruction.body, "$.instruction.body", plain=True)
    if problem is not None:
        raise InvalidRequestError(problem)
    return signed, body


def verify_instruction_signature(
    raw_instruction: dict[str, Any], signature: str, key: PublicKey
) -> None:
    """The one check of a party's signature: Ed25519 over the canonical instruction bytes."""
    key.verify(b64decode_strict(signature, what="signature"), canonical_bytes(raw_instruction))


@dataclass(frozen=True)
class Parsed:
    """A signed instruction checked for shape, with the exact bytes its signature covers.

    Built before the write transaction starts, so the serialised part of a request does only
    what needs the database.
    """

    signed: SignedInstruction
    body: Body
    message: bytes
    signature: bytes
    raw: dict[str, Any]


def parse_request(raw: dict[str, Any], *, expected_type: str, registry: str) -> Parsed:
    """``raw`` checked for shape, and for being meant for this registry (origin ``registry``)."""
    signed, body = parse_signed(raw, expected_type=expected_type)
    named = signed.instruction.registry
    if named is None:
        raise InvalidRequestError(
            f"$.instruction.registry: Field required (the origin of the registry the instruction "
            f"is for: {registry!r} here)",
            details={"this_registry": registry},
        )
    if named != registry:
        # Instructions are public once recorded: one signed for another registry, where the
        # party may use the same key, must not act here.
        raise WrongRegistryError(
            f"the instruction is for registry {named!r}; this is registry {registry!r}",
            details={"registry": named, "this_registry": registry},
        )
    return Parsed(
        signed=signed,
        body=body,
        message=canonical_bytes(raw["instruction"]),
        signature=b64decode_strict(signed.signature, what="signature"),
        raw={"instruction": raw["instruction"], "signature": raw["signature"]},
    )


def signer_read(parsed: Parsed) -> Read:
    """The read :func:`authenticate` makes, to send ahead (``statements.read_ahead``)."""
    ins = parsed.signed.instruction
    return _SIGNER_AND_KEY, {"actor": ins.actor, "key_id": ins.key_id, "nonce": ins.nonce}


def check_signer(session: Session, parsed: Parsed) -> Any:
    """The signer's row if ``parsed`` is signed by its actor with a live key of the actor's;
    or raise. Says nothing about expiry or the nonce."""
    ins = parsed.signed.instruction
    query, params = signer_read(parsed)
    found = query.first(session, params)
    if found is None:
        raise AuthenticationError(f"unknown party {ins.actor!r}", details={"actor": ins.actor})
    party = found.id
    if found.public_key is None:
        raise AuthenticationError(
            f"key {ins.key_id} is not a key of party {party}",
            details={"actor": party, "key_id": ins.key_id},
        )
    if found.revoked_seq is not None:
        raise KeyRevokedError(
            f"key {ins.key_id} of party {party} was revoked at entry {found.revoked_seq}",
            details={"key_id": ins.key_id, "revoked_seq": found.revoked_seq},
        )
    try:
        loaded_public_key(found.public_key).verify(parsed.signature, parsed.message)
    except BadSignatureError as e:
        raise BadSignatureError(
            f"the signature of party {party} does not verify over this instruction",
            details={"actor": party, "key_id": ins.key_id},
        ) from e
    return found


def authenticate(session: Session, parsed: Parsed, *, seq: int, now: datetime) -> Acting[Body]:
    """Who signed ``parsed``, with a live key, in time, for the first time; or raise."""
    ins = parsed.signed.instruction
    found = check_signer(session, parsed)
    party = Signer(id=found.id, role=found.role)
    expires = parse_time_lenient(ins.expires)
    if expires <= now:
        raise InstructionExpiredError(
            f"the instruction expired at {ins.expires}", details={"expires": ins.expires}
        )
    if expires > now + MAX_VALIDITY:
        raise InstructionExpiredError(
            f"expires {ins.expires} is more than {MAX_VALIDITY.days} days ahead",
            details={"expires": ins.expires},
        )
    # Writers are serialised, so the read above saw every nonce committed before this
    # transaction, and the kept rows are this transaction's own. The row is written with the
    # entry's. Its primary key (party, nonce) still refuses anything that slipped past, though
    # then as a failed transaction (each use case retried alone), not as nonce_reused.
    if found.nonce_used or any(
        row["party_id"] == party.id and row["nonce"] == ins.nonce
        for row in write_behind.kept(session, _NONCE)
    ):
        raise ReplayError(
            f"nonce {ins.nonce} was already used by party {party.id}: a replayed instruction",
            details={"actor": party.id, "nonce": ins.nonce},
        )
    write_behind.defer(session, _NONCE, [{"party_id": party.id, "nonce": ins.nonce, "seq": seq}])
    return Acting(
        seq=seq,
        now=now,
        party=party,
        instruction=ins,
        body=parsed.body,
        signed=parsed.raw,
    )


def parse_time_lenient(text: str) -> datetime:
    """An RFC 3339 UTC time, with or without fractional seconds (clients write either)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as e:
        raise InvalidRequestError(f"not an RFC 3339 UTC time: {text!r}") from e
    if when.tzinfo is None:
        # A naive time cannot be compared with the registry's clock; it names no instant.
        raise InvalidRequestError(f"not an RFC 3339 UTC time (no offset): {text!r}")
    return when


#: How far a signed read's date may be from the registry's clock.
READ_CLOCK_SKEW = timedelta(minutes=5)


def authenticate_read(
    session: Session,
    *,
    actor: str,
    key_id: str,
    date: str,
    signature: str,
    message: bytes,
    now: datetime,
) -> PartyRow:
    """The party behind a signed read (``message`` is what the client signed), or raise."""
    party = session.get(PartyRow, actor)
    key_row = session.get(PartyKeyRow, key_id)
    if party is None or key_row is None or key_row.party_id != party.id:
        raise AuthenticationError(f"key {key_id} is not a key of party {actor!r}")
    if key_row.revoked_seq is not None:
        raise KeyRevokedError(f"key {key_id} of party {actor} was revoked")
    when = parse_time_lenient(date)
    if abs(when - now) > READ_CLOCK_SKEW:
        raise InstructionExpiredError(
            f"signed read dated {date} is more than {READ_CLOCK_SKEW} from the registry's clock"
        )
    try:
        loaded_public_key(key_row.public_key).verify(
            b64decode_strict(signature, what="signature"), message
        )
    except BadSignatureError as e:
        raise BadSignatureError(
            f"the read signature of party {actor} does not verify over this request (its "
            "registry, method, path with query, actor and date)"
        ) from e
    return party
