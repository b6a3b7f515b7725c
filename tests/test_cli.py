"""The `registry` command as an operator and a project developer use it (real subprocesses)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import pytest

from registry.client import sign_instruction
from registry.config import Settings
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from tests.api.test_receipts import _forged
from tests.conftest import ORIGIN
from tests.helpers import LiveServer
from tests.world import World, issue_jcm

REGISTRY = str(Path(sys.executable).with_name("registry"))


def registry_env(**env: str) -> dict[str, str]:
    """This environment without its ``REGISTRY_*`` settings, and with ``env``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}, **env}


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REGISTRY, *args],
        cwd=cwd,
        env=registry_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_init_refuses_an_unprotected_key_and_placeholder_passphrases(tmp_path: Path) -> None:
    r = run(["init"], tmp_path)
    assert r.returncode == 1
    assert "error[configuration_error]" in r.stderr and "REGISTRY_KEY_PASSPHRASE" in r.stderr
    assert not (tmp_path / "var" / "registry-key.pem").exists()
    r = run(["init"], tmp_path, REGISTRY_KEY_PASSPHRASE="changeme")
    assert r.returncode == 1 and "placeholder" in r.stderr
    assert r.stderr.startswith("error[configuration_error]: bad REGISTRY_* setting")
    assert not (tmp_path / "var" / "registry-key.pem").exists()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["init", "--insecure-dev-key"], {"REGISTRY_ORIGIN": "two words"}),
        (["serve"], {"REGISTRY_PORT": "eighty"}),
        (["demo"], {"REGISTRY_LOCK_TIMEOUT": "0"}),
        (["export", "out.jsonl"], {"REGISTRY_LOCK_TIMEOUT": "-1"}),
        (["serve"], {"REGISTRY_LOCK_TIMEOUT": "inf"}),
        (["demo"], {"REGISTRY_LOCK_TIMEOUT": "1e308"}),
        (["serve"], {"REGISTRY_PORT": "70000"}),
        (["serve"], {"REGISTRY_PORT": "0"}),
        (["serve"], {"REGISTRY_WRITE_TIMEOUT": "0"}),
        (["serve"], {"REGISTRY_WRITE_TIMEOUT": "inf"}),
    ],
)
def test_a_bad_setting_is_one_error_line_and_exit_1_for_every_command(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    r = run(args, tmp_path, **env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error[configuration_error]: bad REGISTRY_* setting: ")
    assert len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "ledger.jsonl"],
        ["verify", "ledger.jsonl", "--registry-key", "KEY", "--workers", "0"],
        ["audit", "--url", "http://127.0.0.1:1"],
        ["audit", "--url", "http://127.0.0.1:1", "--registry-key", "KEY", "--watch", "-1"],
        ["audit", "--url", "http://127.0.0.1:1", "--registry-key", "KEY", "--rounds", "0"],
    ],
)
def test_a_usage_error_of_verify_or_audit_exits_1_never_their_failure_code_2(
    tmp_path: Path, args: list[str]
) -> None:
    # 2 is what a script or a cron job acts on: a ledger that failed its checks, an alarm.
    key = NoteVerifier(name="x.example/ledger", key=SigningKey.generate().public_key)
    (tmp_path / "ledger.jsonl").write_text("")
    r = run([key.verifier_string() if a == "KEY" else a for a in args], tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error[invalid_request]: --")
    assert len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "registry-monitor.json").exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["verify", "ledger.jsonl", "--registry-kye", "x"], "No such option: --registry-kye"),
        (["verify"], "Missing argument 'bundle'"),
        (["audit", "--whatch", "5"], "No such option: --whatch"),
        (["sign", "--valid-for", "99999999"], "Invalid value for '--valid-for'"),
    ],
)
def test_what_the_option_parser_refuses_is_one_line_and_exit_1_too(
    tmp_path: Path, args: list[str], said: str
) -> None:
    # A typo in an option is a usage error like any other: never the 2 of a failed check or an
    # alarm, which a script acts on.
    (tmp_path / "ledger.jsonl").write_text("")
    r = run(args, tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"error[invalid_request]: {said}"), r.stderr
    assert r.stderr.rstrip().endswith(f"(see registry {args[0]} --help)")
    assert len(r.stderr.splitlines()) == 1


def test_registry_alone_shows_its_commands(tmp_path: Path) -> None:
    r = run([], tmp_path)
    assert r.returncode == 2 and "verify" in r.stdout + r.stderr


def test_init_encrypts_keys_and_refuses_to_run_twice(tmp_path: Path) -> None:
    secret = "correct horse battery staple"
    r = run(["init"], tmp_path, REGISTRY_KEY_PASSPHRASE=secret)
    assert r.returncode == 0, r.stderr
    assert "checkpoint verifier key: kh.carbon-registry.example/ledger+" in r.stdout
    for name in ("registry-key.pem", "admin-key.pem"):
        pem = (tmp_path / "var" / name).read_bytes()
        assert b"ENCRYPTED PRIVATE KEY" in pem, name
        assert oct((tmp_path / "var" / name).stat().st_mode & 0o777) == "0o600"
        SigningKey.from_pem(pem, secret.encode())
    r = run(["init"], tmp_path, REGISTRY_KEY_PASSPHRASE=secret)
    assert r.returncode == 1 and "already initialised" in r.stderr
    r = run(["demo"], tmp_path, REGISTRY_KEY_PASSPHRASE="wrong but not a placeholder")
    assert r.returncode == 1 and "error[bad_key_file]" in r.stderr


def test_init_refuses_an_administrator_id_no_instruction_could_carry(tmp_path: Path) -> None:
    # Genesis is there for good: an administrator whose id no signed instruction can name as
    # its actor would leave a registry where nobody can ever act.
    r = run(["init", "--insecure-dev-key", "--admin-id", "admin@moe.gov.kh"], tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("error[configuration_error]: the first administrator's id")
    assert not (tmp_path / "var").exists()  # no key, no database
    r = run(["init", "--insecure-dev-key", "--admin-id", "kh-moe-admin"], tmp_path)
    assert r.returncode == 0, r.stderr


def test_serve_without_a_registry_says_why_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    # The writer process is launched before the registry is checked, to import meanwhile: it
    # must go without a word, and its socket with it.
    with tempfile.TemporaryDirectory(prefix="run-") as runtime:  # short enough for a socket
        r = run(["serve", "--port", "1"], tmp_path, XDG_RUNTIME_DIR=runtime,
                REGISTRY_KEY_FILE=str(tmp_path / "missing.pem"))
        assert r.returncode == 1
        assert r.stderr.splitlines() == [
            f"error[configuration_error]: no registry key at {tmp_path / 'missing.pem'}: "
            "run `registry init` first"
        ]
        assert os.listdir(runtime) == []  # no writer socket left behind


def test_serve_and_demo_refuse_a_database_never_initialised(tmp_path: Path) -> None:
    """A key but no registry at REGISTRY_DATABASE_URL (a mistyped path, or `init` run with
    another URL): refused in one line, and no database is made there."""
    assert run(["init", "--insecure-dev-key"], tmp_path).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    url = f"sqlite:///{elsewhere / 'registry.db'}"
    for args in (["serve", "--port", "1"], ["demo"]):
        with tempfile.TemporaryDirectory(prefix="run-") as runtime:
            r = run(args, tmp_path, XDG_RUNTIME_DIR=runtime, REGISTRY_DATABASE_URL=url)
        assert r.returncode == 1, r.stderr
        assert r.stderr.splitlines() == [
            f"error[configuration_error]: no registry database at {elsewhere / 'registry.db'}: "
            "run `registry init` first"
        ], r.stderr
        assert not elsewhere.exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    with tempfile.TemporaryDirectory(prefix="run-") as runtime:
        r = run(["serve", "--port", "1"], tmp_path, XDG_RUNTIME_DIR=runtime,
                REGISTRY_DATABASE_URL=f"sqlite:///{empty}")
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [
        "error[configuration_error]: the registry's ledger is empty: run `registry init` first"
    ], r.stderr
    with closing(sqlite3.connect(empty)) as db:  # nor is a schema written into it
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_serve_refuses_a_ledger_under_another_origin_or_key(
    tmp_path: Path, settings: Settings, registry: Registry
) -> None:
    """A changed REGISTRY_ORIGIN or a key file of another registry: the server would sign what
    no auditor of this ledger accepts, and refuse every instruction signed for it."""
    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(SigningKey.generate().to_pem_unencrypted_unsafe())
    ours = {"REGISTRY_DATABASE_URL": settings.database_url,
            "REGISTRY_KEY_FILE": str(settings.key_file), "REGISTRY_ORIGIN": ORIGIN}
    key_id = registry.signer.public_key.key_id
    for change, message in (
        ({"REGISTRY_ORIGIN": "kh.carbon-registry.example/ledger"},
         f"this ledger's origin is {ORIGIN!r}, not 'kh.carbon-registry.example/ledger': set "
         f"REGISTRY_ORIGIN={ORIGIN}"),
        ({"REGISTRY_KEY_FILE": str(other_key)},
         f"the key at {other_key} is not this ledger's registry key ({key_id}): check "
         "REGISTRY_KEY_FILE"),
    ):
        with tempfile.TemporaryDirectory(prefix="run-") as runtime:
            r = run(["serve", "--port", "1"], tmp_path, XDG_RUNTIME_DIR=runtime,
                    **{**ours, **change})
        assert r.returncode == 1
        assert r.stderr.splitlines() == [f"error[configuration_error]: {message}"]


def test_serve_and_init_refuse_a_database_a_newer_version_upgraded(
    tmp_path: Path, settings: Settings, registry: Registry
) -> None:
    """The software rolled back under a database a newer version migrated: a schema it does not
    know is refused in one line, and the database is left as it is."""
    from sqlalchemy import text

    with registry.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    ours = {"REGISTRY_DATABASE_URL": settings.database_url,
            "REGISTRY_KEY_FILE": str(settings.key_file), "REGISTRY_ORIGIN": ORIGIN}
    for args in (["serve", "--port", "1"], ["init", "--insecure-dev-key"]):
        with tempfile.TemporaryDirectory(prefix="run-") as runtime:
            r = run(args, tmp_path, XDG_RUNTIME_DIR=runtime, **ours)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("error[configuration_error]: the database's schema is at "
                                   "revision 0099, which this version of the registry does not "
                                   "know"), r.stderr
    with registry.engine.begin() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == "0099"


@pytest.mark.parametrize(("version", "said"), [
    ("0099", "the database's schema is at revision 0099, which this version of the registry "
             "does not know"),
    ("0005", "the database's schema is at revision 0005, older than this version's"),
])
def test_export_and_verify_against_refuse_a_schema_of_another_version(
    tmp_path: Path, settings: Settings, registry: Registry, version: str, said: str
) -> None:
    """The commands that only read a database say, in one line, that its schema is of another
    version, instead of an SQL error about a table's shape: newer for both; not yet upgraded
    for `verify --against`, which reads every state table (an export reads only the ledger's
    tables, which no revision has changed)."""
    from sqlalchemy import text

    bundle = tmp_path / "bundle.jsonl"
    ours = {"REGISTRY_DATABASE_URL": settings.database_url,
            "REGISTRY_KEY_FILE": str(settings.key_file), "REGISTRY_ORIGIN": ORIGIN}
    assert run(["export", str(bundle)], tmp_path, **ours).returncode == 0
    with registry.engine.begin() as connection:
        connection.execute(text(f"UPDATE alembic_version SET version_num = '{version}'"))
    exported = run(["export", str(tmp_path / "again.jsonl")], tmp_path, **ours)
    against = run(["verify", str(bundle), "--registry-key",
                   registry.note_verifier.verifier_string(), "--against",
                   settings.database_url], tmp_path)
    refused = (exported, against) if version == "0099" else (against,)
    for r in refused:
        assert r.returncode == 1, r.stderr
        assert len(r.stderr.splitlines()) == 1 and said in r.stderr, r.stderr
    assert (tmp_path / "again.jsonl").exists() == (version != "0099")


def test_a_developer_signs_submits_and_reads_holdings(
    tmp_path: Path, server: LiveServer, world: World
) -> None:
    batch = issue_jcm(world)
    key_file = tmp_path / "kh-water.pem"
    key_file.write_bytes(world.keys["kh-water"].to_pem(b"water utility passphrase"))
    env = {"REGISTRY_URL": server.url, "REGISTRY_PARTY_KEY_PASSPHRASE": "water utility passphrase"}
    body = tmp_path / "transfer.json"
    body.write_text(
        json.dumps(
            {"account": "KH-WATER-1", "batch": batch, "quantity": 25, "to_account": "JP-BUYER-1"}
        )
    )
    sign = ["sign", "credits.transfer", str(body), "--actor", "kh-water", "--key", str(key_file)]
    # Signed for the registry of the default origin: this one, of another origin, refuses it.
    elsewhere = run(sign, tmp_path, **env)
    assert elsewhere.returncode == 0, elsewhere.stderr
    (tmp_path / "elsewhere.json").write_text(elsewhere.stdout)
    refused = run(["submit", "elsewhere.json"], tmp_path, **env)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "error[wrong_registry]: the instruction is for registry "
        f"'kh.carbon-registry.example/ledger'; this is registry {ORIGIN!r}"
    ]
    signed = run([*sign, "--registry", ORIGIN], tmp_path, **env)
    assert signed.returncode == 0, signed.stderr
    (tmp_path / "signed.json").write_text(signed.stdout)
    first = run(["submit", "signed.json", "--idempotency-key", "cli-1"], tmp_path, **env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["result"]["quantity"] == 25
    again = run(["submit", "signed.json", "--idempotency-key", "cli-1"], tmp_path, **env)
    assert json.loads(again.stdout) == json.loads(first.stdout)
    replay = run(["submit", "signed.json", "--idempotency-key", "cli-2"], tmp_path, **env)
    assert replay.returncode == 1 and "error[nonce_reused]" in replay.stderr
    shown = run(
        ["holdings", "KH-WATER-1", "--actor", "kh-water", "--key", str(key_file)], tmp_path, **env
    )
    assert shown.returncode == 0, shown.stderr
    assert "775 active tCO2e" in shown.stdout
    assert f"{batch}-26-800" in shown.stdout
    denied = run(
        ["holdings", "KH-GOV-1", "--actor", "kh-water", "--key", str(key_file)], tmp_path, **env
    )
    assert denied.returncode == 1 and "error[forbidden]" in denied.stderr


@pytest.mark.parametrize("origin", ["", "kh registry", "kh+registry", "kh\tledger", "k" * 256])
def test_sign_refuses_a_registry_no_registry_can_be_in_one_line(
    tmp_path: Path, origin: str
) -> None:
    # Every registry would refuse what it signed (its origin could not be that): said now, not
    # as a signed instruction that fails wherever it is submitted.
    key_file = tmp_path / "party.pem"
    key_file.write_bytes(SigningKey.generate().to_pem_unencrypted_unsafe())
    (tmp_path / "body.json").write_text(json.dumps({"party_id": "kh-water", "key_id": "ab" * 32}))
    sign = ["sign", "party.key_revoke", "body.json", "--actor", "kh-water", "--key", "party.pem"]
    tries = [run([*sign, "--registry", origin], tmp_path)]
    if origin:  # an empty REGISTRY_ORIGIN is as good as unset
        tries.append(run(sign, tmp_path, REGISTRY_ORIGIN=origin))
    for r in tries:
        assert r.returncode == 1, r.stdout
        assert r.stdout == ""
        assert r.stderr.startswith("error[invalid_request]: --registry must be the origin of a "
                                   "registry: 1 to 255 characters without spaces or '+', got ")
        assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("bad", ["{not json", '{"instruction": 1}'])
def test_submit_refuses_what_is_not_a_signed_instruction(tmp_path: Path, bad: str) -> None:
    (tmp_path / "bad.json").write_text(bad)
    r = run(["submit", "bad.json", "--url", "http://127.0.0.1:9"], tmp_path)
    assert r.returncode == 1 and "error[invalid_request]" in r.stderr


def test_a_beneficiary_fetches_and_checks_a_receipt(
    tmp_path: Path, server: LiveServer, world: World
) -> None:
    batch = issue_jcm(world)
    retired = world.submit(
        "kh-water",
        "credits.retire",
        {
            "account": "KH-WATER-1",
            "batch": batch,
            "quantity": 5,
            "beneficiary": "Example Co.",
            "purpose": "ndc",
            "jurisdiction": "KH",
            "reason": "test",
        },
    )
    retirement_id = retired["result"]["retirement_id"]
    verifier = world.http.get("/v1/keys")["data"][0]["note_verifier"]
    r = run(
        ["proof", "retirement", retirement_id, "--url", server.url, "-o", "receipt.json"], tmp_path
    )
    assert r.returncode == 0, r.stderr
    ok = run(["verify-receipt", "receipt.json", "--registry-key", verifier], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert f"OK: retirement {retirement_id} of 5 tCO2e by kh-water" in ok.stdout
    assert f"signed: 5 tCO2e of {batch} from KH-WATER-1, for Example Co. (ndc, KH): test" in (
        ok.stdout
    )
    other = NoteVerifier(name=verifier.split("+")[0], key=SigningKey.generate().public_key)
    bad = run(
        ["verify-receipt", "receipt.json", "--registry-key", other.verifier_string()], tmp_path
    )
    assert bad.returncode == 1 and "error[bad_checkpoint]" in bad.stderr


def test_a_receipt_shows_the_holders_words_without_letting_them_rewrite_the_verdict(
    tmp_path: Path, server: LiveServer, world: World, registry: Registry
) -> None:
    """The beneficiary and reason are the holder's free text: printed as they are, a carriage
    return or a terminal escape in them would overwrite the verdict a reader sees (here, 5
    tCO2e shown as 5000). The registry now refuses such text, but a ledger begun before it did
    may hold some (here, a receipt sealed so by the registry's key, the holder signing such
    words): the reader sees the words, escaped, and the verdict untouched."""
    batch = issue_jcm(world)
    body = {"account": "KH-WATER-1", "batch": batch, "quantity": 5, "beneficiary": "Example Co.",
            "purpose": "ndc", "jurisdiction": "KH", "reason": "test"}
    retired = world.submit("kh-water", "credits.retire", body)
    retirement_id = retired["result"]["retirement_id"]
    verifier = world.http.get("/v1/keys")["data"][0]["note_verifier"]
    r = run(["proof", "retirement", retirement_id, "--url", server.url, "-o", "r.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    fake = "OK: retirement RET-1 of 5000 tCO2e by kh-water"
    signed = sign_instruction(
        world.keys["kh-water"], registry=world.origin, actor="kh-water", type="credits.retire",
        body={**body, "beneficiary": "Example Co.\u202e",
              "reason": f"test\r\x1b[1A\x1b[2K{fake}\n"})
    receipt = _forged(registry, json.loads((tmp_path / "r.json").read_text()),
                      instruction=signed["instruction"], signature=signed["signature"])
    (tmp_path / "r.json").write_text(receipt.model_dump_json())
    ok = run(["verify-receipt", "r.json", "--registry-key", verifier], tmp_path)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"OK: retirement {retirement_id} of 5 tCO2e")
    assert not any(c in ok.stdout for c in "\r\x1b\u202e"), ok.stdout
    assert "Example Co." in lines[1] and fake in lines[1]


def test_a_receipt_written_with_out_is_readable_as_any_file_the_user_writes(
    tmp_path: Path, server: LiveServer, world: World
) -> None:
    """``proof retirement -o`` used to write with the user's umask; through atomic_output's
    mkstemp it became 0600, so a receipt meant to be handed to a beneficiary (a web
    directory, a shared folder) cannot be read by anyone else."""
    batch = issue_jcm(world)
    retired = world.submit(
        "kh-water",
        "credits.retire",
        {"account": "KH-WATER-1", "batch": batch, "quantity": 5, "beneficiary": "Example Co.",
         "purpose": "ndc", "jurisdiction": "KH", "reason": "test"},
    )
    retirement_id = retired["result"]["retirement_id"]
    old = os.umask(0o022)
    try:
        r = run(["proof", "retirement", retirement_id, "--url", server.url, "-o", "r.json"],
                tmp_path)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert oct((tmp_path / "r.json").stat().st_mode & 0o777) == "0o644"


def test_two_inits_at_once_make_one_registry_and_leave_one_set_of_keys(
    db_url: str, tmp_path: Path
) -> None:
    """Two administrators initialising one database at the same moment (from two machines, with
    a key file each): one registry is made, the other init says it is already initialised and
    leaves no key behind, however their steps interleave (both bring the schema up to date,
    both check that there is no ledger yet, then each writes a genesis)."""
    for attempt in range(3 if db_url.startswith("sqlite") else 1):
        url = db_url.replace("registry.db", f"registry-{attempt}.db")
        homes = [tmp_path / f"{attempt}-{side}" for side in "ab"]
        procs = []
        for home in homes:
            home.mkdir()
            procs.append(subprocess.Popen(
                [REGISTRY, "init", "--insecure-dev-key"], cwd=home,
                env=registry_env(REGISTRY_DATABASE_URL=url), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
        results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in procs]
        assert sorted(code for code, _ in results) == [0, 1], results
        for home, (code, err) in zip(homes, results, strict=True):
            made = [(home / "var" / n).exists() for n in ("registry-key.pem", "admin-key.pem")]
            if code == 0:
                assert made == [True, True]
            else:
                assert err.splitlines()[-1].startswith("error[configuration_error]: the "
                                                       "registry at "), err
                assert err.rstrip().endswith("is already initialised"), err
                assert made == [False, False], err


def test_init_prints_the_database_without_its_password(tmp_path: Path) -> None:
    """What init prints ends up in terminals' scrollback and deployment logs: the database it
    names is shown as SQLAlchemy shows URLs, with the password masked."""
    from tests.conftest import POSTGRES_URL

    if not POSTGRES_URL:
        pytest.skip("needs a PostgreSQL URL: set REGISTRY_TEST_POSTGRES_URL")
    from sqlalchemy import make_url

    from registry.store.db import scratch_schema

    with scratch_schema(POSTGRES_URL, prefix="t") as url:
        # Whatever the server's authentication, the URL carries a password, as a real one does.
        with_password = make_url(url).set(password="hunter2-not-for-logs")
        r = run(["init", "--insecure-dev-key"], tmp_path,
                REGISTRY_DATABASE_URL=with_password.render_as_string(hide_password=False))
        assert r.returncode == 0, r.stderr
        assert "hunter2-not-for-logs" not in r.stdout + r.stderr
        assert f"database: {with_password.render_as_string()}" in r.stdout.splitlines()


def test_keygen_encrypts_a_party_key_and_refuses_placeholder_passphrases(tmp_path: Path) -> None:
    """A party key guarded by ``changeme`` looks protected and is not: refused, as it is for
    the registry key, in one line that says what to do, and no key file is left."""
    for placeholder in ("", "changeme", " Password "):
        r = run(["keygen", "me.pem"], tmp_path, REGISTRY_PARTY_KEY_PASSPHRASE=placeholder)
        assert r.returncode == 1, r.stdout
        assert r.stderr.splitlines() == [
            "error[configuration_error]: REGISTRY_PARTY_KEY_PASSPHRASE is empty or a "
            "placeholder; choose a real passphrase (or pass --unencrypted)"
        ], r.stderr
        assert not (tmp_path / "me.pem").exists()
    secret = "correct horse battery staple"
    r = run(["keygen", "me.pem"], tmp_path, REGISTRY_PARTY_KEY_PASSPHRASE=secret)
    assert r.returncode == 0, r.stderr
    pem = (tmp_path / "me.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    assert oct((tmp_path / "me.pem").stat().st_mode & 0o777) == "0o600"
    assert SigningKey.from_pem(pem, secret.encode()).public_key.to_b64() == r.stdout.strip()


def test_a_key_the_disk_cannot_hold_is_not_left_half_written(tmp_path: Path) -> None:
    """A full disk (here: a file size limit) fails the write; no half key is left under the
    name, where it would stop the next try ("already exists") and could never be loaded."""
    import resource
    import signal

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    r = subprocess.run([REGISTRY, "keygen", "me.pem", "--unencrypted"], cwd=tmp_path,
                       env=registry_env(), capture_output=True, text=True, timeout=60,
                       check=False, preexec_fn=small_files)
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error[io_error]"), r.stderr
    assert list(tmp_path.iterdir()) == []
    r = run(["keygen", "me.pem", "--unencrypted"], tmp_path)
    assert r.returncode == 0, r.stderr
    key = SigningKey.from_pem((tmp_path / "me.pem").read_bytes(), None)
    assert key.public_key.to_b64() == r.stdout.strip()
    assert oct((tmp_path / "me.pem").stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["me.pem"]


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    import socket

    assert run(["init", "--insecure-dev-key"], tmp_path).returncode == 0
    with socket.socket() as taken, tempfile.TemporaryDirectory(prefix="run-") as runtime:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run(["serve", "--port", str(port)], tmp_path, XDG_RUNTIME_DIR=runtime)
        assert os.listdir(runtime) == []  # the writer went with it
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"error[configuration_error]: cannot listen on 127.0.0.1:{port}: Address already in use"
    ), r.stderr
    assert "Traceback" not in r.stderr and "INFO" not in r.stderr


def test_serve_probes_the_port_as_uvicorn_will_bind_it() -> None:
    """One worker binds each address on its own, IPv6 apart from IPv4 (asyncio): an IPv4
    server on the port does not stand in the way of ``--host ::``. Several workers share one
    dual-stack socket, which it does."""
    import socket

    from registry.cli import _refuse_a_port_in_use
    from registry.errors import ConfigurationError

    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET6) as v6:
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                v6.bind(("::", port))
        except OSError:
            pytest.skip("no IPv6 socket here")
        _refuse_a_port_in_use("::", port, workers=1)
        with pytest.raises(ConfigurationError, match="Address already in use"):
            _refuse_a_port_in_use("::", port, workers=2)
        with pytest.raises(ConfigurationError, match="Address already in use"):
            _refuse_a_port_in_use("0.0.0.0", port, workers=1)


def test_a_key_is_written_on_a_file_system_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some file systems (FAT, some network and FUSE mounts) refuse a hard link: the key is
    written there all the same, still never over a file already at its name."""
    import errno

    from registry.errors import ConfigurationError
    from registry.service.setup import write_key_file

    def no_link(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    key = SigningKey.generate()
    public = key.public_key.to_b64()
    path = tmp_path / "keys" / "me.pem"
    write_key_file(path, key, passphrase=None)
    assert SigningKey.from_pem(path.read_bytes(), None).public_key.to_b64() == public
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["me.pem"]
    with pytest.raises(ConfigurationError):
        write_key_file(path, SigningKey.generate(), passphrase=None)
    assert SigningKey.from_pem(path.read_bytes(), None).public_key.to_b64() == public
    assert [p.name for p in path.parent.iterdir()] == ["me.pem"]


def test_serve_warns_when_the_registry_key_is_not_encrypted(tmp_path: Path) -> None:
    import socket

    assert run(["init", "--insecure-dev-key"], tmp_path).returncode == 0
    with socket.socket() as taken, tempfile.TemporaryDirectory(prefix="run-") as runtime:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # The port is taken: the server checks its registry, then stops.
        r = run(["serve", "--port", str(taken.getsockname()[1])], tmp_path,
                XDG_RUNTIME_DIR=runtime)
    assert r.returncode != 0
    assert (f"warning: the registry key at {Path('var/registry-key.pem')} is not encrypted"
            in r.stderr), r.stderr
