"""Parties (companies, governments, third-party entities, auditors), their keys and accounts."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from registry.domain.instructions import (
    MAX_ACTIVE_KEYS,
    AddPartyKey,
    OpenAccount,
    RegisterParty,
    RevokePartyKey,
)
from registry.errors import (
    ConflictError,
    InvalidRequestError,
    PermissionDeniedError,
    RegistryError,
    StateError,
)
from registry.ledger.keys import PublicKey
from registry.service.instructions import Acting
from registry.store.credits_repo import get_or_404
from registry.store.tables import AccountRow, PartyKeyRow, PartyRow

Effects = dict[str, Any]


def public_key_from_b64(text: str) -> PublicKey:
    try:
        return PublicKey.from_b64(text)
    except RegistryError as e:  # not base64, not 32 bytes, or a weak key: say which
        raise InvalidRequestError(f"public key {text[:60]!r}: {e.message}") from e
    except Exception as e:
        raise InvalidRequestError(f"not a base64 raw Ed25519 public key: {text[:60]!r}") from e


def add_key(session: Session, *, party_id: str, key: PublicKey, seq: int) -> str:
    if session.get(PartyKeyRow, key.key_id) is not None:
        raise ConflictError(
            f"key {key.key_id} is already registered", details={"key_id": key.key_id}
        )
    session.add(
        PartyKeyRow(key_id=key.key_id, party_id=party_id, public_key=key.raw, added_seq=seq)
    )
    return key.key_id


def register_party(session: Session, acting: Acting[RegisterParty]) -> Effects:
    acting.require_role("administrator")
    body = acting.body
    if session.get(PartyRow, body.party_id) is not None:
        raise ConflictError(
            f"party {body.party_id} already exists", details={"party": body.party_id}
        )
    keys = [public_key_from_b64(k) for k in body.public_keys]
    session.add(
        PartyRow(
            id=body.party_id,
            name=body.name,
            role=body.role,
            country=body.country,
            created_seq=acting.seq,
        )
    )
    session.flush()
    key_ids = [add_key(session, party_id=body.party_id, key=k, seq=acting.seq) for k in keys]
    return {"party_id": body.party_id, "key_ids": key_ids}


def _self_or_admin(acting: Acting[Any], party_id: str) -> None:
    if acting.party.role != "administrator" and acting.party.id != party_id:
        raise PermissionDeniedError(
            f"only an administrator or party {party_id} itself may change its keys",
            details={"party": party_id, "actor": acting.party.id},
        )


def _active_keys(session: Session, party_id: str) -> list[str]:
    return list(
        session.exec(
            select(PartyKeyRow.key_id).where(
                PartyKeyRow.party_id == party_id,
                PartyKeyRow.revoked_seq == None,  # noqa: E711
            )
        ).all()
    )


def add_party_key(session: Session, acting: Acting[AddPartyKey]) -> Effects:
    """A party adds a key to itself, signing with a key it already has.

    Nobody else may, administrators included: a key an administrator could add would let the
    registry sign transfers in the holder's name, and the holder's signature in the ledger would
    prove nothing. (Revocation stays open to administrators: it can stop a thief, never enable
    one.)
    """
    body = acting.body
    if acting.party.id != body.party_id:
        raise PermissionDeniedError(
            f"only party {body.party_id} itself may add a key to itself",
            details={"party": body.party_id, "actor": acting.party.id},
        )
    get_or_404(session, PartyRow, body.party_id, "party")
    active = _active_keys(session, body.party_id)
    if len(active) >= MAX_ACTIVE_KEYS:
        raise StateError(
            f"party {body.party_id} already has {len(active)} active keys, the most a party may "
            "hold: revoke one before adding another",
            details={"party": body.party_id, "active_keys": len(active)},
        )
    key_id = add_key(
        session, party_id=body.party_id, key=public_key_from_b64(body.public_key), seq=acting.seq
    )
    return {"party_id": body.party_id, "key_id": key_id}


def revoke_party_key(session: Session, acting: Acting[RevokePartyKey]) -> Effects:
    body = acting.body
    _self_or_admin(acting, body.party_id)
    row = get_or_404(session, PartyKeyRow, body.key_id, "key")
    if row.party_id != body.party_id:
        raise InvalidRequestError(f"key {body.key_id} is not a key of party {body.party_id}")
    if row.revoked_seq is not None:
        raise StateError(f"key {body.key_id} is already revoked")
    if len(_active_keys(session, body.party_id)) <= 1:
        raise StateError(
            f"refusing to revoke the last active key of party {body.party_id}: add a new key first"
        )
    row.revoked_seq = acting.seq
    session.add(row)
    return {"party_id": body.party_id, "key_id": body.key_id}


def create_account(
    session: Session,
    *,
    account_id: str,
    holder: str,
    kind: str,
    name: str,
    seq: int,
    unit_id: str | None = None,
) -> None:
    if session.get(AccountRow, account_id) is not None:
        raise ConflictError(f"account {account_id} already exists", details={"account": account_id})
    session.add(
        AccountRow(
            id=account_id, holder=holder, kind=kind, name=name, unit_id=unit_id, created_seq=seq
        )
    )


def open_account(session: Session, acting: Acting[OpenAccount]) -> Effects:
    acting.require_role("administrator")
    body = acting.body
    holder = get_or_404(session, PartyRow, body.holder, "party")
    if holder.role in {"auditor", "third_party_entity"}:
        raise InvalidRequestError(
            f"a {holder.role} cannot hold credits", details={"holder": holder.id}
        )
    create_account(
        session,
        account_id=body.account_id,
        holder=holder.id,
        kind="holding",
        name=body.name,
        seq=acting.seq,
    )
    return {"account_id": body.account_id}
