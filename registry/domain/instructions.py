"""Signed instructions: what a party asks the registry to do, in the form it signs.

Every mutating request is ``{"instruction": {...}, "signature": "<base64>"}``. The signature is
Ed25519 by the acting party's key over the RFC 8785 canonical bytes of the ``instruction`` object
exactly as sent. The registry carries the signed instruction inside the ledger entry, so an
auditor can prove that the party, not only the registry, asked for the change.

An instruction is ``{"type", "registry", "actor", "key_id", "nonce", "expires", "body"}``: ``type``
names the use case (``credits.transfer``), ``registry`` the registry it is for (its checkpoint
origin, so that what a party signed for one registry is refused by every other, even where the
party uses the same key), ``actor`` the party, ``key_id`` the party key that signs, ``nonce`` is
unique per party for ever, and ``expires`` (RFC 3339 UTC) bounds how long it can be submitted.
Body models hold only JSON strings, integers, lists and objects, so that validating an instruction
never changes the bytes that were signed. Nothing here knows the web or the database.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_UPPER_ID = r"^[A-Z0-9][A-Z0-9_-]{0,31}$"
_SHA256 = r"^[0-9a-f]{64}$"
_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"

Id = Annotated[StrictStr, Field(pattern=_ID, examples=["kh-moe-admin"])]
UpperId = Annotated[StrictStr, Field(pattern=_UPPER_ID)]
# A project id is part of every serial number of its credits (KH-JCM-KH004-2024-00001), so it
# has the serial alphabet; a forest unit id names its buffer pool account (BUF-<unit>), which
# must fit an account id.
ProjectId = Annotated[StrictStr, Field(pattern=r"^[A-Z0-9]{1,32}$", examples=["KH004"])]
UnitId = Annotated[StrictStr, Field(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,27}$", examples=["KH005-FU1"])]
Sha256Hex = Annotated[StrictStr, Field(pattern=_SHA256, description="lowercase hex SHA-256")]
Text = Annotated[StrictStr, Field(min_length=1, max_length=500)]
Tonnes = Annotated[StrictInt, Field(gt=0, le=2**53 - 1, description="whole tCO2e, > 0")]
BasisPoints = Annotated[StrictInt, Field(ge=0, le=10000, description="1/100 of a percent")]
Country = Annotated[StrictStr, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
RegistryName = Annotated[
    StrictStr,
    Field(
        pattern=r"^[^\s+]{1,255}$",
        description="the origin of the registry the instruction is for: the first line of its "
        "checkpoints, also served as `origin` by GET /v1/keys",
        examples=["kh.carbon-registry.example/ledger"],
    ),
]


def _is_date(value: str) -> str:
    date.fromisoformat(value)
    return value


IsoDate = Annotated[
    StrictStr,
    Field(pattern=r"^\d{4}-\d{2}-\d{2}$", examples=["2025-12-31"]),
    AfterValidator(_is_date),
]


_UNSHOWN = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
"""DEL, the C1 controls, Unicode's line and paragraph separators, and the marks that reorder text
as it is shown (a right-to-left override makes a beneficiary read as another name)."""

_NOT_PLAIN = re.compile(f"[\x00-\x1f{_UNSHOWN}]")
"""What public text may not hold: the C0 controls (a terminal escape, a line break that forges a
line of a report) and the rest of ``_UNSHOWN``."""

_NOT_PLAIN_JSON = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f{_UNSHOWN}]")
"""The same, in a member holding JSON text (a forest unit's ``boundary``): JSON may be laid out
over lines with tabs, line feeds and carriage returns between its tokens (GIS tools write it so),
and those are no characters of what it says."""

_JSON_TEXT: Final = frozenset({"boundary"})
"""Members of instruction bodies that hold JSON text rather than prose."""


def is_plain_text(value: str) -> bool:
    """Whether ``value`` holds no control or text-direction character and is not blank."""
    return _NOT_PLAIN.search(value) is None and not value.isspace() and value != ""


def text_problem(
    value: Any, where: str, *, plain: bool, not_plain: re.Pattern[str] = _NOT_PLAIN
) -> str | None:
    """Why a string in an instruction body (``value``, at ``where``) is refused, if one is:
    a NUL always (PostgreSQL text cannot store one, SQLite can: one engine would take what the
    other cannot); with ``plain``, any control or text-direction character, and text that is
    blank (spaces only). A member holding JSON text may also hold the whitespace JSON is laid
    out with."""
    if isinstance(value, str):
        if plain:
            found = not_plain.search(value)
            if found is not None:
                char = found.group()
                if char == "\x00":
                    return f"{where}: NUL characters are not allowed"
                return (
                    f"{where}: control and text-direction characters (here U+{ord(char):04X}) "
                    "are not allowed in public text"
                )
            if value.isspace() or value == "":
                return f"{where}: text may not be blank"
        elif "\x00" in value:
            return f"{where}: NUL characters are not allowed"
        return None
    if isinstance(value, dict):
        for key, child in value.items():
            found_in = text_problem(
                child,
                f"{where}.{key}",
                plain=plain,
                not_plain=_NOT_PLAIN_JSON if key in _JSON_TEXT else _NOT_PLAIN,
            )
            if found_in is not None:
                return found_in
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found_in = text_problem(child, f"{where}[{i}]", plain=plain)
            if found_in is not None:
                return found_in
    return None


class Body(BaseModel):
    """Base of every instruction body: strict, closed, and tied to one instruction type."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    TYPE: ClassVar[str]


# --- parties, keys, accounts ---------------------------------------------------------------

Role = Literal["administrator", "participant", "government", "third_party_entity", "auditor"]
ROLES: tuple[str, ...] = Role.__args__  # type: ignore[attr-defined]


MAX_ACTIVE_KEYS: Final = 8
"""Keys a party may hold at once: enough to rotate and to sign from several offices; a bound
on what every read of the party lists."""


class RegisterParty(Body):
    """An administrator registers a company, government, third-party entity or auditor."""

    TYPE = "party.register"
    party_id: Id
    name: Text
    role: Role
    country: Country | None = None
    public_keys: list[Annotated[StrictStr, Field(min_length=40, max_length=60)]] = Field(
        min_length=1, max_length=MAX_ACTIVE_KEYS, description="raw Ed25519 public keys, base64"
    )


class AddPartyKey(Body):
    """Add a key to a party (rotation): by the party itself, signing with a key it has."""

    TYPE = "party.key_add"
    party_id: Id
    public_key: Annotated[StrictStr, Field(min_length=40, max_length=60)]


class RevokePartyKey(Body):
    """Revoke a party key; its past signatures stay valid, new ones are refused."""

    TYPE = "party.key_revoke"
    party_id: Id
    key_id: Sha256Hex


AccountKind = Literal["holding", "retirement", "cancellation", "buffer"]


class OpenAccount(Body):
    """An administrator opens a holding account for a party."""

    TYPE = "account.open"
    account_id: UpperId
    holder: Id
    name: Text


# --- programmes ----------------------------------------------------------------------------

ProjectStatus = Literal["registered", "suspended", "closed"]
Programme = Literal["JCM", "REDD+"]


class RegisterProject(Body):
    """A JCM project as the Joint Committee registered it."""

    TYPE = "project.register"
    project_id: ProjectId
    title: Text
    partner_country: Country
    methodology: Annotated[StrictStr, Field(pattern=r"^[A-Z]{2}_AM\d{3}$", examples=["KH_AM001"])]
    sector: Text
    programme: Programme | None = Field(
        default=None,
        description="JCM: reports cover the whole project. REDD+: each report is of one forest "
        "unit, within its reference level, and issues after leakage and the buffer's share. "
        "Required: the registry refuses a new project without it. Absent only from the "
        "registrations of ledgers written before projects named their programme, whose "
        "projects keep the rule of then: REDD+ once they have a forest unit",
    )
    participants: list[Id] = Field(min_length=1, max_length=20)
    third_party_entity: Id
    crediting_period_start: IsoDate
    crediting_period_end: IsoDate


class SetProjectStatus(Body):
    TYPE = "project.status"
    project_id: ProjectId
    status: ProjectStatus
    reason: Text


class RegisterForestUnit(Body):
    """A REDD+ forest unit; ``boundary`` is GeoJSON text, so the signed bytes hold no floats."""

    TYPE = "forest_unit.register"
    unit_id: UnitId
    project_id: ProjectId
    name: Text
    boundary: Annotated[StrictStr, Field(min_length=10, max_length=2_000_000)] = Field(
        description="GeoJSON Polygon or MultiPolygon (WGS 84 lon/lat), as JSON text"
    )
    jurisdiction: Text
    reference_level: Tonnes = Field(description="forest reference emission level, tCO2e/yr")
    leakage_rate_bp: BasisPoints
    buffer_rate_bp: BasisPoints


class SubmitReport(Body):
    """The project side submits a monitoring report for a period."""

    TYPE = "report.submit"
    report_id: UpperId
    project_id: ProjectId
    forest_unit_id: UnitId | None = None
    period_start: IsoDate
    period_end: IsoDate
    reductions: Tonnes = Field(description="claimed emission reductions, tCO2e")
    document_sha256: Sha256Hex


class VerifyReport(Body):
    """The project's third-party entity verifies a report (possibly for fewer tonnes)."""

    TYPE = "report.verify"
    report_id: UpperId
    verified_reductions: Tonnes
    statement_sha256: Sha256Hex


class RejectReport(Body):
    """The project's third-party entity rejects a submitted report: nothing is ever issued from
    it, and its period is free for a corrected report (under a new id)."""

    TYPE = "report.reject"
    report_id: UpperId
    statement_sha256: Sha256Hex = Field(description="the verification statement giving why")
    reason: Text


class WithdrawReport(Body):
    """A participant of the project withdraws a report not yet verified (one submitted in
    error): nothing is ever issued from it, and its period is free for a corrected report."""

    TYPE = "report.withdraw"
    report_id: UpperId
    reason: Text


# --- credits -------------------------------------------------------------------------------


class Allocation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    account: UpperId
    quantity: Tonnes


class Issue(Body):
    """Issue credits from a verified report, allocated as the Joint Committee decided.

    ``allocations`` is empty only when nothing is left to allocate: a REDD+ report whose net
    reductions all go to the unit's buffer pool is issued that way."""

    TYPE = "credits.issue"
    report_id: UpperId
    vintage: Annotated[StrictInt, Field(ge=2000, le=2100)]
    allocations: list[Allocation] = Field(max_length=50)


class SerialSpan(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    start: Tonnes
    end: Tonnes


class Movement(Body):
    """Which credits move: ``quantity`` (lowest serials first) or an explicit serial ``range``."""

    account: UpperId
    batch: Annotated[StrictStr, Field(max_length=64, examples=["KH-JCM-KH004-2025-00001"])]
    quantity: Tonnes | None = None
    range: SerialSpan | None = None


class Transfer(Movement):
    TYPE = "credits.transfer"
    to_account: UpperId


RetirementPurpose = Literal["voluntary", "ndc", "corsia", "other"]


class Retire(Movement):
    TYPE = "credits.retire"
    beneficiary: Text
    purpose: RetirementPurpose
    jurisdiction: Country
    reason: Text


class Cancel(Movement):
    TYPE = "credits.cancel"
    reason: Text


class RecordReversal(Body):
    """A verified loss of carbon in a forest unit: cancels buffer credits."""

    TYPE = "redd.reversal"
    unit_id: UnitId
    lost: Tonnes
    document_sha256: Sha256Hex
    reason: Text


BODIES: dict[str, type[Body]] = {
    cls.TYPE: cls
    for cls in (
        RegisterParty,
        AddPartyKey,
        RevokePartyKey,
        OpenAccount,
        RegisterProject,
        SetProjectStatus,
        RegisterForestUnit,
        SubmitReport,
        VerifyReport,
        RejectReport,
        WithdrawReport,
        Issue,
        Transfer,
        Retire,
        Cancel,
        RecordReversal,
    )
}

_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


class Instruction(BaseModel):
    """The signed part of a request. ``body`` is checked against ``BODIES[type]`` separately."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: Annotated[StrictStr, Field(examples=["credits.transfer"])]
    registry: RegistryName | None = None
    """Required of every new instruction; absent only from the instructions of ledgers written
    before instructions named their registry (their genesis says which)."""
    actor: Id
    key_id: Sha256Hex
    nonce: Annotated[StrictStr, Field(pattern=_NONCE.pattern)]
    expires: Annotated[StrictStr, Field(pattern=_TIME, examples=["2026-11-25T12:00:00Z"])]
    body: dict[str, Any]


class SignedInstruction(BaseModel):
    """What a client sends: the instruction and the actor's Ed25519 signature over its bytes."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    instruction: Instruction
    signature: Annotated[StrictStr, Field(description="base64 Ed25519 signature")]


class InstructionHead(BaseModel):
    """The fields every instruction has besides its type and body."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    registry: RegistryName
    actor: Id
    key_id: Sha256Hex
    nonce: Annotated[StrictStr, Field(pattern=_NONCE.pattern)]
    expires: Annotated[StrictStr, Field(pattern=_TIME, examples=["2026-11-25T12:00:00Z"])]


def signed_model(kind: str) -> type[BaseModel]:
    """The typed model of a signed ``kind`` instruction: its JSON Schema and OpenAPI body."""
    body = BODIES[kind]
    return signed_instruction_model(
        kind,
        head=InstructionHead,
        names=(f"{body.__name__}Instruction", f"Signed{body.__name__}"),
        instruction_doc=f"A {kind} instruction. {body.__doc__ or ''}".strip(),
        doc=f"A signed {kind} instruction: Ed25519 over the canonical instruction bytes.",
    )


def signed_instruction_model(
    kind: str,
    *,
    head: type[BaseModel],
    names: tuple[str, str],
    doc: str,
    instruction_doc: str | None = None,
    **more: Any,
) -> type[BaseModel]:
    """``{"instruction": <head, type, body>, "signature", **more}`` for a ``kind`` instruction,
    its two models named ``names``: the signed request (:func:`signed_model`), or as a ledger
    entry carries it with its effects (``registry.schemas``)."""
    from pydantic import create_model

    body = BODIES[kind]
    kind_type: Any = Literal[kind]
    signature_type: Any = Annotated[StrictStr, Field(description="base64 Ed25519 signature")]
    instruction = create_model(
        names[0],
        __base__=head,
        __doc__=instruction_doc,
        type=(kind_type, ...),
        body=(body, ...),
    )
    return create_model(
        names[1],
        __config__=ConfigDict(extra="forbid", strict=True),
        __doc__=doc,
        instruction=(instruction, ...),
        signature=(signature_type, ...),
        **more,
    )


def read_auth_message(*, registry: str, method: str, path: str, actor: str, date: str) -> bytes:
    """What a signed read signs: the registry (its origin), the request line (path with query),
    the reader and the time."""
    from registry.ledger.canonical import canonical_bytes

    return canonical_bytes(
        {"registry": registry, "method": method.upper(), "path": path, "actor": actor, "date": date}
    )
