"""Retirement receipts: what a beneficiary keeps to prove, offline, that a retirement happened.

A receipt holds the retirement's ledger entry, an inclusion proof of it in a tree size, and the
checkpoint the registry signed for that size; and, to show the holder (not only the registry)
asked for it, the entry that registered the holder's key, with its own inclusion proof. Checking
it needs only the registry's checkpoint verifier key, obtained out of band. A receipt from a
ledger whose key was rotated also holds every rotation entry in its tree, which says which key
signed each entry; pin the key the registry publishes now.

What it shows is what the holder signed: a retirement instruction for this registry (the
checkpoint's origin; only an instruction of a ledger older than that rule names none, and not
one that follows a key registration naming the registry) by the entry's
actor, unexpired at the entry's time, whose account, batch and quantity (or serial range) the
recorded effects carry out. A version 2 receipt also holds the entry that opened that account
(``account.open``, or the genesis entry for an account it creates), with its inclusion proof in
the same tree: it shows the ledger records the account opened, before the retirement, for the
holder who signed it. An account's holder never changes after it is opened, and an account id is
never opened twice, so that entry names who held the account at the retirement. A version 1
receipt, from before, still verifies, but proves nothing about who held the account.

What a receipt cannot show alone is the history of the holder's key between its registration and
the retirement (a revocation in between), nor who authorised the registration or the account's
opening (the administrator's signature on it): those need the ledger itself, which
``registry verify`` replays whole (it refuses an account opened twice, too).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from registry.domain.instructions import Retire
from registry.errors import (
    BadSignatureError,
    CheckpointError,
    MalformedError,
    ProofError,
    UnknownKeyError,
)
from registry.ledger.canonical import canonical_bytes
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, open_checkpoint_signers
from registry.ledger.dsse import Envelope
from registry.ledger.entry import Entry, open_entry, parse_expiry
from registry.ledger.keys import PublicKey, b64decode_strict
from registry.ledger.merkle import leaf_hash, verify_inclusion
from registry.ledger.registry_keys import ROTATION_KIND, Rotation, check_cosigned

RECEIPT_FORMAT = "kh-carbon-registry-receipt"
RECEIPT_VERSION = 2
"""The version the registry writes; version 1 (with no ``account``) is still read."""
KEY_ENTRY_KINDS = ("registry.genesis", "party.register", "party.key_add")


class IncludedEntry(BaseModel):
    """An entry's exact envelope bytes and its RFC 9162 inclusion proof in ``tree_size``."""

    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0)
    envelope: str = Field(description="standard base64 of the DSSE envelope bytes")
    tree_size: int = Field(ge=1)
    proof: list[str] = Field(description="inclusion proof hashes, standard base64")


class RetirementReceipt(BaseModel):
    """Proof that a retirement is in the ledger, checkable with the registry key alone."""

    model_config = ConfigDict(extra="forbid")
    format: str = Field(default=RECEIPT_FORMAT, json_schema_extra={"const": RECEIPT_FORMAT})
    version: int = Field(
        default=RECEIPT_VERSION,
        description="2, with `account`; a version 1 receipt has none and does not prove who "
        "held the account retired from",
    )
    retirement_id: str
    checkpoint: str = Field(description="the C2SP signed note for `tree_size`")
    retirement: IncludedEntry
    holder_key: IncludedEntry = Field(description="the entry that registered the signing key")
    account: IncludedEntry | None = Field(
        default=None,
        description="the entry that opened the account retired from (account.open, or the "
        "genesis entry for an account it creates); required in version 2, absent in version 1",
    )
    registry_keys: list[IncludedEntry] = Field(
        default_factory=list,
        description="every rotation of the registry's key (registry.key_rotate entries) in "
        "the signed tree, in ledger order: they say which key signed each entry above; empty "
        "for a ledger whose key never changed",
    )


@dataclass(frozen=True)
class CheckedReceipt:
    """What a valid receipt proves."""

    retirement_id: str
    entry: Entry
    checkpoint: Checkpoint
    holder: str
    quantity: int
    blocks: list[dict[str, Any]]
    body: Retire
    """The retirement as the holder signed it: account, batch, beneficiary, purpose, ..."""
    account_opened: Entry | None
    """The entry that opened ``body.account`` for ``holder``; None for a version 1 receipt,
    which does not prove who held the account."""

    @property
    def account_holder(self) -> str | None:
        """Who the ledger records as holding the account retired from, if the receipt proves it."""
        return None if self.account_opened is None else self.holder


class _KeyHistory:
    """The registry keys a receipt's rotations establish, each over the entries it signs."""

    def __init__(self, periods: list[tuple[int, PublicKey]]) -> None:
        self.periods = periods  # (first seq signed, key), in order

    def key_at(self, seq: int) -> PublicKey:
        return next(key for start, key in reversed(self.periods) if start <= seq)

    def position(self, key: PublicKey) -> int | None:
        return next((i for i, (_, k) in enumerate(self.periods) if k == key), None)


def _key_history(receipt: RetirementReceipt, verifier: NoteVerifier) -> _KeyHistory:
    """The key history the receipt's rotations chain, each rotation signed by the key it
    replaces and by the new one; raise if they do not chain, or the pinned key is not in it."""
    origin, periods = verifier.name, [(0, verifier.key)]
    for n, item in enumerate(receipt.registry_keys):
        what = f"key rotation {item.seq}"
        envelope = b64decode_strict(item.envelope, what=f"{what} envelope")
        entry = Entry.from_bytes(Envelope.from_bytes(envelope).payload)
        if entry.kind != ROTATION_KIND or entry.seq != item.seq:
            raise MalformedError(
                f"{what}: the envelope holds entry {entry.seq} ({entry.kind}), not a key "
                "rotation at that seq"
            )
        try:
            replaced, new = Rotation.model_validate(entry.payload).keys(origin)
        except ValidationError as e:
            raise MalformedError(f"{what}: the payload is not valid: {e}") from e
        check_cosigned(envelope, replaced, new)
        if n == 0:
            periods = [(0, replaced)]
        elif replaced != periods[-1][1] or entry.seq < periods[-1][0]:
            raise MalformedError(
                f"{what} does not follow the rotation before it: the receipt's rotations "
                "must be every rotation of the ledger, in order"
            )
        periods.append((entry.seq + 1, new))
    history = _KeyHistory(periods)
    if history.position(verifier.key) is None:
        raise UnknownKeyError(
            f"the pinned key {verifier.key.key_id} is not among the registry keys the "
            f"receipt's rotations name ({', '.join(k.key_id for _, k in periods)})"
        )
    return history


def _signed_checkpoint(
    receipt: RetirementReceipt, verifier: NoteVerifier, history: _KeyHistory
) -> Checkpoint:
    """The receipt's checkpoint, signed by the key that signed its last entry and by the
    pinned key or one after it (which the pinned key handed over to): a key retired before
    the pinned one vouches for nothing a receipt needs (it may have leaked)."""
    keys = [k for _, k in history.periods]
    cp, signers = open_checkpoint_signers(
        receipt.checkpoint,
        origin=verifier.name,
        verifiers=[NoteVerifier(name=verifier.name, key=k) for k in keys],
    )
    last = history.key_at(cp.size - 1) if cp.size else None
    pinned = history.position(verifier.key) or 0
    if last is None or last.key_id not in signers:
        raise CheckpointError(
            f"the checkpoint of size {cp.size} is not signed by registry key "
            f"{last.key_id if last else '-'}, which signed its last entry"
        )
    if not any(k.key_id in signers for k in keys[pinned:]):
        raise CheckpointError(
            f"the checkpoint of size {cp.size} is signed only by registry keys the ledger "
            f"replaced before the pinned key {verifier.key.key_id}: a receipt made before a "
            "rotation is checked with the key of its time"
        )
    for item in receipt.registry_keys:
        _included(item, cp, history, f"key rotation {item.seq}")
    return cp


def _included(item: IncludedEntry, cp: Checkpoint, history: _KeyHistory, what: str) -> Entry:
    envelope = b64decode_strict(item.envelope, what=f"{what} envelope")
    key = history.key_at(item.seq)
    try:
        entry = open_entry(envelope, {key.key_id: key})
    except (MalformedError, BadSignatureError) as e:
        raise type(e)(f"{what}: {e.message}", details=e.details) from e
    if entry.seq != item.seq:
        raise MalformedError(
            f"{what}: the envelope holds seq {entry.seq}, the receipt says {item.seq}"
        )
    if item.tree_size != cp.size:
        raise ProofError(
            f"{what}: proof is for size {item.tree_size}, the checkpoint signs {cp.size}"
        )
    proof = [b64decode_strict(h, what=f"{what} proof hash") for h in item.proof]
    try:
        verify_inclusion(leaf_hash(envelope), item.seq, item.tree_size, proof, cp.root)
    except ProofError as e:
        raise ProofError(f"{what}: not included in the signed tree of size {cp.size}: {e}") from e
    return entry


def _registered_key(entry: Entry, party: str, key_id: str) -> PublicKey:
    """The public key ``entry`` registered for ``party`` with ``key_id``, or raise."""
    payload = entry.payload
    candidates: list[tuple[str, str]] = []
    if entry.kind == "registry.genesis":
        admin = payload.get("administrator", {})
        candidates.append((admin.get("party_id"), admin.get("public_key")))
    elif entry.kind == "party.register":
        body = payload["instruction"]["body"]
        candidates += [(body["party_id"], k) for k in body["public_keys"]]
    elif entry.kind == "party.key_add":
        body = payload["instruction"]["body"]
        candidates.append((body["party_id"], body["public_key"]))
    for owner, text in candidates:
        if owner == party and isinstance(text, str):
            key = PublicKey.from_b64(text)
            if key.key_id == key_id:
                return key
    raise MalformedError(f"entry {entry.seq} ({entry.kind}) registers no key {key_id} for {party}")


def verify_receipt(receipt: RetirementReceipt, *, verifier: NoteVerifier) -> CheckedReceipt:
    """Check every part of a receipt against the pinned registry key; raise on any failure."""
    try:
        return _verify_receipt(receipt, verifier=verifier)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        # The registry's key seals any JSON: a sealed entry of the wrong shape is a forgery.
        raise MalformedError(f"the receipt's entries are not of the expected shape ({e!r})") from e


def _verify_receipt(receipt: RetirementReceipt, *, verifier: NoteVerifier) -> CheckedReceipt:
    if receipt.format != RECEIPT_FORMAT or receipt.version not in (1, 2):
        raise MalformedError(f"not a version 1 or 2 {RECEIPT_FORMAT}")
    if receipt.version == 2 and receipt.account is None:
        raise MalformedError(
            "a version 2 receipt holds the entry that opened the account retired from; "
            "this one has no `account`"
        )
    if receipt.version == 1 and receipt.account is not None:
        raise MalformedError("a version 1 receipt holds no `account`; this one has one")
    history = _key_history(receipt, verifier)
    cp = _signed_checkpoint(receipt, verifier, history)
    entry = _included(receipt.retirement, cp, history, "retirement entry")
    effects = entry.payload.get("effects", {})
    if entry.kind != "credits.retire" or effects.get("retirement_id") != receipt.retirement_id:
        raise MalformedError(
            f"entry {entry.seq} is {entry.kind} {effects.get('retirement_id')!r}, "
            f"not retirement {receipt.retirement_id}"
        )
    instruction = entry.payload["instruction"]
    key_entry = _included(receipt.holder_key, cp, history, "key registration entry")
    if key_entry.kind not in KEY_ENTRY_KINDS or key_entry.seq >= entry.seq:
        raise MalformedError(f"entry {key_entry.seq} cannot have registered the holder's key")
    holder_key = _registered_key(key_entry, instruction["actor"], instruction["key_id"])
    holder_key.verify(
        b64decode_strict(entry.payload["signature"], what="holder signature"),
        canonical_bytes(instruction),
    )
    body = _signed_retirement(entry, instruction, cp.origin, _names_registry(key_entry))
    quantity = _carried_out(entry, body, effects)
    account_opened = None
    if receipt.account is not None:
        account_opened = _included(receipt.account, cp, history, "account entry")
        _opened(account_opened, body.account, instruction["actor"], entry.seq)
    return CheckedReceipt(
        retirement_id=receipt.retirement_id,
        entry=entry,
        checkpoint=cp,
        holder=instruction["actor"],
        quantity=quantity,
        blocks=list(effects["blocks"]),
        body=body,
        account_opened=account_opened,
    )


def _opened(opening: Entry, account: str, holder: str, retired_seq: int) -> None:
    """Check ``opening`` opened ``account`` for ``holder`` before entry ``retired_seq``; raise if
    not. The account is the one the holder signed to retire from (which the effects carry out)."""
    if opening.seq >= retired_seq:
        raise MalformedError(
            f"account entry {opening.seq} comes after the retirement (entry {retired_seq}): "
            f"it cannot have opened account {account}"
        )
    payload = opening.payload
    opened: list[tuple[Any, Any]] = []
    if opening.kind == "registry.genesis":
        opened += [(a.get("account_id"), a.get("holder")) for a in payload.get("accounts", [])]
    elif opening.kind == "account.open":
        instruction = payload["instruction"]
        if instruction.get("type") != "account.open":
            raise MalformedError(
                f"account entry {opening.seq}: an account.open entry recording a "
                f"{instruction.get('type')!r} instruction"
            )
        body = instruction["body"]
        if payload.get("effects", {}).get("account_id") != body.get("account_id"):
            raise MalformedError(
                f"account entry {opening.seq}: its effects open "
                f"{payload.get('effects', {}).get('account_id')!r}, the instruction "
                f"{body.get('account_id')!r}"
            )
        opened.append((body.get("account_id"), body.get("holder")))
    else:
        raise MalformedError(
            f"account entry {opening.seq} is {opening.kind}, which opens no account"
        )
    holders = [h for a, h in opened if a == account]
    if not holders:
        raise MalformedError(
            f"account entry {opening.seq} ({opening.kind}) opens "
            f"{', '.join(repr(a) for a, _ in opened) or 'no account'}, "
            f"not account {account}, the one retired from"
        )
    if len(holders) > 1:
        raise MalformedError(
            f"account entry {opening.seq} ({opening.kind}) opens account {account} "
            f"{len(holders)} times"
        )
    if holders[0] != holder:
        raise MalformedError(
            f"account entry {opening.seq} opened account {account} for {holders[0]!r}, "
            f"not for {holder!r}, who signed the retirement"
        )


def _names_registry(key_entry: Entry) -> bool:
    """Whether the ledger of ``key_entry`` already had every instruction name its registry when
    it registered the holder's key (so the later retirement must name it too)."""
    if key_entry.kind == "registry.genesis":
        return key_entry.payload.get("instructions_name_registry") is True
    return key_entry.payload["instruction"].get("registry") is not None


def _signed_retirement(
    entry: Entry, instruction: dict[str, Any], origin: str, names_registry: bool
) -> Retire:
    """The retirement the holder signed for registry ``origin``, asked for by the entry's actor
    before it expired. ``names_registry``: the ledger's instructions name their registry by
    then, so one naming none was signed for another registry (an older one, where the holder
    used the same key)."""
    if instruction.get("type") != Retire.TYPE:
        raise MalformedError(
            f"entry {entry.seq}: the holder signed a {instruction.get('type')!r} instruction, "
            "not a retirement"
        )
    named = instruction.get("registry")
    if named is not None and named != origin:
        raise MalformedError(
            f"entry {entry.seq}: the holder signed it for registry {named!r}, not {origin!r}"
        )
    if named is None and names_registry:
        raise MalformedError(
            f"entry {entry.seq}: the holder signed it for no registry, in a ledger whose "
            f"instructions name {origin!r} since before the holder's key was registered"
        )
    if instruction.get("actor") != entry.actor:
        raise MalformedError(
            f"entry {entry.seq}: recorded as by {entry.actor!r}, signed by "
            f"{instruction.get('actor')!r}"
        )
    expires = parse_expiry(instruction.get("expires"))
    if expires is None or expires <= entry.timestamp:
        raise MalformedError(
            f"entry {entry.seq}: the instruction expires {instruction.get('expires')!r}, "
            f"not after the entry's time {entry.time}"
        )
    try:
        body = Retire.model_validate(instruction.get("body"))
    except ValidationError as e:
        raise MalformedError(f"entry {entry.seq}: the signed retirement is not valid: {e}") from e
    if (body.quantity is None) == (body.range is None):
        # The registry carries out neither (nor does the replay); with neither, any effects
        # would agree with what the holder signed.
        raise MalformedError(
            f"entry {entry.seq}: the signed retirement names "
            f"{'neither' if body.quantity is None else 'both'} of quantity and range, where "
            "a retirement gives exactly one of quantity or range"
        )
    return body


def _covers(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether ``spans`` are exactly ``start..end``: one block, or several held side by side."""
    ordered = sorted(spans)
    return (
        bool(ordered)
        and ordered[0][0] == start
        and ordered[-1][1] == end
        and all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ordered))
    )


def _integer(value: Any) -> int:
    """``value`` if it is a JSON integer, as every quantity and serial the ledger records is
    (not a text, a boolean or a fraction, which ``int()`` would quietly read as one)."""
    if type(value) is not int:
        raise TypeError(f"{value!r} is not an integer")
    return value


def _carried_out(entry: Entry, body: Retire, effects: dict[str, Any]) -> int:
    """The quantity retired, once the recorded effects are checked to do what ``body`` asks."""
    blocks = effects.get("blocks")
    try:
        spans = [(_integer(b["start"]), _integer(b["end"])) for b in blocks]  # type: ignore[union-attr]
        quantity = _integer(effects["quantity"])
    except (KeyError, TypeError, ValueError) as e:
        raise MalformedError(f"entry {entry.seq}: malformed effects ({e})") from e
    wrong = []
    if effects.get("batch") != body.batch or effects.get("from") != body.account:
        wrong.append(f"batch {effects.get('batch')!r} from {effects.get('from')!r}")
    ordered = sorted(spans)
    if not spans or any(start < 1 or end < start for start, end in spans):
        wrong.append(f"blocks {blocks}")
    elif any(b[0] <= a[1] for a, b in itertools.pairwise(ordered)):
        wrong.append(f"overlapping blocks {blocks}")  # a serial retired twice counts once
    elif sum(end - start + 1 for start, end in spans) != quantity:
        wrong.append(f"blocks {blocks} of {quantity} tCO2e")
    if body.quantity is not None and quantity != body.quantity:
        wrong.append(f"{quantity} tCO2e")
    if body.range is not None and not _covers(spans, body.range.start, body.range.end):
        wrong.append(f"serials {blocks}")
    if wrong:
        raise MalformedError(
            f"entry {entry.seq}: the effects record {', '.join(wrong)}, not the retirement the "
            f"holder signed ({body.quantity or body.range} of {body.batch} from {body.account})"
        )
    return quantity
