"""The JSON Schemas published in ``schemas/``, generated from the models that produce the data.

``scripts/gen-schemas`` writes them; ``tests/test_schemas.py`` fails when a model changed and
the files were not regenerated, so the published formats never drift from the code.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from registry.api import models as api_models
from registry.domain.instructions import BODIES, signed_model
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
        models[f"instruction-{kind.replace('.', '-').replace('_', '-')}"] = signed_model(kind)
    models.update(_extra_models())
    out: dict[str, dict[str, Any]] = {}
    for stem, model in sorted(models.items()):
        schema = model.model_json_schema()
        out[stem] = {"$schema": SCHEMA_DIALECT, "$id": f"{BASE_ID}{stem}.json", **schema}
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
