"""The API documents itself: OpenAPI at /docs with an example for every mutating endpoint."""

from __future__ import annotations

from registry.api.paths import INSTRUCTION_PATHS
from tests.helpers import LiveServer


def test_docs_and_examples_for_every_instruction(server: LiveServer) -> None:
    assert server.client.get("/docs").status_code == 200
    spec = server.client.get("/openapi.json").json()
    for kind, path in INSTRUCTION_PATHS.items():
        post = spec["paths"][path]["post"]
        content = post["requestBody"]["content"]["application/json"]
        example = content["examples"]["example"]["value"]
        assert example["instruction"]["type"] == kind, path
        assert any(p["name"] == "Idempotency-Key" for p in post["parameters"]), path
        assert {"401", "403", "409", "422"} <= set(post["responses"]), path
