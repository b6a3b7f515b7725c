"""The JSON Schemas published in ``schemas/``, generated from the models that produce the data.

``scripts/gen-schemas`` writes them; ``tests/test_schemas.py`` fails when a model changed and
the files were not regenerated, so the published formats never drift from the code.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model
from pydantic.json_schema import SkipJsonSchema

from registry.api import models as api_models
from registry.domain.instructions import (
    BODIES,
    InstructionHead,
    RegistryName,
    Sha256Hex,
    signed_instruction_model,
    signed_model,
)
from registry.ledger.dsse import PAYLOAD_TYPE
from registry.ledger.entry import Entry
from registry.ledger.receipt import RetirementReceipt

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://kh.carbon-registry.example/schemas/"


class EnvelopeSignatureDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keyid: str = Field(description="lowercase hex SHA-256 of the raw Ed25519 public key")
    sig: str = Field(description="standard base64 Ed25519 signature over PAE(type, payload)")


class EnvelopeDoc(BaseModel):
    """A DSSE v1 envelope as stored (RFC 8785 canonical JSON); its exact bytes are the leaf."""

    model_config = ConfigDict(extra="forbid", title="Envelope")
    payload: str = Field(description="standard base64 of the entry's canonical JSON bytes")
    payloadType: str = Field(json_schema_extra={"const": PAYLOAD_TYPE})
    signatures: list[EnvelopeSignatureDoc] = Field(min_length=1)


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


Count = Annotated[StrictInt, Field(ge=0)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _absent_or(description: str) -> Any:
    """A field that is absent rather than null where it does not apply: typed
    ``X | SkipJsonSchema[None]``, its schema shows neither ``null`` nor ``default: null``."""
    return Field(default=None, json_schema_extra=_no_default, description=description)


class GenesisRegistryKey(_Doc):
    key_id: Sha256Hex
    algorithm: Literal["ed25519"]
    public_key: StrictStr = Field(description="raw 32-byte Ed25519 public key, standard base64")
    note_verifier: StrictStr = Field(description="C2SP signed-note verifier key for checkpoints")


class GenesisAdministrator(_Doc):
    party_id: StrictStr
    name: StrictStr
    role: Literal["administrator"]
    country: StrictStr | None
    key_id: Sha256Hex
    public_key: StrictStr = Field(description="raw 32-byte Ed25519 public key, standard base64")


class GenesisAccount(_Doc):
    account_id: StrictStr
    kind: StrictStr
    holder: StrictStr
    name: StrictStr


class GenesisPayload(_Doc):
    """The payload of entry 0 (kind ``registry.genesis``): the registry's origin and key, its
    first administrator and the system accounts."""

    model_config = ConfigDict(title="RegistryGenesisPayload")
    origin: StrictStr
    registry_key: GenesisRegistryKey
    administrator: GenesisAdministrator
    accounts: list[GenesisAccount]
    instructions_name_registry: StrictBool | SkipJsonSchema[None] = _absent_or(
        "true: every instruction in this ledger names its registry; absent from "
        "ledgers begun before instructions did"
    )
    issuance_to_project_side: StrictBool | SkipJsonSchema[None] = _absent_or(
        "true: every issuance in this ledger allocates only to accounts of the "
        "project's participants and of governments; absent from ledgers begun before that rule"
    )
    status_changes_change: StrictBool | SkipJsonSchema[None] = _absent_or(
        "true: every project.status entry in this ledger changes the project's status; absent "
        "from ledgers begun before that rule"
    )
    max_active_keys: StrictInt | SkipJsonSchema[None] = _absent_or(
        "the most active keys a party holds at once in this ledger; absent from ledgers begun "
        "before that limit"
    )
    plain_text: StrictBool | SkipJsonSchema[None] = _absent_or(
        "true: no string of an instruction body in this ledger holds a control or "
        "text-direction character or is blank; absent from ledgers begun before that rule"
    )
    methodology_of_partner_country: StrictBool | SkipJsonSchema[None] = _absent_or(
        "true: every project registered in this ledger names an ISO 3166-1 partner country "
        "and a methodology of that country; absent from ledgers begun before that rule"
    )


class KeyRotationPayload(_Doc):
    """The payload of a ``registry.key_rotate`` entry: the registry key that signs from the next
    entry on, and the key it replaces. The envelope is signed by both: the key replaced first,
    then the new key."""

    model_config = ConfigDict(title="RegistryKeyRotationPayload")
    registry_key: GenesisRegistryKey = Field(description="the key that signs from the next entry")
    replaces: GenesisRegistryKey = Field(description="the key in force until this entry")


class PartyEffects(_Doc):
    party_id: StrictStr
    key_ids: list[Sha256Hex]


class PartyKeyEffects(_Doc):
    party_id: StrictStr
    key_id: Sha256Hex


class AccountEffects(_Doc):
    account_id: StrictStr


class ProjectEffects(_Doc):
    project_id: StrictStr
    status: Literal["registered"]


class ProjectStatusEffects(_Doc):
    project_id: StrictStr
    from_: StrictStr = Field(alias="from")
    to: StrictStr


class ForestUnitEffects(_Doc):
    unit_id: StrictStr
    area_ha: Count
    buffer_account: StrictStr


def _report_effects(status: str) -> type[BaseModel]:
    status_type: Any = Literal[status]
    return create_model(
        f"Report{status.title()}Effects", __base__=_Doc,
        report_id=(StrictStr, ...), status=(status_type, ...),
    )


class ReportVerifyEffects(_Doc):
    report_id: StrictStr
    status: Literal["verified"]
    verified_reductions: Count


class Span(_Doc):
    start: Count
    end: Count


class AccountSpan(Span):
    account: StrictStr


class BatchSpan(Span):
    batch: StrictStr


class ReddFigures(_Doc):
    gross: Count
    leakage: Count
    net: Count
    buffer: Count
    buffer_account: StrictStr


class IssueEffects(_Doc):
    batch: StrictStr
    quantity: Count
    blocks: list[AccountSpan]
    redd: ReddFigures | SkipJsonSchema[None] = _absent_or(
        "REDD+ issuances only: leakage and buffer deducted"
    )


class TransferEffects(_Doc):
    batch: StrictStr
    from_: StrictStr = Field(alias="from")
    to: StrictStr
    quantity: Count
    blocks: list[Span]


class RetireEffects(_Doc):
    retirement_id: StrictStr
    batch: StrictStr
    from_: StrictStr = Field(alias="from")
    quantity: Count
    blocks: list[Span]


class CancelEffects(_Doc):
    batch: StrictStr
    from_: StrictStr = Field(alias="from")
    quantity: Count
    blocks: list[Span]


class ReversalEffects(_Doc):
    unit_id: StrictStr
    lost: Count
    pool_before: Count
    cancelled: Count
    shortfall: Count
    blocks: list[BatchSpan]


EFFECTS: dict[str, type[BaseModel]] = {
    "party.register": PartyEffects,
    "party.key_add": PartyKeyEffects,
    "party.key_revoke": PartyKeyEffects,
    "account.open": AccountEffects,
    "project.register": ProjectEffects,
    "project.status": ProjectStatusEffects,
    "forest_unit.register": ForestUnitEffects,
    "report.submit": _report_effects("submitted"),
    "report.verify": ReportVerifyEffects,
    "report.reject": _report_effects("rejected"),
    "report.withdraw": _report_effects("withdrawn"),
    "credits.issue": IssueEffects,
    "credits.transfer": TransferEffects,
    "credits.retire": RetireEffects,
    "credits.cancel": CancelEffects,
    "redd.reversal": ReversalEffects,
}
"""Instruction kind -> what its ledger entry records as ``effects``."""


class LedgerInstructionHead(InstructionHead):
    registry: RegistryName | SkipJsonSchema[None] = _absent_or(  # type: ignore[assignment]
        "the registry (origin) the instruction is for; absent only from ledgers "
        "whose genesis does not set instructions_name_registry"
    )


def entry_payload_model(kind: str) -> type[BaseModel]:
    """The payload of a ``kind`` ledger entry: the signed instruction and its effects."""
    name = BODIES[kind].__name__
    return signed_instruction_model(
        kind,
        head=LedgerInstructionHead,
        names=(f"{name}LedgerInstruction", f"{name}EntryPayload"),
        doc=f"The payload of a {kind} ledger entry: the signed instruction, the signature "
        "over its canonical bytes, and the effects the registry recorded.",
        effects=(EFFECTS[kind], ...),
    )


def _stem(kind: str) -> str:
    return kind.replace(".", "-").replace("_", "-")


def _extra_models() -> dict[str, type[BaseModel]]:
    """Models other modules register (the export bundle), if present."""
    try:
        from registry.ledger.bundle import BUNDLE_MODELS
    except ImportError:  # pragma: no cover - the bundle module ships with the auditor
        return {}
    return {f"export-{name}": model for name, model in BUNDLE_MODELS.items()}


def all_schemas() -> dict[str, dict[str, Any]]:
    """File stem -> JSON Schema, for every published format."""
    models: dict[str, type[BaseModel]] = {
        "entry": Entry,
        "envelope": EnvelopeDoc,
        "entries-response": api_models.EntriesPublic,
        "inclusion-proof": api_models.InclusionProofPublic,
        "consistency-proof": api_models.ConsistencyProofPublic,
        "registry-keys": api_models.RegistryKeysPublic,
        "submission-response": api_models.SubmissionPublic,
        "error": api_models.ErrorResponse,
        "retirement-receipt": RetirementReceipt,
    }
    for kind in BODIES:
        models[f"instruction-{_stem(kind)}"] = signed_model(kind)
        models[f"payload-{_stem(kind)}"] = entry_payload_model(kind)
    models["payload-registry-genesis"] = GenesisPayload
    models["payload-registry-key-rotate"] = KeyRotationPayload
    models.update(_extra_models())
    out: dict[str, dict[str, Any]] = {}
    for stem, model in sorted(models.items()):
        schema = model.model_json_schema()
        out[stem] = {"$schema": SCHEMA_DIALECT, "$id": f"{BASE_ID}{stem}.json", **schema}
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
