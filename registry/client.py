"""A small client for the registry's HTTP API, so no one hand-crafts a signature.

``sign_instruction`` builds and signs an instruction exactly as the registry checks it; the CLI,
the demo and the tests all use it. ``RegistryClient`` submits instructions with an
``Idempotency-Key`` and signs private reads.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from registry.api.paths import (
    AUTH_ACTOR,
    AUTH_DATE,
    AUTH_KEY_ID,
    AUTH_SIGNATURE,
    INSTRUCTION_PATHS,
)
from registry.domain.instructions import read_auth_message
from registry.ledger.canonical import canonical_bytes, read_json
from registry.ledger.keys import SigningKey, b64encode


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def sign_instruction(
    key: SigningKey,
    *,
    registry: str,
    actor: str,
    type: str,
    body: dict[str, Any],
    nonce: str | None = None,
    now: datetime | None = None,
    valid_for: timedelta = timedelta(hours=1),
) -> dict[str, Any]:
    """``{"instruction", "signature"}``: Ed25519 over the instruction's canonical bytes.

    ``registry`` is the origin of the registry it is for; every other registry refuses it."""
    instruction = {
        "type": type,
        "registry": registry,
        "actor": actor,
        "key_id": key.public_key.key_id,
        "nonce": nonce or new_nonce(),
        "expires": rfc3339((now or datetime.now(UTC)) + valid_for),
        "body": body,
    }
    return {
        "instruction": instruction,
        "signature": b64encode(key.sign(canonical_bytes(instruction))),
    }


def read_auth_headers(
    key: SigningKey, *, registry: str, actor: str, method: str, path: str
) -> dict[str, str]:
    date = rfc3339(datetime.now(UTC))
    message = read_auth_message(
        registry=registry, method=method, path=path, actor=actor, date=date
    )
    return {
        AUTH_ACTOR: actor,
        AUTH_KEY_ID: key.public_key.key_id,
        AUTH_DATE: date,
        AUTH_SIGNATURE: b64encode(key.sign(message)),
    }


class ClientError(Exception):
    """The registry refused a request; ``code`` is its machine-readable error code."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
        code, message = err["code"], err["message"]
        if not isinstance(code, str) or not isinstance(message, str):
            raise TypeError("an error's code and message are text")
    except Exception:
        raise _not_the_registry(response) from None
    raise ClientError(response.status_code, code, message, err.get("details"))


def answer_of(response: httpx.Response) -> Any:
    """The registry's JSON answer; a :class:`ClientError` when something else answered (a
    web page at the wrong address, a captive portal)."""
    _raise_for(response)
    try:
        return read_json(response.content)
    except ValueError:
        raise _not_the_registry(response) from None


def _not_the_registry(response: httpx.Response) -> ClientError:
    return ClientError(
        response.status_code, "http_error",
        f"HTTP {response.status_code} from {response.request.url} is not the registry's "
        f"answer: {' '.join(response.text.split())[:200] or 'no body'}",
    )


@dataclass
class RegistryClient:
    """Talks to one registry as one party (``actor`` with its ``key``).

    ``registry`` is the registry's origin, which every instruction and signed read names; when
    not given, it is asked of the registry (``GET /v1/keys``) once."""

    http: httpx.Client
    actor: str | None = None
    key: SigningKey | None = None
    registry: str | None = None

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        actor: str | None = None,
        key: SigningKey | None = None,
        timeout: float = 30,
        registry: str | None = None,
    ) -> RegistryClient:
        client = httpx.Client(base_url=url, timeout=timeout)
        return cls(client, actor=actor, key=key, registry=registry)

    def as_party(self, actor: str, key: SigningKey) -> RegistryClient:
        return RegistryClient(self.http, actor=actor, key=key, registry=self.registry)

    def origin(self) -> str:
        """The registry's origin: as given, or as the registry says (asked once)."""
        if self.registry is None:
            answer = answer_of(self.http.get("/v1/keys"))
            origin = answer.get("origin") if isinstance(answer, dict) else None
            if not isinstance(origin, str):
                raise ClientError(200, "http_error", "the registry's /v1/keys names no origin")
            self.registry = origin
        return self.registry

    def sign(self, type: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        if self.actor is None or self.key is None:
            raise ValueError("this client has no party key to sign with")
        return sign_instruction(
            self.key, registry=self.origin(), actor=self.actor, type=type, body=body, **kw
        )

    def post_signed(
        self, signed: dict[str, Any], *, idempotency_key: str | None = None
    ) -> httpx.Response:
        path = INSTRUCTION_PATHS[signed["instruction"]["type"]]
        headers = {"Idempotency-Key": idempotency_key or new_nonce()}
        return self.http.post(path, json=signed, headers=headers)

    def submit(
        self, type: str, body: dict[str, Any], *, idempotency_key: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        """Sign and submit; returns the registry's answer or raises :class:`ClientError`."""
        response = self.post_signed(self.sign(type, body, **kw), idempotency_key=idempotency_key)
        result: dict[str, Any] = answer_of(response)
        return result

    def get(self, path: str, *, params: dict[str, Any] | None = None, signed: bool = False) -> Any:
        headers: dict[str, str] = {}
        if signed:
            if self.actor is None or self.key is None:
                raise ValueError("a signed read needs a party key")
            request = self.http.build_request("GET", path, params=params)
            target = request.url.raw_path.decode()
            headers = read_auth_headers(
                self.key, registry=self.origin(), actor=self.actor, method="GET", path=target
            )
        response = self.http.get(path, params=params, headers=headers)
        return answer_of(response)
