"""The running registry's handles: its database, its signing key, its name and its clock.

Passed explicitly to every use case (no globals), so tests can run many registries side by side
with fixed clocks and keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.keys import SigningKey
from registry.service.group_commit import GroupCommit


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Registry:
    engine: Engine
    signer: SigningKey
    origin: str
    clock: Callable[[], datetime] = field(default=utc_now)
    #: Carries out this registry's use cases, several to a transaction under load.
    writes: GroupCommit = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "writes", GroupCommit(self))

    @property
    def note_verifier(self) -> NoteVerifier:
        """The key auditors pin to check this registry's checkpoints."""
        return NoteVerifier(name=self.origin, key=self.signer.public_key)
