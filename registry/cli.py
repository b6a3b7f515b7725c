"""The ``registry`` command: a thin edge over the service layer.

Errors become exit codes here and nowhere else: a :class:`RegistryError` prints
``error[<code>]: <message>`` on stderr and exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from registry.config import Settings
from registry.errors import RegistryError
from registry.ledger.keys import PublicKey, SigningKey
from registry.service.setup import FirstAdministrator, initialise, passphrase_of, write_key_file

app = typer.Typer(
    help="Cambodia–Japan JCM and REDD+ carbon credit registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


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
    settings = _settings()
    if admin_public_key is not None:
        admin_key = PublicKey.from_b64(admin_public_key)
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
    registry = initialise(
        settings,
        admin=FirstAdministrator(party_id=admin_id, name=admin_name, public_key=admin_key),
        insecure_dev_key=insecure_dev_key,
    )
    typer.echo(f"initialised registry {settings.origin}")
    typer.echo(f"database: {settings.database_url}")
    typer.echo(f"registry key: {registry.signer.public_key.key_id}")
    typer.echo(f"checkpoint verifier key: {registry.note_verifier.verifier_string()}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the registry's HTTP API (OpenAPI at /docs)."""
    import uvicorn

    from registry.store.db import make_engine, migrate

    settings = _settings()
    migrate(make_engine(settings.database_url))
    uvicorn.run(
        "registry.api.server:app_from_env",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level="info",
    )


@app.command()
def keygen(
    out: Annotated[Path, typer.Argument(help="Where to write the private key (PEM).")],
    unencrypted: Annotated[
        bool, typer.Option("--unencrypted", help="Do not encrypt the key (tests and demos only).")
    ] = False,
) -> None:
    """Create an Ed25519 key pair for a party; prints the public key to register."""
    import os

    passphrase = os.environ.get("REGISTRY_PARTY_KEY_PASSPHRASE")
    if passphrase is None and not unencrypted:
        raise RegistryError(
            "set REGISTRY_PARTY_KEY_PASSPHRASE to encrypt the key, or pass --unencrypted"
        )
    key = SigningKey.generate()
    write_key_file(out, key, passphrase=None if unencrypted else (passphrase or "").encode())
    typer.echo(key.public_key.to_b64())


def main() -> None:
    try:
        app()
    except RegistryError as e:
        typer.secho(f"error[{e.code}]: {e.message}", fg="red", err=True)
        sys.exit(1)
