"""The ``registry`` command: a thin edge over the service layer.

Errors become exit codes here and nowhere else: a :class:`RegistryError` prints
``error[<code>]: <message>`` on stderr and exits 1, and so does what the option parser refuses
(``error[invalid_request]``), so that 2 only ever means a failed check or an alarm.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from registry.api.paths import INSTRUCTION_PATHS
from registry.audit_cli import export_cmd, load_settings, verify_cmd
from registry.config import Settings, is_origin
from registry.errors import ConfigurationError, InvalidRequestError, RegistryError, first_line
from registry.ledger.canonical import read_json
from registry.ledger.keys import PublicKey, SigningKey

# The database layer, the HTTP client and the settings are imported by the commands that use
# them: `registry verify` (and each of its worker processes, which import this module again)
# starts without them (0.36 s of imports down to 0.23 s).
GRACEFUL_SHUTDOWN_SECONDS = 10
"""How long ``registry serve``, once told to stop, lets requests in progress finish."""

app = typer.Typer(
    help="Cambodia–Japan JCM and REDD+ carbon credit registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def init(
    insecure_dev_key: Annotated[
        bool,
        typer.Option(
            "--insecure-dev-key",
            help="Write the registry key UNENCRYPTED (local throw-away registries only).",
        ),
    ] = False,
    admin_id: Annotated[str, typer.Option(help="Party id of the first administrator.")] = (
        "kh-registry-admin"
    ),
    admin_name: Annotated[str, typer.Option(help="Name of the first administrator.")] = (
        "Registry administrator, Ministry of Environment of Cambodia"
    ),
    admin_public_key: Annotated[
        str | None,
        typer.Option(help="The administrator's own Ed25519 public key (base64), from keygen."),
    ] = None,
    admin_key_out: Annotated[
        Path,
        typer.Option(help="Without --admin-public-key: where to write a new administrator key."),
    ] = Path("var/admin-key.pem"),
) -> None:
    """Create the database, the registry's Ed25519 key, the first administrator and genesis."""
    from registry.service.compare import describe_url
    from registry.service.setup import (
        FirstAdministrator,
        check_administrator,
        initialise,
        passphrase_of,
        preflight,
        write_key_file,
    )

    settings = load_settings()
    # Checked before anything is written: the database, the registry key, a new admin key.
    check_administrator(party_id=admin_id, name=admin_name, country=FirstAdministrator.country)
    given = PublicKey.from_b64(admin_public_key) if admin_public_key is not None else None
    preflight(settings, insecure_dev_key=insecure_dev_key)
    if given is not None:
        admin_key = given
    else:
        new_key = SigningKey.generate()
        passphrase = None if insecure_dev_key else passphrase_of(settings)
        write_key_file(admin_key_out, new_key, passphrase=passphrase)
        admin_key = new_key.public_key
        typer.echo(f"administrator key written to {admin_key_out}")
    if insecure_dev_key:
        typer.secho(
            f"warning: writing the registry key unencrypted to {settings.key_file} "
            "(--insecure-dev-key); never do this for a real registry",
            fg="yellow",
            err=True,
        )
    try:
        registry = initialise(
            settings,
            admin=FirstAdministrator(party_id=admin_id, name=admin_name, public_key=admin_key),
            insecure_dev_key=insecure_dev_key,
        )
    except BaseException:
        # No registry key left means no genesis (initialise keeps it when it cannot tell):
        # the administrator key made for it would only stand in the way of a retry.
        if given is None and not settings.key_file.exists():
            admin_key_out.unlink(missing_ok=True)
        raise
    typer.echo(f"initialised registry {settings.origin}")
    typer.echo(f"database: {describe_url(settings.database_url)}")  # its password masked
    typer.echo(f"registry key: {registry.signer.public_key.key_id}")
    typer.echo(f"checkpoint verifier key: {registry.note_verifier.verifier_string()}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port to listen on.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the registry's HTTP API (OpenAPI at /docs)."""
    from registry.logs import log_to_stderr
    from registry.service.writer_process import ADDRESS_ENV, WriterHost

    log_to_stderr()
    settings = load_settings()
    # One writer process for the whole server, started before any worker: every worker's
    # instructions share its batches (service/writer_process.py). It imports its code while
    # this process brings the schema up to date and checks the key and the database, so that
    # a server that cannot run says why in one line instead of in each process it starts.
    writer = WriterHost()
    writer.launch()
    try:
        from registry.service.setup import open_registry
        from registry.store.db import OPENED_FILE_ENV, sqlite_file_marker

        opened = open_registry(settings).engine
        # A writer process started again later (the first one died) uses the SQLite file
        # opened here, not whatever is then at the path (a backup put back with mv).
        if (marker := sqlite_file_marker(opened)) is not None:
            os.environ[OPENED_FILE_ENV] = marker
        opened.dispose()
        if settings.key_passphrase is None:  # the key loaded without one: it is in the clear
            typer.secho(
                f"warning: the registry key at {settings.key_file} is not encrypted: anyone "
                "who can read the file can sign as the registry (a local, throw-away registry "
                "only)",
                fg="yellow",
                err=True,
            )
        _refuse_a_port_in_use(host or settings.host, port or settings.port, workers=workers)
        writer.open()
        if workers == 1:  # this process serves: it imports the API while the writer opens
            import registry.api.server  # noqa: F401
        writer.start()
    except BaseException:
        writer.stop()
        raise
    os.environ[ADDRESS_ENV] = writer.address
    try:
        import uvicorn

        uvicorn.run(
            "registry.api.server:app_from_env",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers,
            http="registry.api.server:NoDelayH11Protocol",
            log_level="info",
            # A stop (SIGTERM, Ctrl-C) lets requests in progress finish, but a client that
            # keeps its connection busy cannot hold a worker, and the server, up for ever.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    finally:
        writer.stop()


def _refuse_a_port_in_use(host: str, port: int, *, workers: int) -> None:
    """Say in one line that the server cannot listen there (uvicorn would log and exit 3).

    Bound as uvicorn will: with one worker, every address of ``host`` at once, an IPv6 one
    apart from IPv4 (asyncio's ``create_server``); with several, ``host`` in one socket, of
    IPv6 when it has a colon, dual-stack (uvicorn's ``bind_socket``)."""
    import socket

    probes: list[socket.socket] = []
    addresses: list[tuple[int, int, int, Any]]
    try:
        if workers == 1:
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            addresses = list(dict.fromkeys((f, k, p, a) for f, k, p, _, a in infos))
        else:
            one = socket.AF_INET6 if ":" in host else socket.AF_INET
            addresses = [(one, socket.SOCK_STREAM, socket.IPPROTO_TCP, (host, port))]
        for family, kind, proto, address in addresses:
            probe = socket.socket(family, kind, proto)
            probes.append(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            if workers == 1 and family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)
    except OSError as e:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    finally:
        for probe in probes:
            probe.close()


@app.command()
def keygen(
    out: Annotated[Path, typer.Argument(help="Where to write the private key (PEM).")],
    unencrypted: Annotated[
        bool, typer.Option("--unencrypted", help="Do not encrypt the key (tests and demos only).")
    ] = False,
) -> None:
    """Create an Ed25519 key pair for a party; prints the public key to register."""
    from registry.config import is_placeholder
    from registry.service.setup import write_key_file

    passphrase = os.environ.get("REGISTRY_PARTY_KEY_PASSPHRASE")
    if passphrase is None and not unencrypted:
        raise RegistryError(
            "set REGISTRY_PARTY_KEY_PASSPHRASE to encrypt the key, or pass --unencrypted"
        )
    if unencrypted and passphrase:
        # The key would be written in the clear and `registry sign`, given the passphrase,
        # would not read it: the same refusal as `init --insecure-dev-key` with one.
        raise ConfigurationError(
            "REGISTRY_PARTY_KEY_PASSPHRASE is set, but --unencrypted writes the key "
            "unencrypted: unset one of them"
        )
    # As for the registry key: a key guarded by `changeme` looks protected, and is not.
    if not unencrypted and is_placeholder(passphrase or ""):
        raise ConfigurationError(
            "REGISTRY_PARTY_KEY_PASSPHRASE is empty or a placeholder; choose a real "
            "passphrase (or pass --unencrypted)"
        )
    key = SigningKey.generate()
    write_key_file(out, key, passphrase=None if unencrypted or passphrase is None
                   else passphrase.encode())
    typer.echo(key.public_key.to_b64())


def _read_party_key(path: Path) -> SigningKey:
    passphrase = os.environ.get("REGISTRY_PARTY_KEY_PASSPHRASE")
    return SigningKey.from_pem(path.read_bytes(), passphrase.encode() if passphrase else None)


def _read_json(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return read_json(text)
    except ValueError as e:  # an integer past 4,300 digits, or nesting past the parser
        raise InvalidRequestError(f"{path} is not JSON: {e}") from e


UrlOption = Annotated[str, typer.Option(envvar="REGISTRY_URL", help="The registry's base URL.")]
ActorOption = Annotated[str, typer.Option(help="Your party id.")]
KeyOption = Annotated[
    Path, typer.Option(help="Your private key (PEM); REGISTRY_PARTY_KEY_PASSPHRASE decrypts it.")
]


@app.command()
def sign(
    kind: Annotated[str, typer.Argument(help=f"Instruction type: {', '.join(INSTRUCTION_PATHS)}.")],
    body: Annotated[str, typer.Argument(help="The instruction body as a JSON file, or - .")],
    actor: ActorOption,
    key: KeyOption,
    valid_for: Annotated[
        int, typer.Option(min=1, max=7 * 86400, help="Seconds until the instruction expires.")
    ] = 3600,
    registry: Annotated[
        str,
        typer.Option(
            envvar="REGISTRY_ORIGIN",
            help="The origin of the registry the instruction is for (the first line of its "
            "checkpoints; GET /v1/keys shows it). Every other registry refuses the instruction.",
        ),
    ] = Settings.model_fields["origin"].default,
) -> None:
    """Sign an instruction with your key; prints the signed JSON to submit."""
    from registry.client import sign_instruction

    if kind not in INSTRUCTION_PATHS:
        raise InvalidRequestError(f"unknown instruction type {kind!r}")
    if not is_origin(registry):
        # No registry has such an origin: every one would refuse the instruction.
        raise InvalidRequestError(
            "--registry must be the origin of a registry: 1 to 255 characters without spaces "
            f"or '+', got {registry!r}"
        )
    signed = sign_instruction(
        _read_party_key(key),
        registry=registry,
        actor=actor,
        type=kind,
        body=_read_json(body),
        valid_for=timedelta(seconds=valid_for),
    )
    # Checked as the registry checks it, so a body it would refuse is not signed: said here,
    # where it can be mended, not by a 422 after the fact.
    from registry.service.instructions import parse_signed

    parse_signed(signed, expected_type=kind)
    typer.echo(json.dumps(signed, indent=2))


@app.command()
def submit(
    signed: Annotated[str, typer.Argument(help="A signed instruction (JSON file, or - ).")],
    url: UrlOption = "http://127.0.0.1:8000",
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="The request's Idempotency-Key (default: one made from the signed "
                     "instruction, the same each time it is submitted)."),
    ] = None,
) -> None:
    """Submit a signed instruction; prints the ledger entry that records it.

    Submitting the same signed instruction again (after a timeout, say) is answered with what
    the registry did with it the first time: nothing is carried out twice."""
    from registry.client import ClientError, RegistryClient, answer_of

    document = _read_json(signed)
    client = RegistryClient.connect(url)
    try:
        kind = document["instruction"]["type"]
        if kind not in INSTRUCTION_PATHS:
            raise KeyError(kind)
    except (KeyError, TypeError) as e:
        raise InvalidRequestError("not a signed instruction (see `registry sign`)") from e
    if idempotency_key is None:
        # Made from the instruction, so that a retry of it is a retry to the registry too (a
        # new key would be refused as a replayed nonce, and never say what was done).
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        idempotency_key = f"cli-{digest}"
    response = client.post_signed(document, idempotency_key=idempotency_key)
    try:
        answer = answer_of(response)
    except ClientError as e:
        raise RemoteError(e.code, e.message) from e
    typer.echo(json.dumps(answer, indent=2))


@app.command()
def holdings(
    account: Annotated[str, typer.Argument(help="Account id.")],
    actor: ActorOption,
    key: KeyOption,
    url: UrlOption = "http://127.0.0.1:8000",
) -> None:
    """Show an account's credit blocks (a signed read: holder, administrators, auditors)."""
    from registry.client import ClientError, RegistryClient

    client = RegistryClient.connect(url, actor=actor, key=_read_party_key(key))
    try:
        data, blocks = _all_holdings(client, account)
    except ClientError as e:
        raise RemoteError(e.code, e.message) from e
    shown = data["account"]
    typer.echo(
        f"{_escaped(shown['id'])} ({_escaped(shown['kind'])}, held by "
        f"{_escaped(shown['holder'])}): {data['total_active']} active tCO2e"
    )
    for block in blocks:
        typer.echo(
            f"  {_escaped(block['block']):<40} {block['quantity']:>12}  "
            f"{_escaped(block['status'])}"
        )


def _all_holdings(client: Any, account: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An account's holdings and every block, 500 a page, each page from where the last one
    ended (``after``): a block the account holds all along is listed once, however busy the
    registry. When the account itself changed between two pages (its active blocks then do
    not add up to its total), it starts again."""
    path = f"/v1/accounts/{account}/holdings"
    for _ in range(5):
        data = _holdings_page(client.get(path, signed=True, params={"limit": 500}), path)
        blocks = list(data["blocks"]["data"])
        while data["blocks"]["next"] is not None:
            params = {"limit": 500, "after": data["blocks"]["next"]}
            data = _holdings_page(client.get(path, signed=True, params=params), path)
            blocks += data["blocks"]["data"]
        active = sum(b["quantity"] for b in blocks if b["status"] == "active")
        if active == data["total_active"]:
            return data, blocks
    raise RegistryError(f"account {account} kept changing while its pages were read; try again")


def _holdings_page(page: Any, path: str) -> dict[str, Any]:
    """A page of holdings as the registry answers it; anything else (JSON of another shape,
    from something else at the URL) is a one-line error, not a traceback."""
    account = page.get("account") if isinstance(page, dict) else None
    blocks = page.get("blocks") if isinstance(page, dict) else None
    if (
        isinstance(page, dict)
        and isinstance(account, dict)
        and all(isinstance(account.get(k), str) for k in ("id", "kind", "holder"))
        and type(page.get("total_active")) is int
        and isinstance(blocks, dict)
        and isinstance(blocks.get("data"), list)
        and (blocks.get("next") is None or isinstance(blocks.get("next"), str))
        and all(
            isinstance(b, dict)
            and isinstance(b.get("block"), str)
            and type(b.get("quantity")) is int
            and isinstance(b.get("status"), str)
            for b in blocks["data"]
        )
    ):
        return page
    from registry.client import ClientError

    raise ClientError(200, "http_error", f"the answer to GET {path} is not the registry's answer "
                      "(holdings of an account)")


@app.command()
def demo(
    admin_id: Annotated[str, typer.Option(help="The first administrator's party id.")] = (
        "kh-registry-admin"
    ),
    admin_key: Annotated[Path, typer.Option(help="The administrator's key.")] = Path(
        "var/admin-key.pem"
    ),
    keys_dir: Annotated[Path, typer.Option(help="Where to write the demo parties' keys.")] = Path(
        "var/demo-keys"
    ),
) -> None:
    """Seed a freshly initialised registry with the Cambodia–Japan demo data set."""
    from registry.demo import run_demo
    from registry.service.setup import open_registry, passphrase_of
    from registry.store.db import migrate, read_session
    from registry.store.ledger_repo import tree_size

    settings = load_settings()
    # Asked before the schema is brought up to date: a registry in use, perhaps by servers of
    # an earlier version, is left as it is.
    registry = open_registry(settings, migrate_schema=False)
    with read_session(registry.engine) as session:
        if tree_size(session) != 1:
            registry.engine.dispose()
            raise ConfigurationError("the demo seeds a freshly initialised registry only")
    migrate(registry.engine)
    run = run_demo(
        registry,
        admin_id=admin_id,
        admin_key=SigningKey.from_pem(admin_key.read_bytes(), passphrase_of(settings)),
        keys_dir=keys_dir,
        log=typer.echo,
    )
    typer.echo(f"demo: {len(run.results)} entries; party keys (unencrypted) in {keys_dir}/")


@app.command("rotate-key")
def rotate_key(
    new_key_file: Annotated[
        Path,
        typer.Argument(help="Where to write the new registry key (PEM); it must not exist."),
    ],
    insecure_dev_key: Annotated[
        bool,
        typer.Option(
            "--insecure-dev-key",
            help="Write the new key UNENCRYPTED (local throw-away registries only).",
        ),
    ] = False,
) -> None:
    """Rotate the registry's signing key: a new key signs every entry from now on.

    Run it with the current key (REGISTRY_KEY_FILE, REGISTRY_KEY_PASSPHRASE, which also
    encrypts the new key), then restart every server with REGISTRY_KEY_FILE set to the new file:
    until then a server on the old key refuses writes (503 registry_key_replaced).
    """
    from registry.service.key_rotation import rotate_registry_key
    from registry.service.setup import key_passphrase, open_registry

    settings = load_settings()
    passphrase = key_passphrase(settings, insecure_dev_key=insecure_dev_key,
                                key="the new registry key", written="the new key")
    if new_key_file.is_symlink() or new_key_file.exists():
        raise ConfigurationError(f"{new_key_file} already exists; not replacing a key")
    registry = open_registry(settings)
    try:
        rotated = rotate_registry_key(registry, new_key_file=new_key_file, passphrase=passphrase)
    finally:
        registry.engine.dispose()
    typer.echo(
        f"registry key rotated at entry {rotated.seq}: {rotated.old.key_id} signs no more "
        f"entries; {rotated.new.key_id} signs from entry {rotated.seq + 1} on"
    )
    typer.echo(f"new registry key written to {new_key_file}")
    typer.echo(f"checkpoint verifier key: {rotated.note_verifier}")
    typer.echo(
        f"next: set REGISTRY_KEY_FILE={new_key_file} and restart every server of this registry"
    )


app.command("export")(export_cmd)
app.command("verify")(verify_cmd)

proof_app = typer.Typer(help="Proofs anyone can check offline.", no_args_is_help=True)
app.add_typer(proof_app, name="proof")


@proof_app.command("retirement")
def proof_retirement(
    retirement_id: Annotated[str, typer.Argument(help="e.g. RET-36")],
    url: UrlOption = "http://127.0.0.1:8000",
    out: Annotated[Path | None, typer.Option("-o", help="Write the receipt here.")] = None,
) -> None:
    """Fetch a retirement receipt: the entry, its inclusion proof and the signed checkpoint."""
    from registry.client import ClientError, RegistryClient

    client = RegistryClient.connect(url)
    try:
        receipt = client.get(f"/v1/retirements/{retirement_id}/receipt")
    except ClientError as e:
        raise RemoteError(e.code, e.message) from e
    text = json.dumps(receipt, indent=2)
    if out is None:
        typer.echo(text)
    else:
        from registry.ledger.bundle import atomic_output

        with atomic_output(out) as file:
            file.write(f"{text}\n".encode())
        typer.echo(f"receipt for {retirement_id} written to {out}")


@app.command("verify-receipt")
def verify_receipt_cmd(
    receipt: Annotated[Path, typer.Argument(help="A receipt from `registry proof retirement`.")],
    registry_key: Annotated[
        str, typer.Option(help="The registry's checkpoint verifier key (name+id+key), pinned.")
    ],
    accept_version_1: Annotated[
        bool,
        typer.Option(
            "--accept-version-1",
            help="Check a version 1 receipt for what it proves: not who held the account.",
        ),
    ] = False,
) -> None:
    """Check a retirement receipt offline against the registry's pinned key."""
    from pydantic import ValidationError

    from registry.ledger.checkpoint import NoteVerifier
    from registry.ledger.receipt import RetirementReceipt, verify_receipt

    try:
        parsed = RetirementReceipt.model_validate(_read_json(str(receipt)))
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "$"
        raise InvalidRequestError(
            f"{receipt} is not a retirement receipt: {where}: {first['msg']}"
        ) from e
    checked = verify_receipt(parsed, verifier=NoteVerifier.parse(registry_key))
    body = checked.body
    if checked.account_opened is None and not accept_version_1:
        # Unasked, an older receipt is not taken as a whole proof: a registry could hand one
        # out to hide who held the account.
        raise InvalidRequestError(
            f"{receipt} is a version {parsed.version} receipt: it does not show that "
            f"{_shown(checked.holder)} held {body.account}; ask the registry for a new one "
            "(`registry proof retirement`), or pass --accept-version-1 to check what it does "
            "prove"
        )
    typer.echo(
        f"OK: retirement {_shown(checked.retirement_id)} of {checked.quantity} tCO2e by "
        f"{_shown(checked.holder)} "
        f"is entry {checked.entry.seq}, included in the tree of {checked.checkpoint.size} entries "
        f"signed by {registry_key.split('+')[0]}; the holder's signature verifies"
    )
    typer.echo(
        f"   signed: {checked.quantity} tCO2e of {_shown(body.batch)} from {body.account}, for "
        f"{_shown(body.beneficiary)} ({body.purpose}, {body.jurisdiction}): "
        f"{_shown(body.reason)}"
    )
    opened = checked.account_opened
    if opened is None:
        typer.echo(
            f"   account: NOT proven: a version {parsed.version} receipt holds no entry opening "
            f"{body.account}, so it does not show that {_shown(checked.holder)} held it"
        )
    else:
        typer.echo(
            f"   account: {body.account} was opened for {_shown(checked.holder)} by entry "
            f"{opened.seq} ({opened.kind}), before the retirement, in the same signed tree"
        )


def _escaped(text: str) -> str:
    """Text a server sent, as it can be printed: each line break, terminal escape or other
    invisible character written as its escape, so it cannot add a line of its own (an "OK"
    the registry never said) or rewrite what the reader sees."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(text: str) -> str:
    """Text from a receipt as it can be printed (the holder's free text, and what the registry
    seals as it likes: the retirement id, the holder's party id, the batch): quoted with escapes
    if it holds a line break, a terminal escape or another invisible character, which could
    rewrite what the reader sees above it."""
    return text if text.isprintable() else repr(text)


@app.command()
def audit(
    url: UrlOption = "http://127.0.0.1:8000",
    registry_key: Annotated[
        str, typer.Option(help="The registry's checkpoint verifier key (name+id+key), pinned.")
    ] = "",
    state: Annotated[Path, typer.Option(help="Where the monitor remembers what it saw.")] = Path(
        "registry-monitor.json"
    ),
    watch: Annotated[
        float, typer.Option(help="Seconds between rounds; 0 checks once and exits.")
    ] = 0,
    rounds: Annotated[int, typer.Option(help="With --watch: stop after this many.")] = (
        1_000_000
    ),
    timeout: Annotated[
        float, typer.Option(help="Seconds one answer may take, all of it, before the round "
                            "is given up as not checked.")
    ] = 300,
) -> None:
    """Monitor a running registry: alarm (exit 2) on any rollback, fork or rewrite.

    A registry that cannot be reached is no alarm: a single check says so and exits 1; with
    --watch the next round tries again.
    """
    import time

    from registry.ledger.checkpoint import NoteVerifier
    from registry.monitor import (
        MonitorAlarm,
        MonitorState,
        MonitorUnavailable,
        check_round,
        monitor_client,
    )

    # Checked here, not by the option parser, whose errors exit 2: an alarm's exit code.
    if not registry_key:
        raise InvalidRequestError("--registry-key is required: pin the key you got out of band")
    if not watch >= 0 or rounds < 1:  # `not >=` also refuses nan
        raise InvalidRequestError(f"--watch must be 0 or more and --rounds 1 or more, "
                                  f"got {watch} and {rounds}")
    if not 0 < timeout < float("inf"):
        raise InvalidRequestError(f"--timeout must be a number of seconds above 0, got {timeout}")
    verifier = NoteVerifier.parse(registry_key)
    http = monitor_client(url, timeout=min(30, timeout))
    for n in range(rounds):
        try:
            new_state, done = check_round(
                http, verifier, MonitorState.load(state, verifier), seconds=timeout
            )
        except MonitorAlarm as e:
            typer.secho(f"ALARM: {e.message}", fg="red", bold=True, err=True)
            raise typer.Exit(2) from e
        except MonitorUnavailable as e:
            if not watch or n == rounds - 1:  # the last word is that nothing was checked
                raise
            typer.secho(f"not checked: {e.message}", fg="yellow", err=True)
        else:
            new_state.save(state)
            for seq, key_id in done.rotations:
                typer.echo(
                    f"the registry rotated its key at entry {seq}: {key_id} signs from entry "
                    f"{seq + 1} on (signed over to by the key before it, and followed)"
                )
            typer.echo(
                f"ok: {done.size} entries, {done.new_entries} new since {done.previous_size}, "
                "all consistent with what was seen before"
            )
        if not watch or n == rounds - 1:
            break
        time.sleep(watch)


class RemoteError(RegistryError):
    """The registry answered a request with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.remote_code = code


# The option parser's own errors (click's, which typer carries a copy of): found through the
# one typer exports, whose bases they are.
_CLICK_ERRORS = {kind.__name__: kind for kind in typer.BadParameter.__mro__}
_UsageError: type[Exception] = _CLICK_ERRORS["UsageError"]
_ClickException: type[Exception] = _CLICK_ERRORS["ClickException"]


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except _UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `registry` alone: its help
            e.show()  # type: ignore[attr-defined]
            sys.exit(2)
        # An unknown option, a missing argument, a value out of range: one line, exit 1, as
        # every other usage error (2 means a failed check or an alarm to verify and audit).
        ctx = getattr(e, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = e.format_message()  # type: ignore[attr-defined]
        typer.secho(f"error[invalid_request]: {message}{where}", fg="red", err=True)
        sys.exit(1)
    except _ClickException as e:
        e.show()  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except (OSError, UnicodeDecodeError) as e:  # a file that is not there, or not text
        typer.secho(f"error[io_error]: {e}", fg="red", err=True)
        sys.exit(1)
    except RemoteError as e:  # the server's words: escaped
        typer.secho(f"error[{_escaped(e.remote_code)}]: {_escaped(e.message)}", fg="red",
                    err=True)
        sys.exit(1)
    except RegistryError as e:
        typer.secho(f"error[{e.code}]: {e.message}", fg="red", err=True)
        sys.exit(1)
    except Exception as e:
        message = _one_line(e)
        if message is None:
            raise
        typer.secho(message, fg="red", err=True)
        sys.exit(1)
    # Without the parser's own handling, a command's exit code (typer.Exit) is returned.
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(error: Exception) -> str | None:
    """What to say of a failure of the HTTP client or the database, in one line; ``None`` for
    anything else. Only modules a command loaded are looked at: ``verify`` and its workers
    never load the HTTP client or the database layer for this."""
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(error, httpx.InvalidURL):
        return f"error[invalid_request]: not a usable registry URL: {error}"
    if httpx is not None and isinstance(error, httpx.WriteTimeout | httpx.ReadTimeout):
        # The request went (or was going) out: the registry may have carried it out.
        return (f"error[registry_unavailable]: the registry did not answer in time ({error}): "
                "what was asked may have been done; running the same command again is safe")
    if httpx is not None and isinstance(error, httpx.TransportError):
        return f"error[registry_unavailable]: cannot reach the registry: {error}"
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(error, sqlalchemy_exc.SQLAlchemyError):
        return f"error[database_error]: {first_line(error)}"  # the database refused or failed
    return None
