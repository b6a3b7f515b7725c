"""The auditor's two commands, ``registry export`` and ``registry verify``, as plain functions.

``registry/cli.py`` registers them (``app.command("export")(export_cmd)``,
``app.command("verify")(verify_cmd)``); keeping them here keeps the CLI module a list of thin
edges. Exit codes of ``registry verify``:

* **0**: every check passed;
* **1**: a usage error (not a bundle, unreadable key, database unreachable): a
  :class:`~registry.errors.RegistryError` that ``registry.cli.main`` prints as ``error[code]``;
* **2**: the bundle was read and at least one check failed; the report lists each failure.

A progress bar goes to stderr, and only when stderr is a terminal, so pipes and ``--json``
output stay clean.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from registry.errors import ConfigurationError, InvalidRequestError, RegistryError, first_line

if TYPE_CHECKING:
    from registry.config import Settings


def load_settings() -> Settings:
    """The ``REGISTRY_*`` settings; a bad one is a usage error (``error[configuration_error]``,
    exit 1), for every command alike."""
    from registry.config import Settings

    try:
        return Settings()
    except ValidationError as e:
        raise ConfigurationError(f"bad REGISTRY_* setting: {e.errors()[0]['msg']}") from e


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)


def export_cmd(
    out: Annotated[Path, typer.Argument(help="Where to write the bundle (JSON Lines).")],
) -> None:
    """Export the whole ledger (entries, checkpoints, keys) as a bundle for offline audit."""
    from registry.service.export import export_bundle
    from registry.store import ledger_repo
    from registry.store.db import (
        make_engine,
        read_session,
        require_database,
        require_known_schema,
    )

    settings = load_settings()
    require_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        require_known_schema(engine, upgraded=False)
        with read_session(engine) as session:
            total = ledger_repo.tree_size(session)
        with _progress(total, "exporting") as progress:
            result = export_bundle(engine, out, progress=progress)
    finally:
        engine.dispose()
    typer.echo(
        f"exported {result.tree_size} entries, {result.checkpoints} checkpoints and "
        f"{result.party_keys} party keys to {result.path} ({result.bytes:,} bytes)"
    )


def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle `registry export` wrote.")],
    registry_key: Annotated[
        str,
        typer.Option(
            "--registry-key",
            help="The registry key you trust, obtained independently: its note verifier key "
            "(<origin>+<keyid>+<base64>, as `registry init` prints) or raw base64 Ed25519 key. "
            "Any key of the ledger's history is accepted; pin the one the registry publishes "
            "now (a key it replaced may have leaked). Required.",
        ),
    ] = "",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout.")
    ] = False,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="Also compare the replayed state with this database's state tables "
            "(a SQLAlchemy URL, read only).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes checking signatures, at least 1 (default: every core, or one "
            "for a ledger of fewer than 2,000 entries, which worker processes would only slow)."
        ),
    ] = None,
    require_every_rule: Annotated[
        bool,
        typer.Option(
            "--require-every-rule",
            help="Fail unless the genesis adopts every rule this version checks, as a ledger "
            "begun by this version does (an older ledger is not held to rules it predates).",
        ),
    ] = False,
) -> None:
    """Verify a bundle offline: signatures, chain, tree, checkpoints, and a full replay.

    Exits 0 when every check passes, 2 when any fails (each failure is listed with its entry),
    1 on a usage error.
    """
    # The verifier is imported by this command alone: every other command starts without it
    # (0.46 s of the CLI's 0.63 s of imports on a slow hour).
    from registry.ledger.audit import Failure
    from registry.ledger.bundle import BundleReader
    from registry.ledger.verify_bundle import EXIT_FAILED, verify_bundle

    # Checked here, not by the option parser, whose errors exit 2: a script must never take a
    # missing key or a bad worker count for a ledger that failed its checks.
    if not registry_key:
        raise InvalidRequestError("--registry-key is required: pin the key you got out of band")
    if workers is not None and workers < 1:
        raise InvalidRequestError(f"--workers must be at least 1, got {workers}")
    if not bundle.is_file():
        raise ConfigurationError(f"no bundle at {bundle}")
    total = BundleReader(bundle).header.tree_size
    with _progress(total, "verifying") as progress:
        verification = verify_bundle(
            bundle, registry_key=registry_key, workers=workers, progress=progress
        )
    report = verification.report
    if require_every_rule and report.log.entries:
        for rule in report.rules_not_adopted:
            report.log.add(Failure(
                code="rule_not_adopted", seq=0,
                message=f"the genesis does not adopt {rule}: the ledger is not held to it",
            ))
    if against is not None:
        from registry.service.compare import compare_with_database, describe_url

        try:
            differences = compare_with_database(
                against, verification.state, size=report.log.entries, root=report.log.root
            )
        except RegistryError:
            raise
        except Exception as e:  # a bad URL or an unreachable server is a usage error
            raise ConfigurationError(
                f"cannot read the database {describe_url(against)}: {first_line(e)}"
            ) from e
        report.against = describe_url(against)
        for difference in differences:
            report.log.add(Failure(code="state_mismatch", message=str(difference)))
    if json_out:
        typer.echo(json.dumps(report.to_json_value(), indent=2, ensure_ascii=False))
    else:
        typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(code=EXIT_FAILED)
