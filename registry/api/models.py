"""Response bodies of the public ledger API (the ``...Public`` family); also the JSON Schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

B64 = "standard base64 (RFC 4648 §4) of the raw bytes"


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `bad_signature`")
    message: str = Field(description="what went wrong, for a person")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer has this shape."""

    error: ErrorBody


class EntryPublic(BaseModel):
    """One ledger entry as stored: the exact DSSE envelope bytes and their RFC 6962 leaf hash."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    seq: int = Field(ge=0)
    kind: str
    leaf_hash: str = Field(description=f"SHA-256(0x00 || envelope), {B64}")
    envelope: str = Field(description=f"the DSSE envelope's exact bytes, {B64}")


class EntriesPublic(BaseModel):
    data: list[EntryPublic]
    count: int = Field(ge=0, description="number of entries in `data`")
    tree_size: int = Field(ge=0, description="entries in the ledger when this page was read")
    next: int | None = Field(
        ge=0,
        description="the seq the next page starts at, or null when this page reaches the end of "
        "the ledger. A page holds fewer than `limit` entries when their envelopes would pass "
        "4 MiB, but always at least one",
    )


class InclusionProofPublic(BaseModel):
    """RFC 9162 §2.1.3 audit path for the leaf at ``index`` in the tree of ``tree_size`` leaves."""

    index: int = Field(ge=0)
    tree_size: int = Field(ge=1)
    leaf_hash: str = Field(description=B64)
    root: str = Field(description=f"root of the tree of `tree_size` leaves, {B64}")
    proof: list[str] = Field(description=f"sibling hashes from the leaf up, each {B64}")


class ConsistencyProofPublic(BaseModel):
    """RFC 9162 §2.1.4 proof that the first tree is a prefix of the second."""

    first: int = Field(ge=1)
    second: int = Field(ge=1)
    first_root: str = Field(description=B64)
    second_root: str = Field(description=B64)
    proof: list[str] = Field(description=f"each {B64}")


class RegistryKeyPublic(BaseModel):
    key_id: str = Field(description="lowercase hex SHA-256 of the raw Ed25519 public key")
    algorithm: str = "ed25519"
    public_key: str = Field(description=f"raw 32-byte Ed25519 public key, {B64}")
    note_verifier: str = Field(description="C2SP signed-note verifier key for checkpoints")
    valid_from_seq: int
    valid_until_seq: int | None = None


class RegistryKeysPublic(BaseModel):
    origin: str = Field(
        description="the registry's origin: the first line of its checkpoints, and the "
        "`registry` every instruction and signed read for it names"
    )
    data: list[RegistryKeyPublic]
    count: int


class SubmissionPublic(BaseModel):
    """The answer to an accepted instruction: the ledger entry that records it."""

    seq: int = Field(description="the ledger entry's sequence number")
    kind: str
    leaf_hash: str = Field(description=B64)
    tree_size: int = Field(description="ask for inclusion proofs against this size or later")
    result: dict[str, Any] = Field(description="what changed (also in the entry's effects)")
