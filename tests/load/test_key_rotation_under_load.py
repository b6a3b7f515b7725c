"""The registry key is rotated (`registry rotate-key`, the CLI) while clients move credits.

Two ``registry serve`` processes share the database and the key file; client threads transfer
and retire small quantities through both, each request under its own ``Idempotency-Key``. The
rotation waits for the ledger's lock like any write and goes through under that load; from
then on the servers, still on the old key, answer every write 503 ``registry_key_replaced``
and write nothing. Every answer is a 200 or (once the rotation has begun) that 503: never a
500, a reset, another refusal. No entry after the rotation is acknowledged.

Restarted with ``REGISTRY_KEY_FILE`` set to the new key, the servers carry out every refused
request, retried with its own key and body, exactly once (a second retry replays the answer).
Then the books: every acknowledged entry exactly once, signed by the key in force at its seq
(the old key up to the rotation, the new one after), checkpoints signed by the key of their
last entry, supply conserved, no serial in two places, the bookkeeping tables one to one with
the entries, and the export verifies offline pinning the new key and pinning the old one.
"""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from registry.api.paths import INSTRUCTION_PATHS
from registry.client import RegistryClient, new_nonce, sign_instruction
from registry.config import Settings
from registry.errors import LedgerError
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.entry import open_entry
from registry.ledger.keys import PublicKey, SigningKey
from registry.service.context import Registry
from registry.service.setup import open_registry
from tests.conftest import ORIGIN
from tests.load import (
    Ack,
    ack_of,
    check_acknowledged,
    check_checkpoints,
    check_offline,
    check_state,
    check_store,
    check_times,
    error_code,
    read_ledger,
    retirement_or_transfer,
    serving,
)
from tests.test_cli import REGISTRY, registry_env
from tests.test_key_rotation import env_of, verifier, verify
from tests.world import World, build_world, issue_jcm

HOLDERS = {"kh-water": "KH-WATER-1", "kh-gov": "KH-GOV-1", "jp-gov": "JP-GOV-1"}
CLIENTS = ("kh-water", "kh-gov", "jp-gov", "kh-water")
SERVERS = 2
ACKS_BEFORE = 30
"""Acknowledged writes before the rotation is started: the load is under way."""
REFUSED_AFTER = 4
"""Refusals each client collects after the rotation before it stops."""
DEADLINE = 60.0


@dataclass
class Answer:
    client: int
    key: str
    signed: dict[str, Any]
    sent: float
    received: float
    response: httpx.Response


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rotation_started: float | None = None
    rotation_ended: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def acks(self) -> list[Answer]:
        return [a for a in self.answers if a.response.status_code == 200]

    def refused(self) -> list[Answer]:
        return [a for a in self.answers if a.response.status_code == 503]


def movement(rng: random.Random, party: str, batch: str) -> tuple[str, dict[str, Any]]:
    account = HOLDERS[party]
    body: dict[str, Any] = {"account": account, "batch": batch, "quantity": rng.randint(1, 3)}
    return retirement_or_transfer(rng, body, list(HOLDERS.values()), "Rotation test")


def client(index: int, url: str, key: SigningKey, batch: str, load: Load) -> None:
    """Move credits until told to stop, or until it has been refused ``REFUSED_AFTER`` times
    after the rotation ended; never retries (a refused request is retried after the restart)."""
    party = CLIENTS[index]
    rng = random.Random(index)
    refused_after = 0
    http = httpx.Client(base_url=url, timeout=httpx.Timeout(60, connect=10))
    try:
        while not load.stop.is_set() and refused_after < REFUSED_AFTER:
            kind, body = movement(rng, party, batch)
            signed = sign_instruction(key, registry=ORIGIN, actor=party, type=kind, body=body)
            idempotency_key = new_nonce()
            sent = time.monotonic()
            try:
                response = http.post(INSTRUCTION_PATHS[kind], json=signed,
                                     headers={"Idempotency-Key": idempotency_key})
            except httpx.TransportError as e:
                load.problems.append(f"client {index}: {type(e).__name__}: {e}")
                return
            answer = Answer(index, idempotency_key, signed, sent, time.monotonic(), response)
            load.answers.append(answer)
            status, code = response.status_code, error_code(response)
            if status == 503 and code == "registry_key_replaced":
                if load.rotation_started is None or answer.received < load.rotation_started:
                    load.problems.append(f"client {index}: refused before the rotation began: "
                                         f"{response.text[:300]}")
                if load.rotation_ended is not None and sent > load.rotation_ended:
                    refused_after += 1
            elif status == 200:
                if load.rotation_ended is not None and sent > load.rotation_ended:
                    load.problems.append(
                        f"client {index}: a write sent after the rotation ended was carried out "
                        f"by a server on the old key: {response.text[:300]}")
            else:
                load.problems.append(f"client {index}: {status} {response.text[:300]}")
    except Exception as e:  # a failure in a thread must fail the test, not vanish
        load.problems.append(f"client {index} crashed: {e!r}")
    finally:
        http.close()


def rotate_key(settings: Settings, new_file: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`registry rotate-key`, as the operator runs it beside the running servers."""
    return subprocess.run(
        [REGISTRY, "rotate-key", str(new_file), "--insecure-dev-key"], cwd=cwd,
        env=registry_env(**env_of(settings, settings.key_file)), capture_output=True, text=True,
        timeout=DEADLINE, check=False)


def wait_for(condition: Any, within: float, load: Load) -> None:
    deadline = time.monotonic() + within
    while not condition() and not load.problems and time.monotonic() < deadline:
        time.sleep(0.02)


def test_rotate_key_under_load_then_restart_and_retry(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    started = time.monotonic()
    old = registry.signer
    new_file = tmp_path / "keys" / "registry-key-2.pem"
    load = Load()
    with serving(settings, tmp_path, count=SERVERS) as servers:
        world = build_world(servers[0].url, admin_key)
        try:
            batch = issue_jcm(world, "KH004-MR1", 50_000)
            threads = [threading.Thread(
                target=client, args=(i, servers[i % SERVERS].url, world.keys[party], batch, load),
                name=f"mover-{i}", daemon=True) for i, party in enumerate(CLIENTS)]
            for t in threads:
                t.start()
            try:
                wait_for(lambda: len(load.acks()) >= ACKS_BEFORE, 30, load)
                assert len(load.acks()) >= ACKS_BEFORE and not load.problems, (
                    len(load.acks()), load.problems[:10])

                load.rotation_started = time.monotonic()
                rotated = rotate_key(settings, new_file, tmp_path)
                load.rotation_ended = time.monotonic()
                assert rotated.returncode == 0, rotated.stderr
                found = re.match(r"registry key rotated at entry (\d+):", rotated.stdout)
                assert found, rotated.stdout
                rotation_seq = int(found.group(1))

                # The load goes on a little: every client is refused a few times more.
                wait_for(lambda: not any(t.is_alive() for t in threads), 30, load)
            finally:
                load.stop.set()
                for t in threads:
                    t.join(timeout=DEADLINE)
            assert not any(t.is_alive() for t in threads), "clients still running"
            before = load.acks()
            refused = load.refused()
            print(f"\nrotation at entry {rotation_seq}, in "
                  f"{load.rotation_ended - load.rotation_started:.2f} s under load: "
                  f"{len(before)} acknowledged, {len(refused)} refused")
            assert not load.problems, "\n".join(load.problems[:20])
            assert len(before) + len(refused) == len(load.answers)
            assert len(refused) >= REFUSED_AFTER * len(CLIENTS)
            new = SigningKey.from_pem(new_file.read_bytes(), None)
            for answer in refused:
                details = answer.response.json()["error"]["details"]
                assert details == {"server_key": old.public_key.key_id,
                                   "registry_key": new.public_key.key_id}, details
            # Nothing acknowledged lies after the rotation.
            late = [a.response.json()["seq"] for a in before
                    if a.response.json()["seq"] >= rotation_seq]
            assert not late, f"entries {late} acknowledged at or after the rotation {rotation_seq}"

            # Restarted with the new key, the servers carry out each refused request once.
            for server in servers:
                server.stop()
                assert not server.errors_logged(), "\n".join(server.errors_logged()[:20])
                server.settings = settings.model_copy(update={"key_file": new_file})
                server.start()
            acks = [ack_of(a.response, key=a.key, signed=a.signed) for a in before]
            retried: list[Ack] = []
            https = [httpx.Client(base_url=s.url, timeout=60) for s in servers]
            try:
                for i, answer in enumerate(refused):
                    path = INSTRUCTION_PATHS[answer.signed["instruction"]["type"]]
                    headers = {"Idempotency-Key": answer.key}
                    first = https[i % SERVERS].post(path, json=answer.signed, headers=headers)
                    assert first.status_code == 200, first.text
                    assert first.headers.get("Idempotent-Replayed") != "true", first.text
                    again = https[(i + 1) % SERVERS].post(path, json=answer.signed,
                                                           headers=headers)
                    assert again.status_code == 200, again.text
                    assert again.json() == first.json(), (first.text, again.text)
                    assert again.headers.get("Idempotent-Replayed") == "true"
                    retried.append(ack_of(first, key=answer.key, signed=answer.signed))
                    acks.append(retried[-1])
                    acks.append(ack_of(again, key=answer.key, signed=answer.signed))
            finally:
                for http in https:
                    http.close()

            # The rotation lies between what was acknowledged before and after.
            assert max(a.body["seq"] for a in acks[:len(before)]) < rotation_seq
            assert min(a.body["seq"] for a in retried) == rotation_seq + 1

            restarted = open_registry(settings.model_copy(update={"key_file": new_file}))
            on_new = World(http=RegistryClient.connect(servers[0].url), keys=world.keys)
            try:
                check_books(on_new, restarted, acks, old, new, rotation_seq, tmp_path)
            finally:
                on_new.http.http.close()
                restarted.engine.dispose()
            for server in servers:
                assert not server.errors_logged(), "\n".join(server.errors_logged()[:20])
        finally:
            load.stop.set()
            world.http.http.close()

    # An auditor verifies the export pinning the new key, and pinning the old one.
    bundle = tmp_path / "ledger.jsonl"
    r = subprocess.run([REGISTRY, "export", str(bundle)], cwd=tmp_path,
                       env=registry_env(**env_of(settings, new_file)), capture_output=True,
                       text=True, timeout=DEADLINE, check=False)
    assert r.returncode == 0, r.stderr
    for pinned, replaced_at in ((new, None), (old, rotation_seq)):
        code, report = verify(tmp_path, bundle, verifier(pinned),
                              "--against", settings.database_url)
        assert (code, report["failures"]) == (0, []), report["failures"]
        assert report["pinned_key_replaced_at"] == replaced_at
        assert [(k["key_id"], k["valid_from_seq"], k["valid_until_seq"])
                for k in report["registry_keys"]] == [
            (old.public_key.key_id, 0, rotation_seq + 1),
            (new.public_key.key_id, rotation_seq + 1, None)]
    print(f"key rotation under load: {time.monotonic() - started:.1f} s in all")


def check_books(world: World, registry: Registry, acks: list[Ack], old: SigningKey,
                new: SigningKey, rotation_seq: int, workdir: Path) -> None:
    """:func:`tests.load.check_registry`, for a ledger whose key was rotated at
    ``rotation_seq``: each entry and checkpoint is checked against the key in force."""
    def key(k: SigningKey) -> dict[str, PublicKey]:
        return {k.public_key.key_id: PublicKey(raw=k.public_key.raw)}

    ledger = read_ledger(world.http.http, registry, keys={**key(old), **key(new)})
    assert ledger[rotation_seq].entry.kind == "registry.key_rotate"
    for s in ledger:
        # Each entry is signed by the key in force at its seq (the rotation by both).
        signers = [old] if s.seq < rotation_seq else [new] if s.seq > rotation_seq else [old, new]
        for signer in signers:
            open_entry(s.envelope, key(signer))
        for other in [k for k in (old, new) if k not in signers]:
            try:
                open_entry(s.envelope, key(other))
            except LedgerError:
                continue
            raise AssertionError(f"entry {s.seq} is signed by {other.public_key.key_id}, "
                                 "not the key in force")

    def verifier_for(size: int) -> NoteVerifier:
        # A checkpoint is signed by the key that signed its last entry, seq size - 1.
        return NoteVerifier(name=ORIGIN,
                            key=(old if size - 1 < rotation_seq else new).public_key)

    check_acknowledged(ledger, acks)
    check_times(ledger)
    check_checkpoints(world.http.http, ledger, registry, verifier_for)
    check_state(world, ledger)
    check_store(registry, ledger)
    check_offline(registry, workdir)
