"""The `registry` command and the API's reads, as users meet them with bad input.

The rule: bad input is a one-line ``error[<code>]: <message>`` on stderr and a
non-zero exit (HTTP: a 4xx with the usual error body), never a traceback, and changes nothing.
"""

from __future__ import annotations

import json
import resource
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from registry import cli
from registry.client import RegistryClient, new_nonce
from registry.config import Settings
from registry.errors import MAX_MESSAGE, InvalidRequestError
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from registry.service.setup import FirstAdministrator, initialise
from registry.service.submit import prepare
from registry.service.writer_process import _error_as_data, _error_from_data
from registry.store.db import make_engine, migrate
from tests.helpers import LiveServer, loopback_http, start_server, web_page
from tests.test_cli import REGISTRY, registry_env, run
from tests.world import ADMIN, World, build_world, issue_jcm


def assert_one_line_error(r: object) -> None:
    """Exit 1 and exactly one line ``error[...]: ...`` on stderr; no traceback."""
    returncode, stderr = r.returncode, r.stderr  # type: ignore[attr-defined]
    lines = stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    assert "Traceback" not in stderr, f"traceback ending {last!r}"
    assert returncode == 1, (returncode, last)
    assert len(lines) == 1 and lines[0].startswith("error["), (
        f"{len(lines)} lines: {stderr[:300]!r}"
    )


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "me.pem"
    path.write_bytes(SigningKey.generate().to_pem_unencrypted_unsafe())
    return path


@pytest.fixture
def signed_file(tmp_path: Path, key_file: Path) -> Path:
    (tmp_path / "body.json").write_text(json.dumps({"account": "A", "batch": "B", "quantity": 1,
                                                    "to_account": "C"}))
    r = run(["sign", "credits.transfer", "body.json", "--actor", "me", "--key", str(key_file)],
            tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "signed.json").write_text(r.stdout)
    return tmp_path / "signed.json"


# --- files that are not there, or not what they should be -----------------------------------


def test_sign_with_a_key_file_that_is_not_there(tmp_path: Path) -> None:
    (tmp_path / "body.json").write_text("{}")
    r = run(["sign", "credits.transfer", "body.json", "--actor", "me", "--key", "nokey.pem"],
            tmp_path)
    assert_one_line_error(r)


def test_sign_with_a_body_file_that_is_not_there(tmp_path: Path, key_file: Path) -> None:
    r = run(["sign", "credits.transfer", "nobody.json", "--actor", "me", "--key", str(key_file)],
            tmp_path)
    assert_one_line_error(r)


def test_sign_with_an_out_of_range_validity(tmp_path: Path, key_file: Path) -> None:
    (tmp_path / "body.json").write_text("{}")
    r = run(["sign", "credits.transfer", "body.json", "--actor", "me", "--key", str(key_file),
             "--valid-for", "100000000000000"], tmp_path)
    assert "Traceback" not in r.stderr, r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0


@pytest.mark.parametrize(("body", "where"), [
    ({"account": "A", "batch": "B", "quantity": 0, "to_account": "C"}, "quantity"),
    ({"account": "A", "batch": "B", "quantity": "5", "to_account": "C"}, "quantity"),
    ({"account": "A", "batch": "B", "quantity": 1, "to_acount": "C"}, "to_account"),
    ([1, 2], "$.instruction.body"),
])
def test_sign_refuses_a_body_the_registry_would_refuse(
    tmp_path: Path, key_file: Path, body: object, where: str
) -> None:
    # Said where it can be mended, and nothing signed: not a 422 from the registry afterwards.
    (tmp_path / "body.json").write_text(json.dumps(body))
    r = run(["sign", "credits.transfer", "body.json", "--actor", "me", "--key", str(key_file)],
            tmp_path)
    assert_one_line_error(r)
    assert r.stderr.startswith("error[invalid_request]: $.instruction.body") and where in r.stderr
    assert r.stdout == ""


def test_verify_receipt_of_a_file_that_is_not_there(tmp_path: Path) -> None:
    key = NoteVerifier(name="x.example/ledger", key=SigningKey.generate().public_key)
    r = run(["verify-receipt", "receipt.json", "--registry-key", key.verifier_string()], tmp_path)
    assert_one_line_error(r)


def test_verify_receipt_of_json_that_is_not_a_receipt_says_so_in_one_line(tmp_path: Path) -> None:
    key = NoteVerifier(name="x.example/ledger", key=SigningKey.generate().public_key)
    (tmp_path / "receipt.json").write_text("{}")
    r = run(["verify-receipt", "receipt.json", "--registry-key", key.verifier_string()], tmp_path)
    assert_one_line_error(r)


def test_audit_with_a_damaged_state_file(tmp_path: Path) -> None:
    # The state file is the monitor's own (a crash or a full disk mid-write, an editor): what
    # is wrong with it is said in one line, not as a JSONDecodeError traceback.
    key = NoteVerifier(name="x.example/ledger", key=SigningKey.generate().public_key)
    (tmp_path / "registry-monitor.json").write_text("{\"size\": 3, ")
    r = run(["audit", "--url", f"http://127.0.0.1:{closed_port()}",
             "--registry-key", key.verifier_string()], tmp_path)
    assert_one_line_error(r)


# --- the registry's own database and setup ----------------------------------------------------


def test_export_where_no_registry_was_initialised(tmp_path: Path) -> None:
    # An auditor running export in the wrong directory (or with REGISTRY_DATABASE_URL unset).
    r = run(["export", "ledger.jsonl"], tmp_path)
    assert_one_line_error(r)
    assert not (tmp_path / "var").exists()  # no empty database left behind


def test_init_with_an_unusable_admin_public_key_writes_nothing(tmp_path: Path) -> None:
    r = run(["init", "--insecure-dev-key", "--admin-public-key", "garbage"], tmp_path)
    assert_one_line_error(r)
    assert not (tmp_path / "var").exists()  # as with an unusable --admin-id


def test_demo_with_an_admin_key_file_that_is_not_there(tmp_path: Path) -> None:
    assert run(["init", "--insecure-dev-key"], tmp_path).returncode == 0
    r = run(["demo", "--admin-key", "missing.pem"], tmp_path)
    assert_one_line_error(r)


def test_serve_with_a_port_out_of_range(tmp_path: Path) -> None:
    assert run(["init", "--insecure-dev-key"], tmp_path).returncode == 0
    with tempfile.TemporaryDirectory(prefix="run-") as runtime:
        r = run(["serve", "--port", "99999"], tmp_path, XDG_RUNTIME_DIR=runtime)
    assert "Traceback" not in r.stderr, r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0


# --- a registry that is down, or something else answering --------------------------------------


@pytest.mark.parametrize("command", ["submit", "holdings", "proof"])
def test_commands_against_a_registry_that_is_down(
    tmp_path: Path, key_file: Path, signed_file: Path, command: str
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    args = {
        "submit": ["submit", str(signed_file), "--url", url],
        "holdings": ["holdings", "KH-WATER-1", "--actor", "me", "--key", str(key_file),
                     "--url", url],
        "proof": ["proof", "retirement", "RET-1", "--url", url],
    }[command]
    assert_one_line_error(run(args, tmp_path))


@pytest.fixture
def not_a_registry() -> Iterator[str]:
    """A web server on loopback that answers everything with a 502 HTML page (a proxy)."""
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"
    with loopback_http(web_page(502, page)) as url:
        yield url


def test_submit_when_the_answer_is_not_the_registrys_json(
    tmp_path: Path, signed_file: Path, not_a_registry: str
) -> None:
    r = run(["submit", str(signed_file), "--url", not_a_registry], tmp_path)
    assert_one_line_error(r)


# --- reads that show less than the registry holds ------------------------------------------------


@pytest.fixture
def real_clock_world(
    settings: Settings, admin_key: SigningKey
) -> Iterator[tuple[str, World, Registry]]:
    """The test world on a registry with the real clock: the CLI signs its reads with it."""
    reg = initialise(settings, admin=FirstAdministrator(party_id=ADMIN,
                     public_key=admin_key.public_key), insecure_dev_key=True)
    with start_server(reg) as live:
        world = build_world(live.url, admin_key)
        yield live.url, world, reg
        world.http.http.close()
    reg.engine.dispose()


def test_holdings_lists_every_block_of_an_account(
    tmp_path: Path, real_clock_world: tuple[str, World, Registry]
) -> None:
    url, world, reg = real_clock_world
    batch = issue_jcm(world, quantity=1300)  # KH-WATER-1 holds serials 1-1040
    transfers = [  # every other serial leaves: 505 blocks remain
        prepare(reg, world.as_("kh-water").sign("credits.transfer", {
            "account": "KH-WATER-1", "batch": batch, "range": {"start": serial, "end": serial},
            "to_account": "JP-BUYER-1"}), expected_type="credits.transfer",
            idempotency_key=new_nonce())
        for serial in range(1, 1011, 2)
    ]
    for first in range(0, len(transfers), 64):
        answers = reg.writes.run_together(transfers[first:first + 64])
        assert all(not isinstance(a, Exception) for a in answers), answers
    holdings = world.holdings("KH-WATER-1")
    assert holdings["total_active"] == 1040 - 505
    assert holdings["blocks"]["count"] == 505
    key_file = tmp_path / "kh-water.pem"
    key_file.write_bytes(world.keys["kh-water"].to_pem_unencrypted_unsafe())
    r = run(["holdings", "KH-WATER-1", "--actor", "kh-water", "--key", str(key_file),
             "--url", url], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "535 active tCO2e" in r.stdout
    listed = [line for line in r.stdout.splitlines() if line.startswith("  ")]
    # The blocks listed are every block the account holds, and add up to the total above them.
    assert (len(listed), sum(int(line.split()[1]) for line in listed)) == (505, 535)

    # The registry moves between two pages (the buyer sends serial 1 back: a block that sorts
    # first): the pages would disagree, so the listing starts again and is of one ledger size.
    client = RegistryClient.connect(url, actor="kh-water", key=world.keys["kh-water"])
    reads: list[int] = []
    read = client.get

    def get_moving_once(path: str, **kw: Any) -> Any:
        answer = read(path, **kw)
        reads.append(answer["blocks"]["tree_size"])
        if len(reads) == 1:
            world.submit("jp-buyer", "credits.transfer", {
                "account": "JP-BUYER-1", "batch": batch, "range": {"start": 1, "end": 1},
                "to_account": "KH-WATER-1"})
        return answer

    client.get = get_moving_once  # type: ignore[method-assign]
    data, blocks = cli._all_holdings(client, "KH-WATER-1")
    starts = [b["block"] for b in blocks]
    assert len(starts) == len(set(starts)) == data["blocks"]["count"] == 506
    assert reads[0] < reads[-1] and len(reads) == 4  # two pages, then two pages again


def test_an_account_is_read_by_its_id(world: World) -> None:
    # README: the public lists, /v1/accounts among them, have "their /{id} forms".
    listed = world.http.get("/v1/accounts", params={"limit": 500})["data"]
    water = next(a for a in listed if a["id"] == "KH-WATER-1")
    response = world.read("/v1/accounts/KH-WATER-1")
    assert response.status_code == 200, response.text
    assert response.json() == water


def test_proof_retirement_written_into_a_directory_that_is_not_there_makes_it(
    tmp_path: Path, server: LiveServer, world: World
) -> None:
    """As ``export`` does; and never a half receipt under the name, whatever happens."""
    batch = issue_jcm(world)
    retired = world.submit("kh-water", "credits.retire", {
        "account": "KH-WATER-1", "batch": batch, "quantity": 5, "beneficiary": "Example Co.",
        "purpose": "ndc", "jurisdiction": "KH", "reason": "test"})
    r = run(["proof", "retirement", retired["result"]["retirement_id"], "--url", server.url,
             "-o", "receipts/receipt.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    receipt = json.loads((tmp_path / "receipts" / "receipt.json").read_text())
    assert receipt["retirement_id"] == retired["result"]["retirement_id"]
    assert [p.name for p in (tmp_path / "receipts").iterdir()] == ["receipt.json"]


@pytest.fixture
def html_ok_server() -> Iterator[str]:
    """A web server answering everything 200 with an HTML page (a captive portal, or a web
    UI on the port --url names by mistake)."""
    with loopback_http(web_page(200, b"<html><body>Welcome</body></html>\n")) as url:
        yield url


@pytest.mark.parametrize("command", ["submit", "holdings"])
def test_cli_against_a_web_server_answering_200_html_is_a_one_line_error(
    tmp_path: Path, html_ok_server: str, command: str
) -> None:
    key = tmp_path / "me.pem"
    key.write_bytes(SigningKey.generate().to_pem_unencrypted_unsafe())
    (tmp_path / "body.json").write_text(json.dumps(
        {"account": "A", "batch": "B", "quantity": 1, "to_account": "C"}))
    r = run(["sign", "credits.transfer", "body.json", "--actor", "me", "--key", str(key)],
            tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "signed.json").write_text(r.stdout)
    args = {
        "submit": ["submit", "signed.json", "--url", html_ok_server],
        "holdings": ["holdings", "KH-WATER-1", "--actor", "me", "--key", str(key),
                     "--url", html_ok_server],
    }[command]
    assert_one_line_error(run(args, tmp_path))


def test_init_can_be_run_again_after_a_genesis_that_failed(tmp_path: Path) -> None:
    # Without --admin-public-key, init writes a new administrator key before genesis: a genesis
    # that fails takes it with it, as it does the registry key, or the retry is refused ("var/
    # admin-key.pem already exists; not replacing a key").
    engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'registry.db'}")
    migrate(engine)
    with engine.begin() as c:  # a row of the administrator's id: genesis cannot insert it
        c.execute(text("INSERT INTO party (id, name, role, created_seq) "
                       "VALUES ('kh-registry-admin', 'leftover', 'participant', 0)"))
    r = run(["init", "--insecure-dev-key"], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == "error[database_error]: UNIQUE constraint failed: party.id"
    assert not (tmp_path / "var" / "registry-key.pem").exists()
    assert not (tmp_path / "var" / "admin-key.pem").exists()
    with engine.begin() as c:
        c.execute(text("DELETE FROM party"))
    engine.dispose()
    r = run(["init", "--insecure-dev-key"], tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kib", [60, 230])
def test_init_on_a_full_disk_says_so_and_can_be_run_again(tmp_path: Path, kib: int) -> None:
    """The disk fills while init migrates (a file-size limit of 60 KiB) or writes its genesis
    (230 KiB): one line naming the disk, with no word of a request or its key, and init run
    again once there is room makes the registry."""
    limit = kib * 1024

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(
            resource.RLIMIT_FSIZE)[1]))

    r = subprocess.run([REGISTRY, "init", "--insecure-dev-key"], cwd=tmp_path,
                       env=registry_env(), capture_output=True, text=True, timeout=60,
                       check=False, preexec_fn=small_disk)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    # One error line (beside init's warning of the unencrypted key): the line a server's
    # operator is logged about the failed write is not shown too.
    lines = r.stderr.splitlines()
    last = lines[-1]
    assert [line for line in lines if not line.startswith("warning:")] == [last], r.stderr
    assert last.startswith("error[storage_failed]: the database could not write "), last
    assert "its disk is full, failing or read-only" in last and "Idempotency-Key" not in last, last
    r = run(["init", "--insecure-dev-key"], tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_cut_error_message_crosses_the_writer_pipe_unchanged() -> None:
    """An error message is cut once, to at most MAX_MESSAGE with a note of its length; the
    API process rebuilding it from the writer's pipe must not cut it again."""
    error = InvalidRequestError("x" * (MAX_MESSAGE + 3000))
    assert len(error.message) <= MAX_MESSAGE and "5000 characters in all" in error.message
    back = _error_from_data(_error_as_data(error))
    assert isinstance(back, InvalidRequestError) and back.message == error.message


@pytest.mark.parametrize("command", ["audit", "proof", "submit"])
def test_a_url_that_is_not_a_url_is_a_one_line_error(
    tmp_path: Path, signed_file: Path, command: str
) -> None:
    # A typo in --url (an IPv6 address without its closing bracket) is a usage error.
    key = NoteVerifier(name="x.example/ledger", key=SigningKey.generate().public_key)
    url = "http://[::1:8000"
    args = {
        "audit": ["audit", "--url", url, "--registry-key", key.verifier_string()],
        "proof": ["proof", "retirement", "RET-1", "--url", url],
        "submit": ["submit", str(signed_file), "--url", url],
    }[command]
    assert_one_line_error(run(args, tmp_path))


def test_audit_watch_with_a_negative_interval_is_a_one_line_error(tmp_path: Path) -> None:
    key = NoteVerifier(name="x.example/ledger", key=SigningKey.generate().public_key)
    r = run(["audit", "--url", f"http://127.0.0.1:{closed_port()}", "--registry-key",
             key.verifier_string(), "--watch", "-1", "--rounds", "2"], tmp_path)
    assert "Traceback" not in r.stderr, r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0


def test_verify_against_a_database_that_is_not_there(tmp_path: Path) -> None:
    # --against reads a database "read only": a mistyped SQLite path is a one-line error,
    # and leaves no empty database (nor its directory) behind.
    r = run(["init", "--insecure-dev-key"], tmp_path)
    assert r.returncode == 0, r.stderr
    key = next(line.split(": ", 1)[1] for line in r.stdout.splitlines()
               if line.startswith("checkpoint verifier key: "))
    assert run(["export", "ledger.jsonl"], tmp_path).returncode == 0
    r = run(["verify", "ledger.jsonl", "--registry-key", key, "--workers", "1",
             "--against", "sqlite:///typo/registry.db"], tmp_path)
    assert_one_line_error(r)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://registry:hunter2-not-for-logs/registry",  # the host left out
        "postgres://registry:hunter2-not-for-logs@db.example/registry",  # another spelling
    ],
)
@pytest.mark.parametrize("command", ["init", "serve", "export", "verify"])
def test_a_database_url_mistyped_is_one_line_that_never_shows_its_password(
    tmp_path: Path, url: str, command: str
) -> None:
    if command == "verify":
        r = run(["init", "--insecure-dev-key"], tmp_path)
        assert r.returncode == 0, r.stderr
        key_line = next(line for line in r.stdout.splitlines()
                        if line.startswith("checkpoint verifier key: "))
        assert run(["export", "ledger.jsonl"], tmp_path).returncode == 0
        r = run(["verify", "ledger.jsonl", "--workers", "1", "--registry-key",
                 key_line.split(": ", 1)[1], "--against", url], tmp_path)
    else:
        args = {"init": ["init", "--insecure-dev-key"], "serve": ["serve", "--port", "1"],
                "export": ["export", "out.jsonl"]}[command]
        with tempfile.TemporaryDirectory(prefix="run-") as runtime:
            r = run(args, tmp_path, XDG_RUNTIME_DIR=runtime, REGISTRY_DATABASE_URL=url)
    assert "hunter2-not-for-logs" not in r.stdout + r.stderr
    assert_one_line_error(r)
    assert r.stderr.startswith("error[configuration_error]: "), r.stderr


@pytest.mark.parametrize("content", ["[" * 200_000, '{"version": ' + "1" * 5000 + "}"],
                         ids=["nested", "long integer"])
def test_verify_receipt_of_json_python_cannot_read_is_one_line(
    tmp_path: Path, content: str
) -> None:
    """A receipt comes from someone else: JSON nested past the parser, or an integer longer
    than Python converts, is a file that is not usable JSON, said in one line."""
    key = NoteVerifier(name="x.example/ledger", key=SigningKey.generate().public_key)
    (tmp_path / "receipt.json").write_text(content)
    r = run(["verify-receipt", "receipt.json", "--registry-key", key.verifier_string()], tmp_path)
    assert_one_line_error(r)
    assert "receipt.json is not JSON" in r.stderr


def _answering(status: int, body: bytes) -> type[Any]:
    from http.server import BaseHTTPRequestHandler

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Answer


@pytest.mark.parametrize(("status", "body"), [
    (404, b'{"error": "no such retirement"}'),
    (404, b'{"error": {"message": "no code"}}'),
    (404, b'{"error": {"code": 7, "message": []}}'),
    (200, b"[" * 200_000),
], ids=["error a string", "error without code", "error of the wrong types", "nested"])
def test_proof_retirement_from_a_server_answering_json_of_another_shape_is_one_line(
    tmp_path: Path, status: int, body: bytes
) -> None:
    """Something on the port answers JSON, but not the registry's: one line, no traceback."""
    with loopback_http(_answering(status, body)) as url:
        r = run(["proof", "retirement", "RET-1", "--url", url], tmp_path)
    assert_one_line_error(r)
    assert "is not the registry's answer" in r.stderr


def test_init_refuses_a_passphrase_with_an_insecure_dev_key(tmp_path: Path) -> None:
    """A passphrase and --insecure-dev-key together: the keys would be written in the clear,
    the passphrase ignored, and the registry would not open under the same settings."""
    r = run(["init", "--insecure-dev-key"], tmp_path,
            REGISTRY_KEY_PASSPHRASE="correct horse battery staple")
    assert_one_line_error(r)
    assert "REGISTRY_KEY_PASSPHRASE" in r.stderr and "correct horse" not in r.stderr
    assert not (tmp_path / "var").exists() or not any((tmp_path / "var").glob("*.pem"))
    # With the passphrase alone, the registry is created and opens under the same settings.
    env = {"REGISTRY_KEY_PASSPHRASE": "correct horse battery staple"}
    assert run(["init"], tmp_path, **env).returncode == 0
    r = run(["demo"], tmp_path, **env)
    assert r.returncode == 0, r.stderr


def test_keygen_refuses_a_passphrase_with_unencrypted(tmp_path: Path) -> None:
    """Else the key is written in the clear, and `registry sign` under the same settings
    cannot read it (a passphrase for a plain key)."""
    r = run(["keygen", "me.pem", "--unencrypted"], tmp_path,
            REGISTRY_PARTY_KEY_PASSPHRASE="correct horse battery staple")
    assert_one_line_error(r)
    assert "REGISTRY_PARTY_KEY_PASSPHRASE" in r.stderr and "correct horse" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def _as_of_0007(db: Path) -> None:
    """Put a registry's schema back to 0007, as a registry of that version left it."""
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '0007'")
        for column in ("retired", "cancelled"):
            connection.execute(f"ALTER TABLE batch DROP COLUMN {column}")


def _schema_of(db: Path) -> tuple[str, list[str]]:
    with closing(sqlite3.connect(db)) as connection:
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        columns = [r[1] for r in connection.execute("PRAGMA table_info(batch)")]
    return version, columns


@pytest.mark.parametrize("command", [["init", "--insecure-dev-key"], ["demo"]])
def test_init_and_demo_leave_a_registry_in_use_at_its_schema(
    tmp_path: Path, command: list[str]
) -> None:
    """`registry init` or `demo` run by mistake on a registry of an earlier version, which its
    servers still write to, refuse it and do not upgrade its schema under them (after 0008 an
    older server's retirements would leave the batch totals wrong for good)."""
    assert run(["init", "--insecure-dev-key"], tmp_path).returncode == 0
    assert run(["demo"], tmp_path).returncode == 0
    db = tmp_path / "var" / "registry.db"
    _as_of_0007(db)
    before = _schema_of(db)
    if command[0] == "init":  # as on another machine, with its own key file
        r = run(command, tmp_path, REGISTRY_KEY_FILE=str(tmp_path / "other-key.pem"))
    else:
        r = run(command, tmp_path)
    assert_one_line_error(r)
    assert _schema_of(db) == before
    assert not (tmp_path / "other-key.pem").exists()


def test_serve_on_an_unreadable_database_url_does_not_send_to_init(tmp_path: Path) -> None:
    """A URL that cannot be parsed is a setting to mend: `registry init` would not help."""
    assert run(["init", "--insecure-dev-key"], tmp_path).returncode == 0
    r = run(["serve", "--port", str(closed_port())], tmp_path,
            REGISTRY_DATABASE_URL="postgresql+psycopg://user:s3cret/db")
    assert_one_line_error(r)
    assert "cannot be parsed" in r.stderr and "s3cret" not in r.stderr
    assert "registry init" not in r.stderr


# --- a retry of `registry submit`, and what a server that is not the registry says ---------------


def test_submitting_the_same_signed_instruction_again_answers_what_was_done(
    tmp_path: Path, server: LiveServer, world: World
) -> None:
    """After a timeout, or a 503/504 whose outcome is unknown, the user runs the same
    `registry submit` again: it must learn what the registry did, and nothing moves twice."""
    from tests.conftest import ORIGIN

    batch = issue_jcm(world)
    key = tmp_path / "kh-water.pem"
    key.write_bytes(world.keys["kh-water"].to_pem_unencrypted_unsafe())
    (tmp_path / "body.json").write_text(json.dumps(
        {"account": "KH-WATER-1", "batch": batch, "quantity": 25, "to_account": "JP-BUYER-1"}))
    signed = run(["sign", "credits.transfer", "body.json", "--actor", "kh-water", "--key",
                  str(key), "--registry", ORIGIN], tmp_path)
    assert signed.returncode == 0, signed.stderr
    (tmp_path / "signed.json").write_text(signed.stdout)
    first = run(["submit", "signed.json", "--url", server.url], tmp_path)
    assert first.returncode == 0, first.stderr
    again = run(["submit", "signed.json", "--url", server.url], tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert world.holdings("KH-WATER-1")["total_active"] == 800 - 25

def _a_server_answering(status: int, body: bytes) -> type[Any]:
    """The registry's /v1/keys, and ``body`` with ``status`` to every other GET and POST."""
    from http.server import BaseHTTPRequestHandler

    class Answer(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            keys = self.path.startswith("/v1/keys")
            data = json.dumps({"origin": "x.example/ledger"}).encode() if keys else body
            self.send_response(200 if keys else status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    return Answer


@pytest.mark.parametrize("body", [
    b"{}", b"[]", b'"text"',
    b'{"account": {}, "total_active": 0, "blocks": {"data": [], "next": null}}',
    b'{"account": {"id": "A", "kind": "holding", "holder": "me"}, "total_active": 0,'
    b' "blocks": {"data": [7], "next": null}}',
], ids=["empty", "a list", "a string", "no account id", "a block that is a number"])
def test_holdings_from_a_server_answering_json_of_another_shape_is_one_line(
    tmp_path: Path, key_file: Path, body: bytes
) -> None:
    with loopback_http(_a_server_answering(200, body)) as url:
        r = run(["holdings", "A", "--actor", "me", "--key", str(key_file), "--url", url],
                tmp_path)
    assert_one_line_error(r)
    assert "is not the registry's answer" in r.stderr

def test_what_a_server_says_is_shown_with_its_line_breaks_escaped(
    tmp_path: Path, key_file: Path, signed_file: Path
) -> None:
    """A server's error, or a holding it lists, cannot print a line of its own (a forged
    verdict) or a terminal escape: it is one line, its invisible characters escaped."""
    error = {"error": {"code": "conflict\r\x1b[2K", "message": "no\nOK: done \x1b[32m\u202e"}}
    with loopback_http(_a_server_answering(409, json.dumps(error).encode())) as url:
        for args in (["submit", str(signed_file)],
                     ["holdings", "A", "--actor", "me", "--key", str(key_file)]):
            r = run([*args, "--url", url], tmp_path)
            assert_one_line_error(r)
            assert "\x1b" not in r.stderr and "\r" not in r.stderr and "\u202e" not in r.stderr
            assert "no\\nOK: done" in r.stderr
    holding = {"account": {"id": "A", "kind": "holding", "holder": "me\nOK: forged"},
               "total_active": 1, "blocks": {"data": [
                   {"block": "B-1-1\x1b[8m", "quantity": 1, "status": "active"}], "next": None}}
    with loopback_http(_a_server_answering(200, json.dumps(holding).encode())) as url:
        r = run(["holdings", "A", "--actor", "me", "--key", str(key_file), "--url", url],
                tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2 and "\x1b" not in r.stdout, r.stdout


def test_submit_whose_answer_never_comes_says_the_outcome_is_not_known(
    tmp_path: Path, signed_file: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The request reached the registry, which may have carried it out: not "cannot reach"."""
    import functools
    import threading
    from http.server import BaseHTTPRequestHandler

    release = threading.Event()

    class Silent(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            release.wait(10)

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setattr(RegistryClient, "connect", functools.partial(
        RegistryClient.connect.__func__, RegistryClient, timeout=0.5))  # type: ignore[attr-defined]
    with loopback_http(Silent) as url:
        monkeypatch.setattr("sys.argv", ["registry", "submit", str(signed_file), "--url", url])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        release.set()
    err = capsys.readouterr().err
    assert exited.value.code == 1 and len(err.splitlines()) == 1, err
    assert "cannot reach" not in err and "again" in err, err
