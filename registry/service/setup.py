"""Creating a registry (database, key, genesis entry) and opening an existing one.

``registry init`` and ``./scripts/run`` come here. The registry's private key lives in one file,
encrypted with ``REGISTRY_KEY_PASSPHRASE``; writing it in the clear needs the explicitly unsafe
``insecure_dev_key`` switch, which only local demos use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import Engine, inspect
from sqlmodel import Session

from registry.config import Settings
from registry.domain.instructions import MAX_ACTIVE_KEYS, RegisterParty
from registry.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    RegistryError,
    StorageFailedError,
    first_line,
)
from registry.ledger.bundle import atomic_output
from registry.ledger.dsse import Envelope
from registry.ledger.entry import Entry
from registry.ledger.keys import PublicKey, SigningKey
from registry.ledger.registry_keys import GENESIS_KIND
from registry.service.context import Registry, utc_now
from registry.service.ledger import append_entry, b64
from registry.service.movements import CANCELLATION_ACCOUNT, RETIREMENT_ACCOUNT
from registry.service.parties import add_key, create_account
from registry.store import ledger_repo
from registry.store.db import (
    make_engine,
    migrate,
    parse_database_url,
    read_session,
    require_database,
    require_known_schema,
    write_transaction,
)
from registry.store.tables import LedgerEntry, PartyRow


def passphrase_of(settings: Settings) -> bytes | None:
    if settings.key_passphrase is None:
        return None
    return settings.key_passphrase.get_secret_value().encode()


def key_passphrase(
    settings: Settings, *, insecure_dev_key: bool, key: str, written: str
) -> bytes | None:
    """The passphrase to encrypt a new registry ``key`` with (``None``: written in the clear,
    which only ``--insecure-dev-key`` asks for); refuses a choice not made or made twice.
    ``written`` names what the switch writes unencrypted."""
    passphrase = passphrase_of(settings)
    if passphrase is None and not insecure_dev_key:
        raise ConfigurationError(
            f"set REGISTRY_KEY_PASSPHRASE to encrypt {key} "
            "(or pass --insecure-dev-key for a local, throw-away registry)"
        )
    if passphrase is not None and insecure_dev_key:
        # The key would be written in the clear, the passphrase ignored; and the registry
        # would then not open under these same settings (a passphrase for a plain key).
        raise ConfigurationError(
            f"REGISTRY_KEY_PASSPHRASE is set, but --insecure-dev-key writes {written} "
            "unencrypted: unset one of them"
        )
    return passphrase


def write_key_file(path: Path, key: SigningKey, *, passphrase: bytes | None) -> None:
    """Write ``key`` as PEM, readable only by its owner; ``None`` writes it unencrypted.

    The key is whole and on disk before this returns, or not there at all: a full disk leaves
    no half key in the way of the next try, and a power cut after the genesis entry that the
    key signs cannot leave an empty file in its place.
    """
    pem = key.to_pem_unencrypted_unsafe() if passphrase is None else key.to_pem(passphrase)
    if path.is_symlink() or path.exists():
        raise ConfigurationError(f"{path} already exists; not replacing a key")
    try:
        with atomic_output(path, private=True) as out:
            out.write(pem)
    except FileExistsError as e:
        raise ConfigurationError(f"{path} already exists; not replacing a key") from e


def load_signing_key(settings: Settings) -> SigningKey:
    if not settings.key_file.exists():
        raise ConfigurationError(
            f"no registry key at {settings.key_file}: run `registry init` first"
        )
    return SigningKey.from_pem(settings.key_file.read_bytes(), passphrase_of(settings))


def open_registry(
    settings: Settings, *, clock: Callable[[], datetime] = utc_now, migrate_schema: bool = True
) -> Registry:
    """Open the registry ``settings`` describe, bringing its schema up to date; one that was
    never initialised is refused, and no database is made for it."""
    signer = load_signing_key(settings)
    parse_database_url(settings.database_url)  # a URL that cannot be read: no init mends it
    try:
        require_database(settings.database_url)
    except ConfigurationError as e:
        raise ConfigurationError(f"{e.message}: run `registry init` first") from None
    engine = make_engine(settings.database_url, lock_timeout=settings.lock_timeout)
    # Asked before any migration, which would write a schema into a database never
    # initialised (an empty file, another PostgreSQL database).
    if not _initialised_ledger(engine):
        engine.dispose()
        raise ConfigurationError("the registry's ledger is empty: run `registry init` first")
    if migrate_schema:
        migrate(engine)
    registry = Registry(engine=engine, signer=signer, origin=settings.origin, clock=clock)
    with read_session(engine) as session:
        _refuse_another_ledgers_name_or_key(session, settings, registry)
    return registry


def _initialised_ledger(engine: Engine) -> bool:
    """Whether ``engine``'s database holds a ledger of at least its genesis (every schema
    since the first migration has the ledger's table)."""
    if not inspect(engine).has_table(LedgerEntry.__tablename__):
        return False
    with read_session(engine) as session:
        return ledger_repo.tree_size(session) > 0


def _refuse_another_ledgers_name_or_key(
    session: Session, settings: Settings, registry: Registry
) -> None:
    """Refuse to serve a ledger under another origin or key than its own (a changed setting, a
    key file of another registry): its checkpoints and entries would then be signed as no
    auditor of this ledger accepts, and every instruction signed for it refused. (An empty
    ledger was refused before.)"""
    origin = genesis_origin(session)
    if origin != settings.origin:
        raise ConfigurationError(
            f"this ledger's origin is {origin!r}, not {settings.origin!r}: set "
            f"REGISTRY_ORIGIN={origin}"
        )
    rows = ledger_repo.registry_keys(session)
    current = [k.key_id for k in rows if k.valid_until_seq is None]
    mine = registry.signer.public_key.key_id
    if mine in current:
        return
    replaced = next((k for k in rows if k.key_id == mine), None)
    if replaced is not None and replaced.valid_until_seq is not None:
        raise ConfigurationError(
            f"the key at {settings.key_file} was this ledger's registry key until entry "
            f"{replaced.valid_until_seq - 1} rotated it to {', '.join(current) or 'none'}: set "
            "REGISTRY_KEY_FILE to the key `registry rotate-key` wrote"
        )
    raise ConfigurationError(
        f"the key at {settings.key_file} is not this ledger's registry key "
        f"({', '.join(current) or 'none'}): check REGISTRY_KEY_FILE"
    )


def genesis_origin(session: Session) -> str:
    """The origin genesis names (read without verifying: the reader is the operator)."""
    row = ledger_repo.entry_at(session, 0)
    if row is None:
        raise ConfigurationError("the ledger is empty: initialise the registry first")
    try:
        entry = Entry.from_bytes(Envelope.from_bytes(row.envelope).payload)
        origin = entry.payload["origin"]
    except (RegistryError, KeyError) as e:
        raise ConfigurationError("cannot read the origin from the genesis entry") from e
    if not isinstance(origin, str):
        raise ConfigurationError("the genesis entry names no origin")
    return origin


def preflight(settings: Settings, *, insecure_dev_key: bool) -> Engine:
    """Refuse, before anything is written, to initialise a registry that cannot or must not be."""
    key_passphrase(settings, insecure_dev_key=insecure_dev_key, key="the registry key",
                   written="the keys")
    engine = make_engine(settings.database_url, lock_timeout=settings.lock_timeout)
    # Asked before the migration: an init run by mistake on a registry of an earlier version
    # must not upgrade its schema under the servers of that version still writing to it.
    try:
        require_known_schema(engine, upgraded=False)  # a newer version's: said as such
        if _initialised_ledger(engine):
            raise _already_initialised(engine)
    except BaseException:
        engine.dispose()
        raise
    if settings.key_file.exists():
        engine.dispose()
        raise ConfigurationError(
            f"a key file already exists at {settings.key_file}; not replacing it"
        )
    migrate(engine)
    with read_session(engine) as session:
        _refuse_if_initialised(session, engine)
    return engine


class AlreadyInitialised(ConfigurationError):
    """The database holds a registry's ledger already."""


def _refuse_if_initialised(session: Session, engine: Engine) -> None:
    if ledger_repo.tree_size(session) > 0:
        raise _already_initialised(engine)


def _already_initialised(engine: Engine) -> AlreadyInitialised:
    return AlreadyInitialised(
        f"the registry at {engine.url.render_as_string()} is already initialised"
    )


@dataclass(frozen=True, kw_only=True)
class FirstAdministrator:
    """The registry administrator created with the registry; it registers everyone else."""

    party_id: str = "kh-registry-admin"
    name: str = "Registry administrator, Ministry of Environment of Cambodia"
    country: str = "KH"
    public_key: PublicKey


def check_administrator(*, party_id: str, name: str, country: str | None) -> None:
    """Refuse a first administrator that a ``party.register`` would refuse: its id must be
    one that instructions can name as their actor, or nobody could ever act in the registry
    (genesis, once written, is there for good)."""
    try:
        RegisterParty.model_validate({
            "party_id": party_id, "name": name, "role": "administrator", "country": country,
            "public_keys": ["A" * 43 + "="],  # any key: only the fields above are checked
        })
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        field = {"party_id": "id", "name": "name", "country": "country"}.get(
            str(first["loc"][0]), str(first["loc"][0])
        )
        raise ConfigurationError(
            f"the first administrator's {field} is not usable: {first['msg']}"
        ) from e


SYSTEM_ACCOUNTS = (
    (RETIREMENT_ACCOUNT, "retirement", "Retired credits"),
    (CANCELLATION_ACCOUNT, "cancellation", "Cancelled credits"),
)


def initialise(
    settings: Settings,
    *,
    admin: FirstAdministrator,
    insecure_dev_key: bool = False,
    clock: Callable[[], datetime] = utc_now,
) -> Registry:
    """Create the database, the registry key, the first administrator and the genesis entry.

    The genesis entry (seq 0) names the registry key, the first administrator with its key, and
    the retirement and cancellation accounts, so a replay of the ledger starts from nothing.
    """
    check_administrator(party_id=admin.party_id, name=admin.name, country=admin.country)
    engine = preflight(settings, insecure_dev_key=insecure_dev_key)
    passphrase = passphrase_of(settings)
    key = SigningKey.generate()
    write_key_file(settings.key_file, key, passphrase=None if insecure_dev_key else passphrase)
    try:
        registry = _genesis(settings, engine, key, admin, clock)
    except BaseException as e:
        # Genesis was not written: the key signs nothing, and a retry must not find it in the
        # way. If the database cannot say (a commit whose answer was lost), the key stays.
        # Another init that wrote its genesis first (after this one's preflight) signed with
        # its own key: this one's goes.
        if isinstance(e, AlreadyInitialised) or not _initialised(engine):
            settings.key_file.unlink(missing_ok=True)
        if isinstance(e, StorageFailedError):  # its words are for a request
            raise type(e)(
                f"the database could not write the genesis entry ({first_line(e.__cause__ or e)}): "
                "its disk is full, failing or read-only. Run init again once it can be written"
            ) from e
        if isinstance(e, DatabaseUnavailableError):
            raise DatabaseUnavailableError(
                "the connection to the database was lost while the genesis entry was written "
                f"({first_line(e.__cause__ or e)}). Run init again once it is back: it says "
                "whether the registry was made"
            ) from e
        raise
    return registry


def _initialised(engine: Engine) -> bool:
    """Whether the registry at ``engine`` holds a ledger (``True`` when it cannot be told)."""
    try:
        with read_session(engine) as session:
            return ledger_repo.tree_size(session) > 0
    except Exception:
        return True


def _genesis(
    settings: Settings,
    engine: Engine,
    key: SigningKey,
    admin: FirstAdministrator,
    clock: Callable[[], datetime],
) -> Registry:
    registry = Registry(engine=engine, signer=key, origin=settings.origin, clock=clock)
    with write_transaction(engine) as session:
        # Checked again under the ledger's lock: another init may have passed its preflight
        # at the same time, and written its genesis first.
        _refuse_if_initialised(session, engine)
        public = key.public_key
        ledger_repo.add_registry_key(
            session, key_id=public.key_id, public_key=public.raw, valid_from_seq=0
        )
        session.add(
            PartyRow(
                id=admin.party_id,
                name=admin.name,
                role="administrator",
                country=admin.country,
                created_seq=0,
            )
        )
        session.flush()
        add_key(session, party_id=admin.party_id, key=admin.public_key, seq=0)
        for account_id, kind, name in SYSTEM_ACCOUNTS:
            create_account(
                session, account_id=account_id, holder=admin.party_id, kind=kind, name=name, seq=0
            )
        append_entry(
            session,
            registry,
            kind=GENESIS_KIND,
            actor="registry",
            payload={
                "origin": settings.origin,
                "registry_key": {
                    "key_id": public.key_id,
                    "algorithm": "ed25519",
                    "public_key": b64(public.raw),
                    "note_verifier": registry.note_verifier.verifier_string(),
                },
                "administrator": {
                    "party_id": admin.party_id,
                    "name": admin.name,
                    "role": "administrator",
                    "country": admin.country,
                    "key_id": admin.public_key.key_id,
                    "public_key": b64(admin.public_key.raw),
                },
                "accounts": [
                    {"account_id": a, "kind": k, "holder": admin.party_id, "name": n}
                    for a, k, n in SYSTEM_ACCOUNTS
                ],
                # Every instruction in this ledger names its registry: the auditor refuses
                # one that doesn't (older ledgers, without this, had none that did).
                "instructions_name_registry": True,
                # Issuance goes to the project's participants and governments only: the auditor
                # holds this ledger's issuances to that (older ledgers keep those they made).
                "issuance_to_project_side": True,
                # A project's status change changes its status, and a party holds at most
                # MAX_ACTIVE_KEYS active keys: the auditor holds this ledger to both.
                "status_changes_change": True,
                "max_active_keys": MAX_ACTIVE_KEYS,
                # Instruction text holds no control or text-direction character and is not
                # blank: the auditor holds this ledger to that too.
                "plain_text": True,
                # A project's partner country is an ISO 3166-1 country and its methodology one
                # of that country's: the auditor holds this ledger's registrations to that.
                "methodology_of_partner_country": True,
            },
        )
    return registry
