"""`registry audit --url`: a monitor that remembers what it saw and alarms on a rewrite."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from registry.config import Settings
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from registry.service.setup import FirstAdministrator, initialise
from registry.store.db import write_transaction
from tests.conftest import ORIGIN
from tests.factories import append_notes, drop_append_only_triggers
from tests.helpers import LiveServer, loopback_http, start_server

REGISTRY = str(Path(sys.executable).with_name("registry"))


def audit(
    at: LiveServer | str, pinned: Registry | NoteVerifier, state: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``registry audit`` of the registry at ``at``, pinned to ``pinned``'s key."""
    key = pinned if isinstance(pinned, NoteVerifier) else pinned.note_verifier
    return subprocess.run(
        [
            REGISTRY,
            "audit",
            "--url",
            at if isinstance(at, str) else at.url,
            "--state",
            str(state),
            "--registry-key",
            key.verifier_string(),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def stand_in_key() -> NoteVerifier:
    """A key to pin where a stand-in answers instead of a registry: no database plays a part."""
    return NoteVerifier(name=ORIGIN, key=SigningKey.generate().public_key)


def _cut_history(registry: Registry, keep: int) -> None:
    """The registry operator throws away every entry from ``keep`` on (bypassing triggers)."""
    drop_append_only_triggers(registry)
    with write_transaction(registry.engine) as s:
        s.execute(text("DELETE FROM ledger_entry WHERE seq >= :k"), {"k": keep})
        s.execute(
            text("DELETE FROM tree_node WHERE ((idx + 1) * power(2, level)) > :k")
            if registry.engine.dialect.name == "postgresql"
            else text("DELETE FROM tree_node WHERE ((idx + 1) << level) > :k"),
            {"k": keep},
        )
        s.execute(text("DELETE FROM checkpoint WHERE size > :k"), {"k": keep})


def test_monitor_follows_an_honest_registry(
    registry: Registry, server: LiveServer, tmp_path: Path
) -> None:
    state = tmp_path / "monitor.json"
    append_notes(registry, 4)
    first = audit(server, registry, state)
    assert first.returncode == 0, first.stderr
    assert "ok: 5 entries, 5 new since 0" in first.stdout
    append_notes(registry, 7)
    second = audit(server, registry, state)
    assert second.returncode == 0, second.stderr
    assert "ok: 12 entries, 7 new since 5" in second.stdout


@pytest.mark.parametrize("attack", ["rewrite", "rollback"])
def test_monitor_alarms_when_history_changes(
    registry: Registry, server: LiveServer, tmp_path: Path, attack: str
) -> None:
    state = tmp_path / "monitor.json"
    append_notes(registry, 9)
    assert audit(server, registry, state).returncode == 0
    before = state.read_text()
    _cut_history(registry, keep=6)
    if attack == "rewrite":
        append_notes(registry, 8)  # a different history, longer than the one seen
    r = audit(server, registry, state)
    assert r.returncode == 2
    assert ("REWRITE" if attack == "rewrite" else "ROLLBACK") in r.stderr
    assert state.read_text() == before, "an alarm never moves the monitor's memory"


@contextmanager
def _proxy(target: str, consistency: dict[str, str]) -> Iterator[str]:
    """A loopback front for the registry at ``target`` that answers consistency proofs as
    ``consistency["mode"]`` says: ``pass`` (the registry's own), ``500``, ``404`` or
    ``garbage``."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            mode = consistency["mode"]
            if self.path.startswith("/v1/proofs/consistency") and mode != "pass":
                status, body = {"500": (500, b'{"error": {}}'), "404": (404, b'{"error": {}}'),
                                "garbage": (200, b'{"proof": ["not base64!"]}')}[mode]
            else:
                answer = httpx.get(target + self.path)
                status, body = answer.status_code, answer.content
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_http(Handler) as url:
        yield url


def test_a_registry_that_cannot_answer_is_not_checked_and_one_that_will_not_prove_is_an_alarm(
    registry: Registry, server: LiveServer, tmp_path: Path
) -> None:
    state = tmp_path / "monitor.json"
    consistency = {"mode": "pass"}
    with _proxy(server.url, consistency) as url:
        append_notes(registry, 3)
        assert audit(url, registry, state).returncode == 0
        before = state.read_text()
        append_notes(registry, 2)
        consistency["mode"] = "500"  # down for a moment: no alarm, no memory moved
        r = audit(url, registry, state)
        assert (r.returncode, r.stdout) == (1, "")
        assert r.stderr.splitlines() == [
            "error[registry_unavailable]: the registry answered 500 to /v1/proofs/consistency"
        ]
        assert state.read_text() == before
        # Watching, such a round is passed over; but the last word is that nothing was checked.
        r = audit(url, registry, state, "--watch", "0.01", "--rounds", "2")
        assert r.returncode == 1 and r.stderr.count("the registry answered 500") == 2
        assert r.stderr.startswith("not checked: the registry answered 500")
        for mode in ("404", "garbage"):  # up, and not proving its new checkpoint consistent
            consistency["mode"] = mode
            r = audit(url, registry, state)
            assert r.returncode == 2 and "ALARM: REWRITE: checkpoint 6 is not proved" in r.stderr
            assert "Traceback" not in r.stderr and state.read_text() == before
        consistency["mode"] = "pass"
        assert audit(url, registry, state).returncode == 0
    r = audit(url, registry, state)  # nobody listens there now
    assert r.returncode == 1 and r.stderr.startswith("error[registry_unavailable]: cannot reach")


@pytest.mark.parametrize(
    "damage",
    [
        {"size": "6"},  # a string where a number belongs
        {"root": 5},
        {"frontier": ["x"]},  # not base64
        {"root": ""},  # the root lost (an editor, a truncated write of an older version)
        {"frontier": ["A" * 43 + "=", "A" * 43 + "="]},  # a frontier that is not the root's
    ],
)
def test_a_damaged_state_file_is_the_monitors_own_error_not_a_traceback_or_an_alarm(
    registry: Registry, server: LiveServer, tmp_path: Path, damage: dict[str, Any]
) -> None:
    """The state file is the monitor's own: when it is damaged, the monitor says so in one
    line (exit 1), instead of a traceback, or an ALARM that blames an honest registry."""
    state = tmp_path / "monitor.json"
    append_notes(registry, 5)
    assert audit(server, registry, state).returncode == 0
    state.write_text(json.dumps({**json.loads(state.read_text()), **damage}))
    append_notes(registry, 3)
    r = audit(server, registry, state)
    assert "Traceback" not in r.stderr, r.stderr.strip().splitlines()[-1]
    assert "ALARM" not in r.stderr, r.stderr
    assert r.returncode == 1 and r.stderr.startswith("error["), r.stderr


def test_saving_the_state_leaves_the_files_beside_it_alone(
    registry: Registry, server: LiveServer, tmp_path: Path
) -> None:
    """The state is written through a temporary file of its own: ``--state audit.json`` must
    not overwrite (then rename away) a file ``audit.tmp`` the user keeps beside it, nor two
    overlapping runs (cron and a slow round) share one temporary name."""
    state = tmp_path / "audit.json"
    mine = tmp_path / "audit.tmp"
    mine.write_text("the user's own notes\n")
    append_notes(registry, 2)
    r = audit(server, registry, state)
    assert r.returncode == 0, r.stderr
    assert mine.exists() and mine.read_text() == "the user's own notes\n"


@pytest.mark.parametrize("notes", [4, 5])  # an odd and an even tree size
def test_a_state_file_whose_last_leaf_is_damaged_is_not_an_alarm(
    registry: Registry, server: LiveServer, tmp_path: Path, notes: int
) -> None:
    """``last_leaf`` is the one field ``_check`` cannot tie to the others: a flipped hex digit
    (still 64 hex digits) passes it, and the next round blames the registry for a broken
    chain. The README promises a damaged state file is never an alarm against the registry."""
    state = tmp_path / "monitor.json"
    append_notes(registry, notes)
    assert audit(server, registry, state).returncode == 0
    saved = json.loads(state.read_text())
    flipped = ("1" if saved["last_leaf"][0] == "0" else "0") + saved["last_leaf"][1:]
    state.write_text(json.dumps({**saved, "last_leaf": flipped}))
    append_notes(registry, 3)
    r = audit(server, registry, state)
    assert "ALARM" not in r.stderr, r.stderr
    assert r.returncode == 1 and r.stderr.startswith("error["), r.stderr


def test_a_state_file_kept_for_another_registry_is_the_monitors_error_not_a_rollback(
    registry: Registry, server: LiveServer, tmp_path: Path
) -> None:
    """A state file mixed up with another registry's (same origin, its own key, a longer
    history) is whole and self-consistent; compared with it, the honest registry would be
    blamed for a rollback or a fork. Its checkpoint is not signed by the pinned key: exit 1."""
    other = initialise(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'other.db'}",
            origin=registry.origin,
            key_file=tmp_path / "other" / "registry-key.pem",
        ),
        admin=FirstAdministrator(party_id="other-admin", public_key=registry.signer.public_key),
        insecure_dev_key=True,
    )
    append_notes(other, 6)
    append_notes(registry, 2)
    state = tmp_path / "monitor.json"
    with start_server(other) as live:
        assert audit(live, other, state).returncode == 0
    before = state.read_text()
    r = audit(server, registry, state)
    assert "ALARM" not in r.stderr, r.stderr
    assert r.returncode == 1 and r.stderr.startswith("error["), r.stderr
    assert "not signed by the pinned key" in r.stderr and state.read_text() == before
    other.engine.dispose()


def _serving(answer: Any) -> type[BaseHTTPRequestHandler]:
    """A handler that leaves every GET to ``answer(handler)``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            with suppress(OSError):  # the monitor hung up
                answer(self)

    return Handler


@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_registry_that_trickles_its_answer_cannot_hold_the_monitor_for_ever(
    stand_in_key: NoteVerifier, tmp_path: Path, part: str
) -> None:
    """A byte every quarter second keeps each read inside the client's timeout: only a limit on
    the whole answer ends the round (not checked, exit 1), and --watch then goes on. Headers
    trickled so, before the answer has even begun, used to hold the monitor as long as the
    registry went on."""

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        if part == "body":
            handler.send_response(200)
            handler.send_header("Content-Length", "100000")
            handler.end_headers()
        else:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(100_000):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.25)

    state = tmp_path / "monitor.json"
    with loopback_http(_serving(trickle)) as url:
        started = time.monotonic()
        r = audit(url, stand_in_key, state, "--timeout", "1", "--watch", "0.01", "--rounds", "2")
        assert time.monotonic() - started < 20
    assert r.returncode == 1 and "ALARM" not in r.stderr, r.stderr
    assert r.stderr.count("took more than 1 s to answer /v1/checkpoint") == 2, r.stderr
    assert not state.exists()


def test_a_web_page_in_between_is_no_alarm(
    stand_in_key: NoteVerifier, tmp_path: Path
) -> None:
    """A captive portal or a proxy answering 200 with its own page: the registry was not
    reached, which is a round not checked, never an alarm against it."""

    def portal(handler: BaseHTTPRequestHandler) -> None:
        page = b"<html><body>Sign in to the hotel Wi-Fi</body></html>"
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html; charset=utf-8")
        handler.send_header("Content-Length", str(len(page)))
        handler.end_headers()
        handler.wfile.write(page)

    with loopback_http(_serving(portal)) as url:
        r = audit(url, stand_in_key, tmp_path / "monitor.json")
    assert r.returncode == 1 and "ALARM" not in r.stderr, r.stderr
    assert "a web page answered /v1/checkpoint, not the registry" in r.stderr, r.stderr


def test_a_huge_answer_is_not_read_whole(
    stand_in_key: NoteVerifier, tmp_path: Path
) -> None:
    """An answer far larger than any the registry gives is not kept in memory to the end."""

    def flood(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(100 << 20))
        handler.end_headers()
        for _ in range(100):
            handler.wfile.write(b"x" * (1 << 20))

    with loopback_http(_serving(flood)) as url:
        r = audit(url, stand_in_key, tmp_path / "monitor.json")
    assert r.returncode == 1 and "ALARM" not in r.stderr, r.stderr
    assert "answer to /v1/checkpoint holds more than 67108864 bytes" in r.stderr, r.stderr


def test_pages_of_entries_too_large_to_hold_are_asked_for_again_smaller(
    registry: Registry, server: LiveServer, tmp_path: Path
) -> None:
    """Large entries (a forest unit's boundary may be megabytes) make a long page too large:
    the monitor asks for shorter pages, and checks every entry all the same."""

    def padded(handler: BaseHTTPRequestHandler) -> None:
        answer = httpx.get(server.url + handler.path)
        body = answer.content
        if handler.path.startswith("/v1/entries") and "limit=1&" not in handler.path + "&":
            body = body[:-1] + b" " * (70 << 20) + b"}"  # still the same JSON
        handler.send_response(answer.status_code)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    append_notes(registry, 4)
    with loopback_http(_serving(padded)) as url:
        r = audit(url, registry, tmp_path / "monitor.json")
    assert r.returncode == 0, r.stderr
    assert "ok: 5 entries, 5 new since 0" in r.stdout


@pytest.mark.parametrize("forgery", ["fork", "chain"])
def test_an_alarm_says_what_the_registry_served(
    registry: Registry, server: LiveServer, tmp_path: Path, forgery: str
) -> None:
    """The registry's own key signs a second root for a size the monitor saw (a fork), or
    the registry serves an entry twice: the alarm names the two roots, or the entry served
    and the one that belongs, so the auditor can say what was seen."""
    state = tmp_path / "monitor.json"
    append_notes(registry, 3)
    assert audit(server, registry, state).returncode == 0
    seen = json.loads(state.read_text())
    append_notes(registry, 3)
    forged_root = bytes(range(32))
    verifier = registry.note_verifier

    def forge(handler: BaseHTTPRequestHandler) -> None:
        body = httpx.get(server.url + handler.path).content
        if forgery == "fork" and handler.path == "/v1/checkpoint":
            cp = Checkpoint(origin=verifier.name, size=seen["size"], root=forged_root)
            body = sign_checkpoint(cp, name=verifier.name, key=registry.signer).encode()
        elif forgery == "chain" and handler.path.startswith("/v1/entries"):
            page = json.loads(body)
            page["data"].insert(1, page["data"][0])  # entry 4 twice
            body = json.dumps(page).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with loopback_http(_serving(forge)) as url:
        r = audit(url, registry, state)
    assert r.returncode == 2, r.stderr
    if forgery == "fork":
        old_root = base64.b64decode(seen["root"]).hex()
        assert f"FORK: two different roots signed for size 4: {old_root} before, " in r.stderr
        assert f"{forged_root.hex()} now" in r.stderr
    else:
        fifth = httpx.get(server.url + "/v1/entries/4").json()
        leaf = base64.b64decode(fifth["leaf_hash"]).hex()
        assert f"entry 5: broken chain: served as seq 4 after leaf {seen['last_leaf']}" in r.stderr
        assert f"where seq 5 after leaf {leaf} belongs" in r.stderr


@pytest.mark.parametrize("where", ["/v1/proofs/consistency", "/v1/entries"])
def test_json_nested_past_the_parser_is_an_alarm_not_a_traceback(
    registry: Registry, server: LiveServer, tmp_path: Path, where: str
) -> None:
    """A registry answering 200 with JSON nested deeper than the parser goes (a few hundred
    kilobytes of '[') served something that proves nothing: an alarm (exit 2), as any other
    answer that is not JSON, never a RecursionError traceback that exits 1 like a round not
    checked, nor one that ends a --watch."""
    state = tmp_path / "monitor.json"
    append_notes(registry, 2)
    assert audit(server, registry, state).returncode == 0
    before = state.read_text()
    append_notes(registry, 2)

    def nested(handler: BaseHTTPRequestHandler) -> None:
        body = httpx.get(server.url + handler.path).content
        if handler.path.startswith(where):
            body = b"[" * 200_000
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with loopback_http(_serving(nested)) as url:
        r = audit(url, registry, state, "--watch", "0.01", "--rounds", "2")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "ALARM:" in r.stderr and "not JSON" in r.stderr
    assert state.read_text() == before


def test_a_state_file_nested_past_the_parser_is_the_monitors_own_error(
    stand_in_key: NoteVerifier, tmp_path: Path
) -> None:
    state = tmp_path / "monitor.json"
    state.write_text("[" * 200_000)
    r = audit(f"http://127.0.0.1:{_closed_port()}", stand_in_key, state)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-300:]
    assert f"the monitor's state file {state} is damaged" in r.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_monitor_follows_the_registry_key_from_one_key_to_the_next(
    registry: Registry, server: LiveServer, tmp_path: Path
) -> None:
    from registry.ledger.keys import SigningKey
    from registry.service.key_rotation import rotate_registry_key

    watched = tmp_path / "monitor.json"
    append_notes(registry, 3)
    assert audit(server, registry, watched).returncode == 0
    rotated = rotate_registry_key(registry, new_key_file=tmp_path / "new.pem", passphrase=None)
    new = SigningKey.from_pem((tmp_path / "new.pem").read_bytes(), None)
    successor = Registry(engine=registry.engine, signer=new, origin=registry.origin)
    append_notes(successor, 4)

    # A monitor that saw the old key follows the rotation the old key signed, and keeps to the
    # new key after it.
    followed = audit(server, registry, watched)
    assert followed.returncode == 0, followed.stderr
    assert (
        f"the registry rotated its key at entry {rotated.seq}: {new.public_key.key_id} signs "
        f"from entry {rotated.seq + 1} on"
    ) in followed.stdout
    assert f"ok: {rotated.seq + 5} entries, 5 new since {rotated.seq}" in followed.stdout
    assert json.loads(watched.read_text())["registry_keys"] == [
        registry.signer.public_key.to_b64(), new.public_key.to_b64()]
    append_notes(successor, 2)
    again = audit(server, registry, watched)
    assert again.returncode == 0 and "rotated" not in again.stdout, again.stderr

    # A first round follows the keys from genesis, pinned to either key.
    for pinned in (registry, successor):
        fresh = audit(server, pinned, tmp_path / f"fresh-{pinned.signer.public_key.key_id}.json")
        assert fresh.returncode == 0, fresh.stderr
        assert f"ok: {rotated.seq + 7} entries" in fresh.stdout

    # Entries past the rotation signed by the replaced key (which may have leaked) are an
    # alarm, however well they chain.
    before = watched.read_text()
    _forge_with_old_key(registry, count=2)
    alarm = audit(server, registry, watched)
    assert alarm.returncode == 2, alarm.stdout
    assert alarm.stderr.startswith(f"ALARM: entry {rotated.seq + 7}: "), alarm.stderr
    assert "no signature by a trusted key" in alarm.stderr
    assert watched.read_text() == before, "an alarm never moves the monitor's memory"
    # So is a first round: the pinned new key did not sign them.
    fresh = audit(server, successor, tmp_path / "after-forgery.json")
    assert fresh.returncode == 2 and f"entry {rotated.seq + 7}" in fresh.stderr, fresh.stderr


def _forge_with_old_key(registry: Registry, count: int) -> None:
    """Append ``count`` entries signed by ``registry``'s (replaced) key behind the ledger's
    back, as a holder of the old key with access to the database could."""
    from registry.service.ledger import LedgerTail

    for i in range(count):
        with write_transaction(registry.engine) as session:
            tail = LedgerTail.read(session)
            tail.registry_key = None  # the guard a forger goes around
            tail.append(session, registry, kind="test.note", actor="registry", payload={"n": i})
            tail.publish(session, registry)


def test_monitor_re_pinned_to_the_new_key_resumes_from_a_state_kept_before_the_rotation(
    registry: Registry, server: LiveServer, tmp_path: Path
) -> None:
    """The registry rotated; its operator publishes the new key and every tool says to pin the
    key the registry publishes now. A monitor whose memory predates the rotation, re-pinned to
    the new key, must follow the rotation from where it stopped (the old key's checkpoint in its
    memory is what the new key's rotation vouches for), not disown its own state file."""
    from registry.ledger.keys import SigningKey
    from registry.service.key_rotation import rotate_registry_key

    watched = tmp_path / "monitor.json"
    append_notes(registry, 3)
    assert audit(server, registry, watched).returncode == 0
    rotate_registry_key(registry, new_key_file=tmp_path / "new.pem", passphrase=None)
    new = SigningKey.from_pem((tmp_path / "new.pem").read_bytes(), None)
    successor = Registry(engine=registry.engine, signer=new, origin=registry.origin)
    append_notes(successor, 2)
    followed = audit(server, successor, watched)
    assert followed.returncode == 0, followed.stderr


@pytest.mark.parametrize("attack", ["rollback", "fork"])
def test_a_re_pinned_monitor_alarms_on_a_rollback_or_fork_the_old_key_signed(
    registry: Registry, server: LiveServer, tmp_path: Path, attack: str
) -> None:
    """The registry rotated; its operator says to pin the new key, and the monitor, whose
    memory predates the rotation, is re-pinned. The registry then serves a checkpoint signed
    by the very key the monitor's own memory is signed by, of fewer entries (a backup from
    before the rotation put back) or of another root at the same size (the replaced key, which
    may have leaked, signing a fork): that key signed two histories that cannot both be. The
    state file was kept for this registry (the served checkpoint is signed by its key): an
    alarm, exit 2, not the monitor's own error, which its operator would answer by throwing
    away the state that proves it."""
    from registry.ledger.keys import SigningKey
    from registry.service.key_rotation import rotate_registry_key

    watched = tmp_path / "monitor.json"
    append_notes(registry, 5)
    assert audit(server, registry, watched).returncode == 0  # 6 entries, under the old key
    rotate_registry_key(registry, new_key_file=tmp_path / "new.pem", passphrase=None)
    new = SigningKey.from_pem((tmp_path / "new.pem").read_bytes(), None)
    successor = Registry(engine=registry.engine, signer=new, origin=registry.origin)
    append_notes(successor, 2)
    before = watched.read_text()
    _cut_history(registry, keep=4)
    if attack == "fork":
        _forge_with_old_key(registry, count=2)  # 6 entries again, another root
    r = audit(server, successor, watched)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"ALARM: {attack.upper()}"), r.stderr
    assert watched.read_text() == before
