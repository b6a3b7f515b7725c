"""The published JSON Schemas match the models, and real data validates against them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import pytest

from registry.api.examples import EXAMPLE_BODIES
from registry.errors import MalformedError
from registry.schemas import all_schemas, render

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
GENERATED = all_schemas()


@pytest.mark.parametrize("stem", sorted(GENERATED))
def test_schema_file_matches_the_model(stem: str) -> None:
    path = SCHEMAS / f"{stem}.json"
    assert path.exists(), f"schemas/{stem}.json is missing: run ./scripts/gen-schemas"
    assert path.read_text() == render(GENERATED[stem]), (
        f"schemas/{stem}.json drifted from its model: run ./scripts/gen-schemas"
    )


def test_no_stale_schema_files() -> None:
    stale = {p.stem for p in SCHEMAS.glob("*.json")} - set(GENERATED)
    assert not stale, f"schema files with no model: {sorted(stale)}"


def test_a_real_envelope_and_entry_validate() -> None:
    from registry.ledger.entry import Entry, seal_entry
    from registry.ledger.keys import SigningKey

    key = SigningKey.from_seed(b"s" * 32)
    entry = Entry(
        v=1,
        seq=0,
        time="2026-01-01T00:00:00.000000Z",
        kind="registry.genesis",
        actor="registry",
        payload={"n": 1},
        prev=None,
    )
    envelope = json.loads(seal_entry(entry, key))
    jsonschema.validate(envelope, json.loads((SCHEMAS / "envelope.json").read_text()))
    payload = json.loads(base64.b64decode(envelope["payload"]))
    jsonschema.validate(payload, json.loads((SCHEMAS / "entry.json").read_text()))


@pytest.mark.parametrize("kind", sorted(EXAMPLE_BODIES))
def test_signed_instructions_validate_against_their_schema(kind: str) -> None:
    from registry.client import sign_instruction
    from registry.ledger.keys import SigningKey

    signed = sign_instruction(
        SigningKey.from_seed(b"k" * 32),
        registry="kh.carbon-registry.example/ledger",
        actor="kh-registry-admin",
        type=kind,
        body=EXAMPLE_BODIES[kind],
    )
    stem = f"instruction-{kind.replace('.', '-').replace('_', '-')}"
    jsonschema.validate(signed, json.loads((SCHEMAS / f"{stem}.json").read_text()))
    wrong = {**signed, "instruction": {**signed["instruction"], "type": "credits.mint"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, json.loads((SCHEMAS / f"{stem}.json").read_text()))


@pytest.mark.parametrize(
    "change",
    [
        {"time": "2026-01-01T00:00:00Z"},
        {"time": "2026-01-01T00:00:00.000000+00:00"},
        {"kind": "Credits.Transfer"},
        {"actor": ""},
        {"actor": " registry"},
        {"seq": 1, "prev": "AB" * 32},
        {"seq": 1, "prev": "ab"},
    ],
)
def test_the_entry_schema_refuses_what_the_ledger_refuses(change: dict[str, object]) -> None:
    from registry.ledger.canonical import canonical_bytes
    from registry.ledger.entry import Entry

    good = {
        "v": 1, "seq": 1, "time": "2026-01-01T00:00:00.000000Z", "kind": "credits.transfer",
        "actor": "kh-gov", "payload": {}, "prev": "ab" * 32,
    }
    schema = json.loads((SCHEMAS / "entry.json").read_text())
    jsonschema.validate(good, schema)
    bad = {**good, **change}
    with pytest.raises(MalformedError):
        Entry.from_bytes(canonical_bytes(bad))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
