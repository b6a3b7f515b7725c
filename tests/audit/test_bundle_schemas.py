"""Every line of a real export bundle, and every entry inside it, validates against the
published JSON Schemas: what an auditor's own verifier reads is what ``schemas/`` says."""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.audit.conftest import Exported

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
LEGACY = Path(__file__).parent / "data" / "ledger-0003.jsonl"
LINE_SCHEMAS = {
    "entry": "export-entry",
    "checkpoint": "export-checkpoint",
    "party_key": "export-party-key",
}


@cache
def _validator(stem: str) -> jsonschema.Draft202012Validator:
    path = SCHEMAS / f"{stem}.json"
    assert path.exists(), f"no published schema {path.name}"
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _problems(stem: str, value: Any, where: str) -> list[str]:
    return [
        f"{where}: {stem}.json at {list(e.absolute_path)}: {e.message}"
        for e in _validator(stem).iter_errors(value)
    ]


def _check_bundle(path: Path) -> set[str]:
    """Validate every line and decoded entry of ``path``; the entry kinds it holds."""
    problems: list[str] = []
    kinds: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        problems += _problems("export-header", json.loads(next(lines)), "line 1")
        for number, text in enumerate(lines, start=2):
            line = json.loads(text)
            stem = LINE_SCHEMAS.get(line.get("type"), "unknown line type")
            problems += _problems(stem, line, f"line {number}")
            if line["type"] != "entry":
                continue
            envelope = json.loads(base64.b64decode(line["envelope"]))
            problems += _problems("envelope", envelope, f"entry {line['seq']}")
            entry = json.loads(base64.b64decode(envelope["payload"]))
            problems += _problems("entry", entry, f"entry {line['seq']}")
            kinds.add(entry["kind"])
            payload_stem = "payload-" + entry["kind"].replace(".", "-").replace("_", "-")
            problems += _problems(payload_stem, entry["payload"], f"entry {line['seq']}")
    assert not problems, "\n".join(problems[:20])
    return kinds


def test_every_line_of_a_real_bundle_validates(sqlite_bundle: Exported) -> None:
    kinds = _check_bundle(sqlite_bundle.path)
    assert {"registry.genesis", "credits.issue", "credits.retire", "credits.cancel",
            "redd.reversal", "party.key_revoke", "project.status"} <= kinds


def test_a_ledger_from_before_instructions_named_their_registry_validates() -> None:
    _check_bundle(LEGACY)


@pytest.mark.parametrize("stem", sorted(p.stem for p in SCHEMAS.glob("*.json")))
def test_every_published_schema_is_valid_draft_2020_12(stem: str) -> None:
    assert _validator(stem).schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
