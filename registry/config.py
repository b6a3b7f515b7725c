"""Settings of one registry instance, read from ``REGISTRY_*`` environment variables.

One place for every knob the server and the CLI share. Secrets are ``SecretStr`` so they never
print, and a validator refuses placeholder passphrases: a registry key guarded by ``changeme`` is
worse than none, because it looks protected.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_LOCK_TIMEOUT = 2_147_483
"""The longest wait for the ledger's lock, in seconds: PostgreSQL's ``lock_timeout`` holds at
most 2^31 - 1 milliseconds (and infinity is no number of them)."""

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password", "passphrase"})


def is_placeholder(secret: str) -> bool:
    """Whether ``secret`` only looks like one: empty, or a placeholder such as ``changeme``."""
    return secret.strip().lower() in PLACEHOLDER_SECRETS


def is_origin(value: str) -> bool:
    """Whether a registry can have ``value`` as its origin: 1 to 255 characters, none of them
    a space or ``+`` (the checkpoint verifier key is ``<origin>+<key id>+<key>``)."""
    return 0 < len(value) <= 255 and not any(c.isspace() or c == "+" for c in value)


class Settings(BaseSettings):
    """Where the registry keeps its ledger and key, and the name it signs checkpoints with."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    database_url: str = "sqlite:///var/registry.db"
    """SQLAlchemy URL: ``sqlite:///path`` (embedded) or ``postgresql+psycopg://...``."""

    origin: str = "kh.carbon-registry.example/ledger"
    """The checkpoint origin line (C2SP tlog-checkpoint): names this log and no other."""

    key_file: Path = Path("var/registry-key.pem")
    """The registry's Ed25519 signing key, PKCS#8 PEM, encrypted with ``key_passphrase``."""

    key_passphrase: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    lock_timeout: float = Field(default=30.0, gt=0, le=MAX_LOCK_TIMEOUT)
    """Seconds a write waits for the ledger's lock (SQLite's write lock, PostgreSQL's advisory
    lock: another server or tool sharing the database holds it) before it is answered 503
    ``registry_busy``: a retry is safe. On PostgreSQL a holder idle in its transaction for twice
    as long (a server stopped in the middle of a write) is then ended: keep it above half the
    longest write."""

    write_timeout: float | None = Field(default=None, gt=0, le=MAX_LOCK_TIMEOUT)
    """Seconds a request waits for the server's writer process to answer before it is
    answered 504 ``write_timeout`` (a writer frozen or stuck): whether the instruction was
    carried out is then unknown, and a retry with the same Idempotency-Key is safe. By default
    the lock timeout plus 90 s, the longest a healthy writer takes."""

    @property
    def answer_timeout(self) -> float:
        """:attr:`write_timeout`, or its default."""
        return self.write_timeout if self.write_timeout is not None else self.lock_timeout + 90

    @field_validator("key_passphrase")
    @classmethod
    def _refuse_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and is_placeholder(value.get_secret_value()):
            raise ValueError("REGISTRY_KEY_PASSPHRASE is a placeholder; choose a real passphrase")
        return value

    @field_validator("origin")
    @classmethod
    def _origin_is_one_line(cls, value: str) -> str:
        if not is_origin(value):
            raise ValueError(
                f"origin must be a name of 1 to 255 characters without spaces or '+', "
                f"got {value!r}"
            )
        return value
