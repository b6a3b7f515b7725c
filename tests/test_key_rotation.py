"""Rotating the registry's own key, as an operator and an auditor meet it (SQLite and PostgreSQL).

The operator runs `registry rotate-key` beside a running server; that server then refuses every
write until it is restarted with the new key file, a server started with the old key is refused,
and one started with the new key carries on. An auditor verifies the exported ledger pinning any
key of its history, and is refused with a key that is not one of them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from registry.client import RegistryClient
from registry.config import Settings
from registry.errors import CheckpointError, ConfigurationError
from registry.ledger.checkpoint import NoteVerifier, open_checkpoint
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from registry.service.setup import open_registry
from registry.store import ledger_repo
from registry.store.db import read_session
from tests.conftest import ORIGIN
from tests.helpers import LiveServer, StepClock, start_server
from tests.test_cli import run
from tests.world import World, issue_jcm

FOREIGN = SigningKey.from_seed(b"F" * 32)


def env_of(settings: Settings, key_file: Path) -> dict[str, str]:
    return {"REGISTRY_DATABASE_URL": settings.database_url, "REGISTRY_KEY_FILE": str(key_file),
            "REGISTRY_ORIGIN": ORIGIN}


def verifier(key: SigningKey) -> str:
    return NoteVerifier(name=ORIGIN, key=key.public_key).verifier_string()


def transfer(quantity: int) -> dict[str, Any]:
    return {"account": "KH-WATER-1", "batch": "KH-JCM-KH004-2024-00001", "quantity": quantity,
            "to_account": "JP-BUYER-1"}


def rotate(tmp_path: Path, settings: Settings, key_file: Path, new_file: Path) -> SigningKey:
    """Run `registry rotate-key` with ``key_file`` as the current key; the new key."""
    r = run(["rotate-key", str(new_file), "--insecure-dev-key"], tmp_path,
            **env_of(settings, key_file))
    assert r.returncode == 0, r.stderr
    return SigningKey.from_pem(new_file.read_bytes(), None)


def verify(tmp_path: Path, bundle: Path, key: str, *extra: str) -> tuple[int, dict[str, Any]]:
    r = run(["verify", str(bundle), "--registry-key", key, "--workers", "1", "--json", *extra],
            tmp_path)
    assert r.returncode in (0, 2), r.stderr
    return r.returncode, json.loads(r.stdout)


def keys_listed(url: str) -> list[tuple[str, str, int, int | None]]:
    client = RegistryClient.connect(url)
    try:
        listed = client.get("/v1/keys")
    finally:
        client.http.close()
    assert listed["origin"] == ORIGIN and listed["count"] == len(listed["data"])
    return [(k["key_id"], k["note_verifier"], k["valid_from_seq"], k["valid_until_seq"])
            for k in listed["data"]]


def on(url: str, world: World) -> World:
    """The same parties, talking to the server at ``url``."""
    return World(http=RegistryClient.connect(url), keys=world.keys)


def test_a_rotation_beside_a_running_server_then_a_restart_and_an_audit(
    tmp_path: Path, settings: Settings, registry: Registry, server: LiveServer, world: World
) -> None:
    assert issue_jcm(world) == "KH-JCM-KH004-2024-00001"
    assert world.submit("kh-water", "credits.transfer", transfer(100))["result"]["quantity"] == 100
    old = registry.signer
    rotation_seq = world.tree_size()
    new_file = tmp_path / "keys" / "registry-key-2.pem"

    r = run(["rotate-key", str(new_file), "--insecure-dev-key"], tmp_path,
            **env_of(settings, settings.key_file))
    assert r.returncode == 0, r.stderr
    new = SigningKey.from_pem(new_file.read_bytes(), None)
    assert oct(new_file.stat().st_mode & 0o777) == "0o600"
    assert r.stdout.splitlines() == [
        f"registry key rotated at entry {rotation_seq}: {old.public_key.key_id} signs no more "
        f"entries; {new.public_key.key_id} signs from entry {rotation_seq + 1} on",
        f"new registry key written to {new_file}",
        f"checkpoint verifier key: {verifier(new)}",
        f"next: set REGISTRY_KEY_FILE={new_file} and restart every server of this registry",
    ]
    assert world.tree_size() == rotation_seq + 1

    # The server still on the old key writes nothing, and says why.
    error = world.refuse("kh-water", "credits.transfer", transfer(5), status=503,
                         code="registry_key_replaced")
    assert error["details"] == {"server_key": old.public_key.key_id,
                                "registry_key": new.public_key.key_id}
    assert "Restart it with the current key (REGISTRY_KEY_FILE)" in error["message"]
    assert world.tree_size() == rotation_seq + 1
    # It still answers reads.
    assert world.active("KH-WATER-1") == 700 and world.active("JP-BUYER-1") == 100
    assert keys_listed(server.url) == [
        (old.public_key.key_id, verifier(old), 0, rotation_seq + 1),
        (new.public_key.key_id, verifier(new), rotation_seq + 1, None),
    ]

    # A server started with the old key file is refused, in one line naming the key in force.
    refusal = (f"the key at {settings.key_file} was this ledger's registry key until entry "
               f"{rotation_seq} rotated it to {new.public_key.key_id}: set REGISTRY_KEY_FILE "
               "to the key `registry rotate-key` wrote")
    with tempfile.TemporaryDirectory(prefix="run-") as runtime:
        r = run(["serve", "--port", "1"], tmp_path, XDG_RUNTIME_DIR=runtime,
                **env_of(settings, settings.key_file))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"error[configuration_error]: {refusal}"]
    with pytest.raises(ConfigurationError) as refused:
        open_registry(settings)
    assert refused.value.message == refusal

    # Started with the new key file, it writes again, signing with the new key.
    restarted = open_registry(settings.model_copy(update={"key_file": new_file}),
                              clock=StepClock())
    try:
        with start_server(restarted) as live:
            again = on(live.url, world)
            moved = again.submit("kh-water", "credits.transfer", transfer(25))
            assert moved["seq"] == rotation_seq + 1 and moved["result"]["quantity"] == 25
            assert again.active("JP-BUYER-1") == 125
            assert keys_listed(live.url) == keys_listed(server.url)
            note = again.checkpoint()
            signed = open_checkpoint(note, origin=ORIGIN, verifiers=[
                NoteVerifier(name=ORIGIN, key=new.public_key)])
            assert signed.size == rotation_seq + 2
            with pytest.raises(CheckpointError):
                open_checkpoint(note, origin=ORIGIN,
                                verifiers=[NoteVerifier(name=ORIGIN, key=old.public_key)])
            again.http.http.close()
    finally:
        restarted.engine.dispose()

    # An auditor verifies the export pinning either key, and against the database.
    bundle = tmp_path / "ledger.jsonl"
    r = run(["export", str(bundle)], tmp_path, **env_of(settings, new_file))
    assert r.returncode == 0, r.stderr
    history = [
        {"key_id": old.public_key.key_id, "valid_from_seq": 0,
         "valid_until_seq": rotation_seq + 1},
        {"key_id": new.public_key.key_id, "valid_from_seq": rotation_seq + 1,
         "valid_until_seq": None},
    ]
    header = json.loads(bundle.read_text().splitlines()[0])
    assert [{k: line[k] for k in ("key_id", "valid_from_seq", "valid_until_seq")}
            for line in header["registry_keys"]] == history
    for pinned in (old, new):
        code, report = verify(tmp_path, bundle, verifier(pinned),
                              "--against", settings.database_url)
        assert (code, report["failures"]) == (0, []), report["failures"]
        assert report["entries"] == rotation_seq + 2
        assert [{k: line[k] for k in ("key_id", "valid_from_seq", "valid_until_seq")}
                for line in report["registry_keys"]] == history
        # Pinned to the replaced key, it passes, and says the key was replaced.
        assert report["pinned_key_replaced_at"] == (rotation_seq if pinned is old else None)
    code, report = verify(tmp_path, bundle, verifier(FOREIGN))
    assert code == 2
    assert [(f["seq"], f["code"]) for f in report["failures"]] == [(0, "unknown_key")]
    assert report["failures"][0]["message"] == (
        f"the pinned key {FOREIGN.public_key.key_id} is not a registry key of this ledger "
        f"(its keys: {old.public_key.key_id}, {new.public_key.key_id})"
    )


def test_a_second_rotation_gives_a_history_of_three_keys_that_verifies(
    tmp_path: Path, settings: Settings, registry: Registry, server: LiveServer, world: World
) -> None:
    issue_jcm(world)
    first = registry.signer
    second = rotate(tmp_path, settings, settings.key_file, tmp_path / "second.pem")
    first_rotation = world.tree_size() - 1
    reg2 = open_registry(settings.model_copy(update={"key_file": tmp_path / "second.pem"}),
                         clock=StepClock())
    try:
        with start_server(reg2) as live:
            w2 = on(live.url, world)
            w2.submit("kh-water", "credits.transfer", transfer(10))
            third = rotate(tmp_path, settings, tmp_path / "second.pem", tmp_path / "third.pem")
            second_rotation = w2.tree_size() - 1
            assert second_rotation == first_rotation + 2
            # The server on the second key is now the one replaced.
            w2.refuse("kh-water", "credits.transfer", transfer(1), status=503,
                      code="registry_key_replaced")
            w2.http.http.close()
    finally:
        reg2.engine.dispose()
    # The first key can no longer rotate: it is refused before anything is written.
    r = run(["rotate-key", str(tmp_path / "fourth.pem"), "--insecure-dev-key"], tmp_path,
            **env_of(settings, settings.key_file))
    assert r.returncode == 1 and r.stderr.startswith("error[configuration_error]: "), r.stderr
    assert not (tmp_path / "fourth.pem").exists()
    reg3 = open_registry(settings.model_copy(update={"key_file": tmp_path / "third.pem"}),
                         clock=StepClock())
    try:
        with start_server(reg3) as live:
            w3 = on(live.url, world)
            assert w3.submit("kh-water", "credits.transfer", transfer(20))["seq"] == (
                second_rotation + 1)
            assert keys_listed(live.url) == [
                (first.public_key.key_id, verifier(first), 0, first_rotation + 1),
                (second.public_key.key_id, verifier(second), first_rotation + 1,
                 second_rotation + 1),
                (third.public_key.key_id, verifier(third), second_rotation + 1, None),
            ]
            w3.http.http.close()
    finally:
        reg3.engine.dispose()
    bundle = tmp_path / "ledger.jsonl"
    r = run(["export", str(bundle)], tmp_path, **env_of(settings, tmp_path / "third.pem"))
    assert r.returncode == 0, r.stderr
    for pinned in (first, second, third):
        code, report = verify(tmp_path, bundle, verifier(pinned),
                              "--against", settings.database_url)
        assert (code, report["failures"]) == (0, []), report["failures"]
        assert [k["key_id"] for k in report["registry_keys"]] == [
            first.public_key.key_id, second.public_key.key_id, third.public_key.key_id]
    r = run(["verify", str(bundle), "--registry-key", verifier(third), "--workers", "1"],
            tmp_path)
    assert r.returncode == 0, r.stdout
    assert f"{second.public_key.key_id} signs entries {first_rotation + 1}..{second_rotation}" \
        in r.stdout
    assert "note " not in r.stdout
    r = run(["verify", str(bundle), "--registry-key", verifier(second), "--workers", "1"],
            tmp_path)
    assert r.returncode == 0, r.stdout
    assert (f"note        the pinned key was replaced at entry {second_rotation}: pin the "
            "registry's current key") in r.stdout
    code, report = verify(tmp_path, bundle, verifier(FOREIGN))
    assert code == 2 and [(f["seq"], f["code"]) for f in report["failures"]] == [
        (0, "unknown_key")]



# --- refusals: nothing written, no key file left behind ------------------------------------


def ledger_size(registry: Registry) -> int:
    with read_session(registry.engine) as session:
        return ledger_repo.tree_size(session)


def test_rotate_key_onto_an_existing_file_leaves_it_and_the_ledger_as_they_were(
    tmp_path: Path, settings: Settings, registry: Registry
) -> None:
    size = ledger_size(registry)
    there = tmp_path / "there.pem"
    there.write_bytes(b"someone's key\n")
    r = run(["rotate-key", str(there), "--insecure-dev-key"], tmp_path,
            **env_of(settings, settings.key_file))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error[configuration_error]: {there} already exists; not replacing a key"]
    assert there.read_bytes() == b"someone's key\n"
    assert ledger_size(registry) == size
    # Nor a symbolic link, even one to nowhere: writing through it would put the key elsewhere.
    link = tmp_path / "link.pem"
    link.symlink_to(tmp_path / "nowhere.pem")
    r = run(["rotate-key", str(link), "--insecure-dev-key"], tmp_path,
            **env_of(settings, settings.key_file))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error[configuration_error]: {link} already exists; not replacing a key"]
    assert not (tmp_path / "nowhere.pem").exists()
    assert ledger_size(registry) == size


def test_rotate_key_without_a_passphrase_or_with_both_writes_nothing(
    tmp_path: Path, settings: Settings, registry: Registry
) -> None:
    size = ledger_size(registry)
    new_file = tmp_path / "new.pem"
    r = run(["rotate-key", str(new_file)], tmp_path, **env_of(settings, settings.key_file))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error[configuration_error]: set REGISTRY_KEY_PASSPHRASE to encrypt the new registry "
        "key (or pass --insecure-dev-key for a local, throw-away registry)"]
    r = run(["rotate-key", str(new_file), "--insecure-dev-key"], tmp_path,
            REGISTRY_KEY_PASSPHRASE="a passphrase nobody guesses",
            **env_of(settings, settings.key_file))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error[configuration_error]: REGISTRY_KEY_PASSPHRASE is set, but --insecure-dev-key "
        "writes the new key unencrypted: unset one of them"]
    assert not new_file.exists()
    assert [p.name for p in settings.key_file.parent.iterdir()] == [settings.key_file.name]
    assert ledger_size(registry) == size


def test_rotate_key_with_the_key_it_replaced_is_refused_and_leaves_no_key(
    tmp_path: Path, settings: Settings, registry: Registry
) -> None:
    new = rotate(tmp_path, settings, settings.key_file, tmp_path / "new.pem")
    size = ledger_size(registry)
    again = tmp_path / "again.pem"
    r = run(["rotate-key", str(again), "--insecure-dev-key"], tmp_path,
            **env_of(settings, settings.key_file))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error[configuration_error]: the key at {settings.key_file} was this ledger's "
        f"registry key until entry {size - 1} rotated it to {new.public_key.key_id}: set "
        "REGISTRY_KEY_FILE to the key `registry rotate-key` wrote"]
    assert not again.exists()
    assert ledger_size(registry) == size


def test_rotate_key_encrypts_the_new_key_with_the_registrys_passphrase(tmp_path: Path) -> None:
    secret = "correct horse battery staple"
    assert run(["init"], tmp_path, REGISTRY_KEY_PASSPHRASE=secret).returncode == 0
    new_file = tmp_path / "var" / "registry-key-2.pem"
    r = run(["rotate-key", str(new_file)], tmp_path, REGISTRY_KEY_PASSPHRASE=secret)
    assert r.returncode == 0, r.stderr
    pem = new_file.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    new = SigningKey.from_pem(pem, secret.encode())
    new_verifier = NoteVerifier(name="kh.carbon-registry.example/ledger", key=new.public_key)
    assert f"checkpoint verifier key: {new_verifier.verifier_string()}" in r.stdout.splitlines()
    assert run(["export", "ledger.jsonl"], tmp_path).returncode == 0
    r = run(["verify", "ledger.jsonl", "--workers", "1", "--registry-key",
             new_verifier.verifier_string()], tmp_path)
    assert r.returncode == 0, r.stdout


def test_an_interrupt_as_the_rotation_commits_keeps_the_new_key(
    tmp_path: Path, registry: Registry
) -> None:
    """Ctrl-C (or any interrupt) that lands once the database has committed the rotation must
    not delete the new key: the ledger then names it as the only key that may sign, and with it
    gone nobody can ever write to the registry again."""
    from sqlalchemy import event
    from sqlmodel import Session

    from registry.service.key_rotation import rotate_registry_key

    def interrupted(session: Session) -> None:
        raise KeyboardInterrupt

    new_file = tmp_path / "new.pem"
    event.listen(Session, "after_commit", interrupted, once=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            rotate_registry_key(registry, new_key_file=new_file, passphrase=None)
    finally:
        if event.contains(Session, "after_commit", interrupted):
            event.remove(Session, "after_commit", interrupted)
    with read_session(registry.engine) as session:
        current = [k.key_id for k in ledger_repo.registry_keys(session)
                   if k.valid_until_seq is None]
    assert current != [registry.signer.public_key.key_id], "the rotation committed"
    assert new_file.exists(), f"the ledger's only signing key {current} was deleted"
