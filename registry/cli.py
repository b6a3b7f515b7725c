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
from registry.ledger.keys import SigningKey
from registry.service.setup import initialise, write_key_file

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
) -> None:
    """Create the database, the registry's Ed25519 key and the genesis entry."""
    settings = _settings()
    if insecure_dev_key:
        typer.secho(
            f"warning: writing the registry key unencrypted to {settings.key_file} "
            "(--insecure-dev-key); never do this for a real registry",
            fg="yellow",
            err=True,
        )
    registry = initialise(settings, insecure_dev_key=insecure_dev_key)
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
