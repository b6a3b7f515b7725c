"""A ledger whose registry key was rotated, tampered with by whoever still holds the old key.

The old key leaked, or its holder was not trusted to keep signing: after the rotation it must be
worth nothing. Every case edits a copy of one SQLite-built bundle (the checks are the same for
any engine) holding a rotation with entries on either side of it, re-signing what it changes
with the old key as such an attacker would, and the auditor finds it at the entry it concerns.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.client import RegistryClient
from registry.config import Settings
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from registry.ledger.entry import Entry, seal_entry
from registry.ledger.keys import SigningKey
from registry.ledger.merkle import CompactRange, leaf_hash
from registry.ledger.registry_keys import ROTATION_KIND, rotation_payload
from registry.ledger.verify_bundle import verify_bundle
from registry.service.export import export_bundle
from registry.service.key_rotation import rotate_registry_key
from registry.service.setup import FirstAdministrator, initialise, open_registry
from tests.audit.bundles import RawBundle
from tests.conftest import ADMIN, ORIGIN
from tests.helpers import StepClock, start_server
from tests.world import World, build_world, issue_jcm

ATTACKER = SigningKey.from_seed(b"X" * 32)


@dataclass
class Rotated:
    """An exported ledger with one rotation, at ``seq``, from ``old`` to ``new``."""

    path: Path
    seq: int
    old: SigningKey
    new: SigningKey

    def copy(self, tmp_path: Path) -> RawBundle:
        target = tmp_path / "copy.jsonl"
        shutil.copy(self.path, target)
        return RawBundle.read(target)

    def pin(self, key: SigningKey) -> str:
        return NoteVerifier(name=ORIGIN, key=key.public_key).verifier_string()


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotated]:
    tmp = tmp_path_factory.mktemp("rotated")
    settings = Settings(database_url=f"sqlite:///{tmp / 'registry.db'}", origin=ORIGIN,
                        key_file=tmp / "keys" / "registry-key.pem")
    admin_key = SigningKey.from_seed(b"A" * 32)
    before = initialise(
        settings, admin=FirstAdministrator(party_id=ADMIN, public_key=admin_key.public_key),
        insecure_dev_key=True, clock=StepClock(),
    )
    transfer = {"account": "KH-WATER-1", "batch": "KH-JCM-KH004-2024-00001", "quantity": 10,
                "to_account": "JP-BUYER-1"}
    with start_server(before) as live:
        world = build_world(live.url, admin_key)
        issue_jcm(world)
        world.submit("kh-water", "credits.transfer", transfer)
        world.http.http.close()
    new_file = tmp / "keys" / "registry-key-2.pem"
    seq = rotate_registry_key(before, new_key_file=new_file, passphrase=None).seq
    before.engine.dispose()
    after = open_registry(settings.model_copy(update={"key_file": new_file}), clock=StepClock())
    with start_server(after) as live:
        world = World(
            http=RegistryClient.connect(live.url), keys=world.keys)
        for _ in range(3):
            world.submit("kh-water", "credits.transfer", transfer)
        world.http.http.close()
    path = tmp / "bundle.jsonl"
    export_bundle(after, path)
    yield Rotated(path=path, seq=seq, old=before.signer, new=after.signer)
    after.engine.dispose()


def failures(bundle: RawBundle, pinned: str) -> list[tuple[int | None, str, str]]:
    """The failures found in ``bundle``, the same however it is spelt."""
    found = []
    for spaced in (False, True):
        report = verify_bundle(bundle.write(spaced=spaced), registry_key=pinned, workers=1).report
        found.append([(f.seq, f.code, f.message) for f in report.failures])
    assert found[0] == found[1]
    return found[0]


def codes(found: list[tuple[int | None, str, str]]) -> list[tuple[int | None, str]]:
    return [(seq, code) for seq, code, _ in found]


def test_the_untouched_bundle_passes_pinning_either_key(rotated: Rotated, tmp_path: Path) -> None:
    for pinned in (rotated.old, rotated.new):
        report = verify_bundle(rotated.path, registry_key=rotated.pin(pinned), workers=1).report
        assert report.ok, report.render()
        assert [(k["key_id"], k["valid_from_seq"], k["valid_until_seq"])
                for k in report.registry_keys] == [
            (rotated.old.public_key.key_id, 0, rotated.seq + 1),
            (rotated.new.public_key.key_id, rotated.seq + 1, None),
        ]


def test_a_rotation_without_the_new_keys_signature(rotated: Rotated, tmp_path: Path) -> None:
    """The old key alone signs the rotation, and everything after it: the rotation is not one,
    and nothing makes the new key the registry's."""
    r, old, new = rotated.seq, rotated.old, rotated.new
    bundle = rotated.copy(tmp_path)
    bundle.reseal_one(r, old)
    bundle.reseal(old, start=r + 1)
    bundle.resign(old, ORIGIN)
    found = failures(bundle, rotated.pin(old))
    assert codes(found) == [(r, "bad_signature"), (None, "bad_bundle"), (None, "unknown_key")]
    assert found[0][2] == (
        "a key rotation must be signed by the key it replaces and by the new key, and only by "
        f"them; it is signed by {old.public_key.key_id}")
    assert found[2][2] == (f"the header lists registry key {new.public_key.key_id}, which no "
                           "ledger entry establishes")
    # Pinned, the new key is not a key of this ledger at all.
    assert (0, "unknown_key") in codes(failures(bundle, rotated.pin(new)))


def test_a_rotation_signed_again_by_the_old_key_alone_breaks_what_follows(
    rotated: Rotated, tmp_path: Path
) -> None:
    r, old, new = rotated.seq, rotated.old, rotated.new
    bundle = rotated.copy(tmp_path)
    bundle.reseal_one(r, old)
    found = failures(bundle, rotated.pin(new))
    assert codes(found)[0] == (r, "bad_signature")
    # The rotation failed, so the old key is still in force: the new key's entries are not its.
    assert (r + 1, "wrong_key") in codes(found) and (r + 1, "broken_chain") in codes(found)
    assert (0, "unknown_key") in codes(found)


def test_entries_after_the_rotation_signed_by_the_old_key(
    rotated: Rotated, tmp_path: Path
) -> None:
    """An attacker holding the old key writes on after the rotation, re-chaining the entries and
    signing their checkpoints: each entry and each checkpoint past the rotation is refused."""
    r, old, new = rotated.seq, rotated.old, rotated.new
    bundle = rotated.copy(tmp_path)
    size = len(bundle.envelopes)
    bundle.reseal(old, start=r + 1)
    bundle.resign(old, ORIGIN)
    found = failures(bundle, rotated.pin(new))
    expected: list[tuple[int | None, str]] = [(r + 1, "wrong_key")]
    for seq in range(r + 2, size):
        expected += [(seq, "bad_checkpoint"), (seq, "wrong_key")]
    expected.append((size, "bad_checkpoint"))
    assert codes(found) == expected
    assert found[0][2] == (
        f"the entry is signed by registry key(s) {old.public_key.key_id}, but the key in force "
        f"at seq {r + 1} is {new.public_key.key_id}, and it alone signs (with the new key, for "
        "a rotation)")
    assert found[-1][2] == (
        f"checkpoint for size {size} is not signed by registry key {new.public_key.key_id}, "
        f"which signed its last entry (signed by: {old.public_key.key_id})")
    # Pinning the old key does not help: the ledger's own history retired it.
    assert codes(failures(bundle, rotated.pin(old))) == expected


def test_a_checkpoint_after_the_rotation_signed_only_by_the_old_key(
    rotated: Rotated, tmp_path: Path
) -> None:
    """The right root, the old key's signature: not the key that signed its last entry."""
    r, old, new = rotated.seq, rotated.old, rotated.new
    bundle = rotated.copy(tmp_path)
    tree = CompactRange()
    for envelope in bundle.envelopes[: r + 2]:
        tree.append(leaf_hash(envelope))
    forged = sign_checkpoint(Checkpoint(origin=ORIGIN, size=r + 2, root=tree.root()),
                             name=ORIGIN, key=old)
    bundle.checkpoints = [(s, forged if s == r + 2 else n) for s, n in bundle.checkpoints]
    assert (r + 2, forged) in bundle.checkpoints
    for pinned in (old, new):
        found = failures(bundle, rotated.pin(pinned))
        assert found == [(r + 2, "bad_checkpoint",
                          f"checkpoint for size {r + 2} is not signed by registry key "
                          f"{new.public_key.key_id}, which signed its last entry (signed by: "
                          f"{old.public_key.key_id})")]


@pytest.mark.parametrize(("until", "said"), [
    (3, "entries 0 to 2"), (None, "from entry 0 on, with no end"), (-1, "entries 0 to {r}")])
def test_the_header_giving_the_old_key_another_range(
    rotated: Rotated, tmp_path: Path, until: int | None, said: str
) -> None:
    r, old = rotated.seq, rotated.old
    bundle = rotated.copy(tmp_path)
    line = bundle.header["registry_keys"][0]
    assert (line["key_id"], line["valid_until_seq"]) == (old.public_key.key_id, r + 1)
    line["valid_until_seq"] = {3: 3, None: None, -1: r + 2}[until]
    claimed = said.format(r=r + 1)
    for pinned in (old, rotated.new):
        assert failures(bundle, rotated.pin(pinned)) == [(None, "bad_bundle", (
            f"the header says registry key {old.public_key.key_id} signs {claimed}; in the "
            f"ledger it signs entries 0 to {r}"))]


def test_a_rotation_the_old_key_forges_to_a_key_of_its_own(
    rotated: Rotated, tmp_path: Path
) -> None:
    """Whoever holds the old key can fork the history at the rotation, to a key of their own:
    an auditor who pins the registry's current key (as it publishes it) is not fooled."""
    r, old, new = rotated.seq, rotated.old, rotated.new
    bundle = rotated.copy(tmp_path)
    del bundle.envelopes[r:]
    entry = Entry(v=1, seq=r, time=bundle.entry(r - 1).time, kind=ROTATION_KIND,
                  actor="registry",
                  payload=rotation_payload(old.public_key, ATTACKER.public_key, ORIGIN),
                  prev=leaf_hash(bundle.envelopes[-1]).hex())
    bundle.envelopes.append(seal_entry(entry, old, cosigner=ATTACKER))
    bundle.header["tree_size"] = len(bundle.envelopes)
    bundle.resign(lambda n: [old, ATTACKER] if n == r + 1 else [old], ORIGIN)
    line = bundle.header["registry_keys"][1]
    line.update(key_id=ATTACKER.public_key.key_id, public_key=ATTACKER.public_key.to_b64(),
                note_verifier=rotated.pin(ATTACKER))
    assert failures(bundle, rotated.pin(new)) == [(0, "unknown_key", (
        f"the pinned key {new.public_key.key_id} is not a registry key of this ledger (its "
        f"keys: {old.public_key.key_id}, {ATTACKER.public_key.key_id})"))]


def test_the_replay_and_the_log_auditor_agree_on_a_rotation_the_new_key_did_not_sign(
    rotated: Rotated, tmp_path: Path
) -> None:
    """The log auditor refuses a rotation without the new key's signature and keeps the old key
    in force; the replayed state (what --against compares with the registry's key table) must
    not establish the new key either."""
    r, old = rotated.seq, rotated.old
    bundle = rotated.copy(tmp_path)
    bundle.reseal_one(r, old)
    bundle.reseal(old, start=r + 1)
    bundle.resign(old, ORIGIN)
    verification = verify_bundle(bundle.write(), registry_key=rotated.pin(old), workers=1)
    auditor = [(k["key_id"], k["valid_from_seq"], k["valid_until_seq"])
               for k in verification.report.registry_keys]
    replayed = [(p.key.key_id, p.valid_from_seq, p.valid_until_seq)
                for p in verification.state.registry_keys]
    assert replayed == auditor == [(old.public_key.key_id, 0, None)]
