"""Conformance of ``registry.ledger.merkle``'s verifiers with the RFC 6962 / 9162 proof vectors.

The vectors are transparency-dev/merkle's ``testdata`` kept under ``shared/vectors/rfc6962``
(override with ``REGISTRY_VECTORS_DIR``): one JSON file per case, ``wantErr`` saying whether a
conforming verifier must reject it. The folder is read at collection time; ``test_vectors_found``
fails loudly if it is missing or short, so a moved folder cannot pass with zero cases.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from registry.errors import ProofError
from registry.ledger.merkle import verify_consistency, verify_inclusion

# 196 JSON cases as vendored (the folder's other two files are README.md and LICENSE).
MIN_VECTORS = 190


def _vectors_dir() -> Path:
    override = os.environ.get("REGISTRY_VECTORS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared" / "vectors" / "rfc6962"


VECTORS_DIR = _vectors_dir()
VECTOR_FILES = sorted(VECTORS_DIR.rglob("*.json")) if VECTORS_DIR.is_dir() else []


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "", validate=True)


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b64(node) for node in value or []]


def _check(case: dict[str, Any]) -> None:
    """Run the verifier a case is for; raises ``ProofError`` when it rejects."""
    if "leafIdx" in case:
        verify_inclusion(
            _b64(case["leafHash"]),
            case["leafIdx"],
            case["treeSize"],
            _proof(case["proof"]),
            _b64(case["root"]),
        )
    else:
        verify_consistency(
            case["size1"],
            case["size2"],
            _proof(case["proof"]),
            _b64(case["root1"]),
            _b64(case["root2"]),
        )


def test_vectors_found() -> None:
    kinds = {path.relative_to(VECTORS_DIR).parts[0] for path in VECTOR_FILES}
    assert len(VECTOR_FILES) >= MIN_VECTORS, f"only {len(VECTOR_FILES)} vectors in {VECTORS_DIR}"
    assert kinds == {"inclusion", "consistency"}


@pytest.mark.parametrize(
    "path", VECTOR_FILES, ids=[p.relative_to(VECTORS_DIR).as_posix() for p in VECTOR_FILES]
)
def test_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    if case["wantErr"]:
        with pytest.raises(ProofError):
            _check(case)
    else:
        _check(case)
