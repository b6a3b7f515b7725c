"""`registry audit --url`: watch a running registry and shout if it rewrites its history.

The monitor keeps a small state file: the last checkpoint it accepted and the tree's right
frontier (O(log n) hashes). Each round it fetches the newest checkpoint, checks the pinned
signature, proves it consistent with the last one, fetches the new entries, checks the
registry's signature on each and their chain, and rebuilds the new root from the frontier.
Anything else is an alarm: a rollback, a fork (two roots for one size), a rewrite (no valid
consistency proof, whether refused, malformed or wrong), or entries that do not hash to the
signed root. A registry that cannot be reached, or answers with a server error, is not an
alarm but a round that could not be checked (the memory stays; the next round tries again).

It proves the log append-only, as the registry signed it; what the entries say (holders'
signatures, supply, double spending) is for ``registry verify``, which replays a whole export.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from registry.errors import CheckpointError, RegistryError
from registry.ledger.bundle import atomic_output
from registry.ledger.canonical import read_json
from registry.ledger.checkpoint import (
    Checkpoint,
    NoteVerifier,
    open_checkpoint_signers,
    split_note,
)
from registry.ledger.entry import Entry
from registry.ledger.keys import PublicKey, b64decode_strict
from registry.ledger.merkle import CompactRange, leaf_hash, verify_consistency
from registry.ledger.opening import open_envelope
from registry.ledger.registry_keys import ROTATION_KIND, KeySchedule, named_by_genesis

PAGE = 1000


class MonitorAlarm(RegistryError):
    """The registry served something that contradicts what it signed before."""

    code = "ledger_alarm"


class _PinNotReached(MonitorAlarm):
    """No key the monitor followed is the pinned key."""


class MonitorUnavailable(RegistryError):
    """The registry could not be asked (unreachable, or a server error): nothing was learnt."""

    code = "registry_unavailable"


ANSWER_SECONDS = 300.0
"""How long one answer may take, all of it (``--timeout``): the client's own timeout bounds
each read, and a registry that trickles a byte now and then would hold a round for ever."""
MAX_ANSWER_BYTES = 64 << 20
"""The most one answer may hold: far above a checkpoint, a proof, or one entry (a request's
body is at most 16 MiB); a longer page of entries is asked for again in smaller pages."""


class AnswerTooLarge(MonitorUnavailable):
    """The registry's answer holds more than :data:`MAX_ANSWER_BYTES`."""


@dataclass(frozen=True)
class Answer:
    """A whole answer, read within the time and size allowed."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The answer's JSON; ``ValueError`` for anything else, JSON nested deeper than the
        parser goes included (no failure of the monitor's own)."""
        return read_json(self.content)


def monitor_client(url: str, *, timeout: float) -> httpx.Client:
    """The monitor's HTTP client: a connection per request, so that :func:`_get` holds the
    socket of each answer it waits for (no redirect is followed: the registry is pinned)."""
    return httpx.Client(
        base_url=url,
        timeout=timeout,
        limits=httpx.Limits(max_keepalive_connections=0),
        follow_redirects=False,
    )


def _get(
    http: httpx.Client,
    path: str,
    params: dict[str, int] | None = None,
    *,
    seconds: float = ANSWER_SECONDS,
) -> Answer:
    """``GET path``; a transport failure, a server error, or an answer that takes longer than
    ``seconds`` or holds more than :data:`MAX_ANSWER_BYTES` is :class:`MonitorUnavailable`.

    The time is the whole answer's, its status line and headers included: a registry that
    trickles them a byte at a time, each within the client's timeout, has its connection cut
    at the deadline (``http`` from :func:`monitor_client`: the connection is the request's)."""
    deadline = time.monotonic() + seconds
    sockets: list[Any] = []
    late = threading.Event()

    def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            sockets.append(info["return_value"].get_extra_info("socket"))

    def hang_up() -> None:
        late.set()
        for sock in sockets:
            with contextlib.suppress(OSError):  # closed already
                sock.shutdown(socket.SHUT_RDWR)

    too_late = MonitorUnavailable(f"the registry took more than {seconds:g} s to answer {path}")
    timer = threading.Timer(seconds, hang_up)
    timer.daemon = True
    timer.start()
    try:
        with http.stream("GET", path, params=params, extensions={"trace": trace}) as response:
            status = response.status_code
            if status >= 500 or status in (408, 429):
                # A server error, a timeout or a rate limit (as a proxy in front may answer)
                # says nothing about the log: the round is not checked.
                raise MonitorUnavailable(f"the registry answered {status} to {path}")
            if response.headers.get("content-type", "").startswith("text/html"):
                # The registry answers JSON or plain text, never a web page: this is something
                # in between (a captive portal, a proxy's error page), which says nothing
                # about the log. A registry serving pages instead is as good as unreachable.
                raise MonitorUnavailable(
                    f"a web page answered {path}, not the registry (a captive portal or a "
                    f"proxy in between?)"
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise AnswerTooLarge(
                        f"the registry's answer to {path} holds more than {MAX_ANSWER_BYTES} bytes"
                    )
                if time.monotonic() > deadline:
                    raise too_late
    except httpx.HTTPError as e:
        if late.is_set():
            raise too_late from e
        raise MonitorUnavailable(f"cannot reach the registry ({path}): {e}") from e
    finally:
        timer.cancel()
    return Answer(status, bytes(body))


def _json(response: Answer, what: str) -> Any:
    """The JSON of a ``200`` answer; anything else from a registry that is up is an alarm."""
    if response.status_code != 200:
        raise MonitorAlarm(f"the registry refuses {what}: {response.status_code}")
    try:
        return response.json()
    except ValueError as e:
        raise MonitorAlarm(f"the registry serves {what} that is not JSON") from e


def _why(error: Exception) -> str:
    """What was wrong with what the registry served: a check's message, or its shape."""
    return error.message if isinstance(error, RegistryError) else f"malformed ({error!r})"


@dataclass
class MonitorState:
    size: int = 0
    root: str = ""
    frontier: list[str] = field(default_factory=list)
    last_leaf: str | None = None
    checkpoint: str = ""
    registry_keys: list[str] = field(default_factory=list)
    """The registry keys the monitor has seen sign this ledger (base64), in order: the last is
    in force after ``size`` entries. Empty in a state file kept before rotations were
    followed: the pinned key then."""

    def followed(self, verifier: NoteVerifier) -> list[PublicKey]:
        """The registry keys seen so far, the one in force last."""
        return [PublicKey.from_b64(k) for k in self.registry_keys] or [verifier.key]

    @classmethod
    def load(cls, path: Path, verifier: NoteVerifier | None = None) -> MonitorState | None:
        """The state kept in ``path`` (``None`` if there is none), checked; with ``verifier``,
        also that its checkpoint is the pinned key's, for its size and root."""
        if not path.exists():
            return None
        try:
            data = read_json(path.read_text())
            digest = data.pop("digest", None) if isinstance(data, dict) else None
            state = cls(**data)
            if not isinstance(state.registry_keys, list):
                raise ValueError("registry_keys is not a list")
            for key in state.registry_keys:
                PublicKey.from_b64(key)
            if digest is not None and digest != state._digest():
                raise ValueError("its digest is not its content's")  # e.g. last_leaf
            state._check()
        except (ValueError, TypeError, RegistryError) as e:
            why = e.message if isinstance(e, RegistryError) else e
            raise RegistryError(f"the monitor's state file {path} is damaged: {why}") from e
        if verifier is not None:
            state._check_signed(path, verifier)
        return state

    def _check_signed(self, path: Path, verifier: NoteVerifier) -> None:
        """A state file kept for another registry, or under another key, is the monitor's own
        error: comparing this registry with it would cry fork or rollback at an honest one.
        (Its checkpoint may be signed by a key the registry then used, which may not be the one
        pinned now: a pin moved to the registry's new key after a rotation.)"""
        try:
            keys = {verifier.key, *self.followed(verifier)}
            verifiers = [NoteVerifier(name=verifier.name, key=k) for k in keys]
            cp, _ = open_checkpoint_signers(
                self.checkpoint, origin=verifier.name, verifiers=verifiers
            )
        except RegistryError as e:
            raise RegistryError(
                f"the monitor's state file {path} was not kept for this registry: its checkpoint "
                f"is not signed by the pinned key {verifier.describe()} ({e.message})"
            ) from e
        if cp.size != self.size or _b64(cp.root) != self.root:
            raise RegistryError(
                f"the monitor's state file {path} is damaged: its checkpoint is of size "
                f"{cp.size}, root {_b64(cp.root)}, its state of size {self.size}, root {self.root}"
            )

    def _check(self) -> None:
        """The fields hang together: a damaged file is the monitor's error, not the registry's."""
        if type(self.size) is not int or self.size < 0:
            raise ValueError(f"size {self.size!r}")
        if not isinstance(self.frontier, list) or not isinstance(self.checkpoint, str):
            raise ValueError("frontier or checkpoint of the wrong type")
        hashes = [b64decode_strict(h, what="frontier hash") for h in self.frontier]
        if any(len(h) != 32 for h in hashes):
            raise ValueError("a frontier hash is not 32 bytes")
        tree = CompactRange.from_frontier(self.size, hashes)
        if self.size and self.root != _b64(tree.root()):
            raise ValueError("root is not the frontier's")
        if (self.last_leaf is None) != (self.size == 0) or (
            self.last_leaf is not None
            and (not isinstance(self.last_leaf, str) or len(bytes.fromhex(self.last_leaf)) != 32)
        ):
            raise ValueError(f"last_leaf {self.last_leaf!r}")

    def save(self, path: Path) -> None:
        """Atomically and durably: a crash never leaves a half or empty state behind."""
        with atomic_output(path) as out:
            out.write(json.dumps({**asdict(self), "digest": self._digest()}, indent=2).encode())

    def _digest(self) -> str:
        """SHA-256 of the fields: ``last_leaf`` cannot be checked against the others. (An
        empty ``registry_keys`` is left out, as state files kept before it had none.)"""
        fields = asdict(self)
        if not self.registry_keys:
            del fields["registry_keys"]
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Round:
    previous_size: int
    size: int
    new_entries: int
    rotations: list[tuple[int, str]] = field(default_factory=list)
    """``(seq, new key id)`` of each rotation of the registry's key among the new entries."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_round(
    http: httpx.Client,
    verifier: NoteVerifier,
    state: MonitorState | None,
    *,
    seconds: float = ANSWER_SECONDS,
) -> tuple[MonitorState, Round]:
    """One round of checks; returns the state to keep, or raises :class:`MonitorAlarm`.
    Each answer may take ``seconds``, all of it.

    A state kept under other keys than the pinned one is a pin moved to the registry's new
    key after a rotation, if this round sees the registry rotate to it; otherwise it is a state
    file kept for another registry (or a pin to a key not yet in force): the monitor's own
    error, not an alarm against the registry, whose history it was not kept for. Unless the
    served checkpoint is signed by the key the state's own checkpoint is: then the state was
    kept for this registry, and a rollback, fork or rewrite is that key's, an alarm.
    """
    repinned = state is not None and state.size > 0 and verifier.key not in state.followed(
        verifier)
    signed_by_state_key: list[bool] = []
    try:
        return _check_round(http, verifier, state, seconds=seconds, signed=signed_by_state_key)
    except MonitorAlarm as e:
        if not repinned or (any(signed_by_state_key) and not isinstance(e, _PinNotReached)):
            raise
        assert state is not None
        raise RegistryError(
            "the monitor's state was not kept for this registry: its checkpoint is not signed "
            f"by the pinned key {verifier.describe()} but by "
            f"{', '.join(k.key_id for k in state.followed(verifier))}, and the registry "
            f"shows no rotation to the pinned key since ({e.message})"
        ) from e


def _check_round(
    http: httpx.Client,
    verifier: NoteVerifier,
    state: MonitorState | None,
    *,
    seconds: float,
    signed: list[bool],
) -> tuple[MonitorState, Round]:
    response = _get(http, "/v1/checkpoint", seconds=seconds)
    if response.status_code != 200:
        raise MonitorUnavailable(f"the registry answered {response.status_code} to /v1/checkpoint")
    note = response.text
    old = state or MonitorState()
    followed = old.followed(verifier) if old.size else []
    known = followed[-1] if followed else verifier.key
    try:
        cp, _ = open_checkpoint_signers(
            note, origin=verifier.name, verifiers=[NoteVerifier(name=verifier.name, key=known)]
        )
        signed_by_known = True
        signed.append(True)
    except RegistryError as e:
        # Perhaps signed by a key a rotation among the new entries brings: read it now, and
        # check its signature once the entries say which key signs it.
        try:
            cp = _unsigned(note, verifier.name)
        except RegistryError:
            raise MonitorAlarm(f"the served checkpoint does not verify: {e.message}") from e
        if cp.size <= old.size:
            raise MonitorAlarm(f"the served checkpoint does not verify: {e.message}") from e
        signed_by_known = False
    old_root = base64.b64decode(old.root) if old.root else b""
    if cp.size < old.size:
        raise MonitorAlarm(f"ROLLBACK: the tree shrank from {old.size} to {cp.size} entries")
    if cp.size == old.size and old.size and cp.root != old_root:
        raise MonitorAlarm(
            f"FORK: two different roots signed for size {cp.size}: {old_root.hex()} before, "
            f"{cp.root.hex()} now"
        )
    if old.size and cp.size > old.size:
        what = f"a consistency proof from {old.size} to {cp.size}"
        answer = _get(
            http, "/v1/proofs/consistency", {"first": old.size, "second": cp.size}, seconds=seconds
        )
        try:
            proof = _json(answer, what)
            hashes = [b64decode_strict(h, what="proof hash") for h in proof["proof"]]
            verify_consistency(old.size, cp.size, hashes, old_root, cp.root)
        except (RegistryError, KeyError, TypeError) as e:
            raise MonitorAlarm(
                f"REWRITE: checkpoint {cp.size} is not proved consistent with {old.size}: "
                f"{_why(e)}"
            ) from e
    # A first round follows the registry's keys from genesis; a later one from where it
    # stopped, under the key then in force.
    fresh = not old.size
    schedule = (
        KeySchedule(verifier.name) if fresh else KeySchedule.resume(verifier.name, known, old.size)
    )
    rotations: list[tuple[int, str]] = []
    tree = CompactRange.from_frontier(old.size, [base64.b64decode(h) for h in old.frontier])
    prev = old.last_leaf
    limit = PAGE
    while tree.size < cp.size:
        params = {"start": tree.size, "limit": min(limit, cp.size - tree.size)}
        try:
            answer = _get(http, "/v1/entries", params, seconds=seconds)
        except AnswerTooLarge:
            if params["limit"] == 1:
                raise
            limit = params["limit"] // 2  # large entries: smaller pages
            continue
        limit = min(PAGE, limit * 2)
        page = _json(answer, f"entries from {tree.size}")
        items = page.get("data") if isinstance(page, dict) else None
        if not items or not isinstance(items, list):
            raise MonitorAlarm(f"the registry signed {cp.size} entries but serves {tree.size}")
        for item in items:
            try:
                envelope = b64decode_strict(item["envelope"], what="envelope")
            except (RegistryError, KeyError, TypeError) as e:
                raise MonitorAlarm(f"entry {tree.size}: {_why(e)}") from e
            entry = _signed_entry(envelope, schedule, tree.size)
            if entry.kind == ROTATION_KIND:
                rotations.append((entry.seq, schedule.periods[-1].key.key_id))
            if entry.seq != tree.size or entry.prev != prev:
                raise MonitorAlarm(
                    f"entry {tree.size}: broken chain: served as seq {entry.seq} after leaf "
                    f"{entry.prev}, where seq {tree.size} after leaf {prev} belongs"
                )
            leaf = leaf_hash(envelope)
            prev = leaf.hex()
            tree.append(leaf)
            if tree.size == cp.size:
                break
    if tree.root() != cp.root:
        raise MonitorAlarm(
            f"the served entries hash to {tree.root().hex()}, the checkpoint signs {cp.root.hex()}"
        )
    current = schedule.current or known
    signer = schedule.signer_of_last or current
    if not signed_by_known or signer != known:
        _check_checkpoint_signer(note, verifier.name, signer)
    for period in schedule.periods:
        if period.key not in followed:
            followed.append(period.key)
    if verifier.key not in followed:
        # A first round: no key of the ledger's is the pinned key. A later one, re-pinned to a
        # new key: no rotation to it was seen (whoever holds the old key may be writing on).
        raise _PinNotReached(
            f"the pinned key {verifier.key.key_id} is not a registry key of this ledger "
            f"(its keys, as far as seen: {', '.join(k.key_id for k in followed)})"
        )
    new = MonitorState(
        size=cp.size,
        root=_b64(cp.root),
        frontier=[_b64(h) for h in tree.frontier],
        last_leaf=prev,
        checkpoint=note,
        registry_keys=[k.to_b64() for k in followed],
    )
    return new, Round(
        previous_size=old.size,
        size=cp.size,
        new_entries=cp.size - old.size,
        rotations=rotations,
    )


def _unsigned(note: str, origin: str) -> Checkpoint:
    """The checkpoint a note states, its signatures not yet checked."""
    cp = Checkpoint.from_body(split_note(note)[0])
    if cp.origin != origin:
        raise CheckpointError(f"checkpoint origin is {cp.origin!r}, expected {origin!r}")
    return cp


def _signed_entry(envelope: bytes, schedule: KeySchedule, position: int) -> Entry:
    """The entry in ``envelope``, signed by the registry key in force at ``position`` (a key
    rotation by that key and the new one); the schedule then takes it in."""
    keys = {p.key.key_id: p.key for p in schedule.periods}
    if not keys and schedule.origin is not None:
        named = named_by_genesis(envelope, schedule.origin)  # genesis names the key signing it
        keys = {} if named is None else {named.key_id: named}
    opened = open_envelope(envelope, keys)
    if opened.failure is not None or opened.entry is None:
        _, message = opened.failure or ("malformed", "unreadable")
        raise MonitorAlarm(f"entry {position}: {message}")
    entry = opened.entry
    for problem in (schedule.check(entry, opened.signers), schedule.observe(entry, envelope)):
        if problem is not None:
            raise MonitorAlarm(f"entry {position}: {problem[1]}")
    return entry


def _check_checkpoint_signer(note: str, origin: str, key: PublicKey) -> None:
    """The checkpoint is signed by ``key``, which signed its last entry."""
    try:
        open_checkpoint_signers(note, origin=origin, verifiers=[NoteVerifier(name=origin, key=key)])
    except RegistryError as e:
        raise MonitorAlarm(
            f"the served checkpoint is not signed by registry key {key.key_id}, which signed "
            f"its last entry: {e.message}"
        ) from e
