"""A bundle as plain lines, for tests that tamper with one and write it back.

It also knows how a dishonest registry would cover its tracks: re-chain every entry after an
edit (:meth:`RawBundle.reseal`) and re-sign every checkpoint (:meth:`RawBundle.resign`) with the
registry's own key, so that only the replay can still tell.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.ledger.checkpoint import Checkpoint, add_signature, sign_checkpoint
from registry.ledger.dsse import Envelope
from registry.ledger.entry import Entry, seal_entry
from registry.ledger.keys import SigningKey
from registry.ledger.merkle import CompactRange, leaf_hash


def entry_of(envelope: bytes) -> Entry:
    """The entry inside an envelope, without checking any signature."""
    return Entry.from_bytes(Envelope.from_bytes(envelope).payload)


@dataclass
class RawBundle:
    path: Path
    header: dict[str, Any]
    envelopes: list[bytes]
    checkpoints: list[tuple[int, str]]
    party_keys: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> RawBundle:
        lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
        header, rest = lines[0], lines[1:]
        return cls(
            path=path,
            header=header,
            envelopes=[base64.b64decode(x["envelope"]) for x in rest if x["type"] == "entry"],
            checkpoints=[(x["size"], x["note"]) for x in rest if x["type"] == "checkpoint"],
            party_keys=[x for x in rest if x["type"] == "party_key"],
        )

    def write(self, *, spaced: bool = False) -> Path:
        """Write the bundle as the registry spells it (compact JSON: the verifier's fast
        paths), or ``spaced`` (``json.dumps`` defaults: its careful parse)."""
        lines = [self.header]
        lines += [
            {"type": "entry", "seq": i, "envelope": base64.b64encode(e).decode()}
            for i, e in enumerate(self.envelopes)
        ]
        lines += [{"type": "checkpoint", "size": s, "note": n} for s, n in self.checkpoints]
        lines += self.party_keys
        separators = None if spaced else (",", ":")
        text = "".join(json.dumps(x, separators=separators) + "\n" for x in lines)
        self.path.write_text(text, "utf-8")
        return self.path

    def entry(self, seq: int) -> Entry:
        return entry_of(self.envelopes[seq])

    def reseal_one(self, seq: int, key: SigningKey, *, cosigner: SigningKey | None = None) -> None:
        """Sign entry ``seq`` again, unchanged, with ``key`` (and ``cosigner``): its envelope's
        bytes change, so the entries after it are to be re-chained (:meth:`reseal`)."""
        self.envelopes[seq] = seal_entry(self.entry(seq), key, cosigner=cosigner)

    def reseal(self, key: SigningKey, *, start: int = 0) -> None:
        """Renumber and re-chain entries from ``start`` on, signing each with ``key``."""
        prev = leaf_hash(self.envelopes[start - 1]) if start else None
        for position in range(start, len(self.envelopes)):
            old = entry_of(self.envelopes[position])
            new = Entry(
                v=1, seq=position, time=old.time, kind=old.kind, actor=old.actor,
                payload=old.payload, prev=None if prev is None else prev.hex(),
            )
            self.envelopes[position] = seal_entry(new, key)
            prev = leaf_hash(self.envelopes[position])
        self.header["tree_size"] = len(self.envelopes)

    def insert(self, position: int, envelope: bytes) -> None:
        """Insert an entry, moving the party keys' validity ranges past it along."""
        self.envelopes.insert(position, envelope)
        for line in self.party_keys:
            for name in ("valid_from_seq", "valid_until_seq"):
                if line[name] is not None and line[name] >= position:
                    line[name] += 1

    def resign(
        self, key: SigningKey | Callable[[int], Sequence[SigningKey]], origin: str
    ) -> None:
        """Replace every checkpoint with one signed by ``key`` over the current entries; or,
        ``key`` a function, by the keys it gives for each size (the first signs, the others
        co-sign)."""
        tree = CompactRange()
        self.checkpoints = []
        for envelope in self.envelopes:
            tree.append(leaf_hash(envelope))
            cp = Checkpoint(origin=origin, size=tree.size, root=tree.root())
            first, *others = [key] if isinstance(key, SigningKey) else key(tree.size)
            note = sign_checkpoint(cp, name=origin, key=first)
            for other in others:
                note = add_signature(note, name=origin, key=other)
            self.checkpoints.append((tree.size, note))
