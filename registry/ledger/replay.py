"""Replaying the ledger: rebuild the registry's state from its entries and prove every invariant.

This module owns the auditor's state machine. :class:`Replay` takes opened entries in order and,
for each one, checks what DESIGN.md's "Invariants the auditor proves by replay" require, with
the same domain code the service runs (``registry.domain``), never a second implementation:

* **authority**: the instruction inside the entry is of the entry's kind, for this registry
  (it names the genesis's origin; a ledger whose genesis predates that rule may hold
  instructions that name none, up to the first that names it), by the entry's actor, signed
  (Ed25519 over ``canonical_bytes(instruction)``) with a key that the ledger says belonged to
  that actor at that seq (added before it, not revoked before it; keys come from genesis and
  ``party.register``/``party.key_add``/``party.key_revoke``), unexpired at the entry's time
  and not too far ahead, its nonce never used before by that party, and the actor holds the
  role the use case needs;
* **rules**: the entry's effects are re-derived from the replayed state and the instruction body
  (``serials.take_lowest``/``take_range``/``allocate``, ``redd.compute_issuance``/
  ``compute_reversal``, the boundary overlap check) and any difference from the recorded effects
  is reported, as is an instruction the rules would have refused;
* **state**: the recorded effects are applied only when they are possible (no serial created,
  lost, or in two blocks; only active serials held by the source move; nothing issued twice or
  without a verified report; REDD+ issuance within net verified reductions, buffer share as the
  rates require; buffer pool and shortfall accounting of reversals), and at the end every batch
  is checked to conserve its supply.

Every problem becomes a :class:`~registry.ledger.audit.Failure` naming the entry's seq and what
was expected; replay never stops at the first. Memory grows with the state (parties, keys,
nonces, accounts, reports, batches, blocks), never with the number of entries.

The ledger cannot import the service layer, so the few constants the use cases define
(``GENESIS_KIND``, the retirement and cancellation accounts, the instruction validity window,
the overlap tolerance, the buffer account name) are repeated here; ``tests/audit`` checks they
equal the service's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from registry.domain import instructions as ins
from registry.domain.redd import compute_issuance, compute_reversal, unit_shortfall_after
from registry.domain.rules import (
    CLOSED_REPORT_STATUSES,
    BufferTerms,
    check_allocation_holder,
    check_country_and_methodology,
    check_no_period_overlap,
    check_report_area,
    check_report_period,
    check_unit_can_join,
    plan_issuance,
)
from registry.domain.serials import (
    SerialRange,
    parse_batch_serial_id,
    take_lowest,
    take_range,
)
from registry.errors import (
    ConflictError,
    InvalidGeometryError,
    InvalidRequestError,
    MalformedError,
    NotFoundError,
    RegistryError,
    StateError,
)
from registry.ledger.audit import Failure, LogReport
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.entry import Entry, parse_expiry
from registry.ledger.keys import PublicKey
from registry.ledger.opening import SignatureCheck, check_instruction_signature
from registry.ledger.registry_keys import (
    GENESIS_KIND,
    ROTATION_KIND,
    KeyPeriod,
    RegistryKeyRecord,
)

if TYPE_CHECKING:  # shapely and pyproj load only for a ledger with forest units
    from registry.domain.forest import Boundary

RETIREMENT_ACCOUNT: Final = "RETIREMENT"
CANCELLATION_ACCOUNT: Final = "CANCELLATION"
MAX_VALIDITY: Final = timedelta(days=7)
OVERLAP_TOLERANCE_HA: Final = 1.0
ACTIVE, RETIRED, CANCELLED = "active", "retired", "cancelled"
#: The accounts each movement may take credits from: a buffer pool only by cancellation.
MOVABLE_FROM: Final[dict[str, frozenset[str]]] = {
    ins.Transfer.TYPE: frozenset({"holding"}),
    ins.Retire.TYPE: frozenset({"holding"}),
    ins.Cancel.TYPE: frozenset({"holding", "buffer"}),
}
CREDIT_KINDS: Final = frozenset(
    {ins.Issue.TYPE, ins.Transfer.TYPE, ins.Retire.TYPE, ins.Cancel.TYPE, ins.RecordReversal.TYPE}
)
#: The members of every entry's payload but genesis's.
_INSTRUCTION_PAYLOAD: Final = frozenset({"instruction", "signature", "effects"})


def buffer_account_id(unit_id: str) -> str:
    """The buffer pool account a forest unit gets when it is registered."""
    return f"BUF-{unit_id}"


# --- state ------------------------------------------------------------------------------------


@dataclass(slots=True)
class PartyState:
    id: str
    name: str
    role: str
    country: str | None
    created_seq: int


@dataclass(slots=True)
class KeyState:
    key_id: str
    party_id: str
    public_key: bytes
    added_seq: int
    revoked_seq: int | None = None


@dataclass(slots=True)
class AccountState:
    id: str
    holder: str
    kind: str
    name: str
    unit_id: str | None
    created_seq: int


@dataclass(slots=True)
class ProjectState:
    id: str
    title: str
    partner_country: str
    methodology: str
    sector: str
    programme: str | None
    participants: list[str]
    third_party_entity: str
    crediting_period_start: str
    crediting_period_end: str
    status: str
    registered_seq: int


@dataclass(slots=True)
class UnitState:
    id: str
    project_id: str
    name: str
    boundary: Boundary
    area_ha: int
    jurisdiction: str
    reference_level: int
    leakage_rate_bp: int
    buffer_rate_bp: int
    buffer_account: str
    shortfall: int
    registered_seq: int

    @property
    def boundary_text(self) -> str:
        """The boundary as the state table stores it (normalised GeoJSON, compact)."""
        return json.dumps(self.boundary.to_geojson(), separators=(",", ":"))


@dataclass(slots=True)
class ReportState:
    id: str
    project_id: str
    forest_unit_id: str | None
    period_start: str
    period_end: str
    reductions: int
    document_sha256: str
    status: str
    submitted_seq: int
    verified_reductions: int | None = None
    verifier: str | None = None
    statement_sha256: str | None = None
    verified_seq: int | None = None


@dataclass(slots=True)
class BatchState:
    id: str
    project_id: str
    report_id: str
    programme: str
    vintage: int
    number: int
    quantity: int
    issued_seq: int


@dataclass(slots=True)
class RetirementState:
    id: str
    seq: int
    account_id: str
    batch_id: str
    blocks: str
    quantity: int
    beneficiary: str
    purpose: str
    jurisdiction: str
    reason: str
    time: datetime


@dataclass(slots=True)
class ReversalState:
    seq: int
    unit_id: str
    lost: int
    cancelled: int
    shortfall: int
    document_sha256: str
    reason: str


@dataclass(slots=True)
class Block:
    """The ``serials`` of one batch, held by ``account`` in ``status``.

    The range object is kept (not rebuilt from two ints) because every movement hands all of
    the holder's blocks in the batch to ``take_lowest``/``take_range``, as the service does.
    """

    batch: str
    serials: SerialRange
    account: str
    status: str

    @property
    def start(self) -> int:
        return self.serials.start

    @property
    def end(self) -> int:
        return self.serials.end


class BatchBlocks:
    """The blocks of one batch, by first serial, split exactly as the store splits its rows.

    The service never merges blocks, and which pieces ``take_lowest`` returns depends on where
    blocks are split, so the replay keeps the same splits to re-derive the same effects.
    """

    __slots__ = ("_blocks", "_starts", "batch")

    def __init__(self, batch: str) -> None:
        self.batch = batch
        self._starts: list[int] = []
        self._blocks: dict[int, Block] = {}

    def __iter__(self) -> Iterator[Block]:
        return (self._blocks[s] for s in self._starts)

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, block: Block) -> None:
        insort(self._starts, block.start)
        self._blocks[block.start] = block

    def covering(self, serials: SerialRange) -> list[Block]:
        """The blocks holding any serial of ``serials``, in serial order."""
        i = max(bisect_right(self._starts, serials.start) - 1, 0)
        found: list[Block] = []
        while i < len(self._starts) and self._starts[i] <= serials.end:
            block = self._blocks[self._starts[i]]
            if block.end >= serials.start:
                found.append(block)
            i += 1
        return found

    def at(self, start: int) -> Block:
        return self._blocks[start]

    def get(self, start: int) -> Block | None:
        """The block whose first serial is ``start``, if there is one."""
        return self._blocks.get(start)

    def split(self, block: Block, at: int) -> Block:
        """Cut ``block`` before serial ``at``; returns the new second piece (already added)."""
        first, rest = block.serials.split_at(at)
        second = Block(self.batch, rest, block.account, block.status)
        block.serials = first
        self.add(second)
        return second


class ReplayedState:
    """The registry's state as the ledger alone defines it; what ``--against`` compares with.

    Blocks are kept per batch (split as the store splits them) with an index of each account's
    active blocks per batch, so a movement costs what it costs the service: the blocks touched.
    """

    def __init__(self) -> None:
        self.origin: str | None = None
        #: The registry's keys, each over the entries it signs. The replay takes in genesis's;
        #: the rotations after it are the log auditor's to follow, as their signatures decide
        #: (``registry.ledger.registry_keys``): the verifier puts its history here.
        self.registry_keys: list[KeyPeriod] = []
        self.instructions_name_registry = False
        #: Whether issuance allocates only to the project's side (the genesis says).
        self.issuance_to_project_side = False
        #: Whether a project's status change must change its status (the genesis says).
        self.status_changes_change = False
        #: Whether instruction text is plain: no control or text-direction characters, not
        #: blank (the genesis says).
        self.plain_text = False
        #: Whether a project's partner country must be an ISO 3166-1 country and its
        #: methodology one of that country's (the genesis says).
        self.methodology_of_partner_country = False
        #: The most active keys a party may hold, when the genesis sets one.
        self.max_active_keys: int | None = None
        #: The first entry whose instruction named this registry, in a ledger whose genesis
        #: predates the rule: from there on the registry refused instructions naming none.
        self.registry_named_since: int | None = None
        self.parties: dict[str, PartyState] = {}
        self.keys: dict[str, KeyState] = {}
        self.nonces: dict[str, dict[str, int]] = {}
        self.accounts: dict[str, AccountState] = {}
        self.projects: dict[str, ProjectState] = {}
        self.units: dict[str, UnitState] = {}
        self.reports: dict[str, ReportState] = {}
        self.batches: dict[str, BatchState] = {}
        self.batch_numbers: dict[tuple[str, int], int] = {}
        self.blocks: dict[str, BatchBlocks] = {}
        self.active: dict[str, dict[str, list[int]]] = {}
        self.retirements: dict[str, RetirementState] = {}
        self.reversals: dict[int, ReversalState] = {}

    # -- blocks --

    def _index(self, block: Block) -> None:
        if block.status == ACTIVE:
            insort(
                self.active.setdefault(block.account, {}).setdefault(block.batch, []), block.start
            )

    def _unindex(self, block: Block) -> None:
        if block.status != ACTIVE:
            return
        by_batch = self.active[block.account]
        starts = by_batch[block.batch]
        del starts[bisect_left(starts, block.start)]
        if not starts:
            del by_batch[block.batch]

    def add_block(self, block: Block) -> None:
        self.blocks[block.batch].add(block)
        self._index(block)

    def held(self, account: str, batch: str) -> list[SerialRange]:
        """``account``'s active serials in ``batch``, one range per block, in serial order."""
        starts = self.active.get(account, {}).get(batch, [])
        blocks = self.blocks[batch]
        return [blocks.at(s).serials for s in starts]

    def held_batches(self, account: str) -> list[str]:
        """Batches in which ``account`` holds active serials, in batch id order."""
        return sorted(self.active.get(account, {}))

    def pool(self, account: str) -> int:
        """Active credits ``account`` holds in all batches (a buffer pool's size)."""
        return sum(
            r.quantity for batch in self.held_batches(account) for r in self.held(account, batch)
        )

    def move(self, batch: str, taken: Iterable[SerialRange], *, to: str, status: str) -> None:
        """Move serials already checked to be held, splitting blocks as the store does."""
        blocks = self.blocks[batch]
        for t in taken:
            for block in blocks.covering(t):
                self._unindex(block)
                if block.start < t.start:
                    self._index(block)  # the first piece stays where it was
                    block = blocks.split(block, t.start)
                if block.end > t.end:
                    rest = blocks.split(block, t.end + 1)
                    self._index(rest)
                block.account, block.status = to, status
                self._index(block)

    def total(self, account: str) -> int:
        return sum(r.quantity for b in self.active.get(account, {}) for r in self.held(account, b))

    def iter_blocks(self) -> Iterator[Block]:
        for batch in sorted(self.blocks):
            yield from self.blocks[batch]

    def supply(self, batch: str) -> dict[str, int]:
        """Serials of ``batch`` by status."""
        totals = {ACTIVE: 0, RETIRED: 0, CANCELLED: 0}
        for block in self.blocks[batch]:
            totals[block.status] = totals.get(block.status, 0) + block.end - block.start + 1
        return totals

    def rules_not_adopted(self) -> list[str]:
        """The genesis flags this version checks that the ledger's genesis does not set.

        A ledger begun before a rule is not held to it, so a genesis that leaves a flag out (or
        sets a key limit above this version's) escapes that check: the report names each one,
        and ``registry verify --require-every-rule`` fails the ledger for it.
        """
        adopted = {
            "instructions_name_registry": self.instructions_name_registry,
            "issuance_to_project_side": self.issuance_to_project_side,
            "status_changes_change": self.status_changes_change,
            # A limit above this version's would hold a party to next to nothing.
            "max_active_keys": self.max_active_keys is not None
            and self.max_active_keys <= ins.MAX_ACTIVE_KEYS,
            "plain_text": self.plain_text,
            "methodology_of_partner_country": self.methodology_of_partner_country,
        }
        return [rule for rule, set_ in adopted.items() if not set_]

    def summary(self) -> dict[str, int]:
        """Counts and tonnes, for the report."""
        totals = {ACTIVE: 0, RETIRED: 0, CANCELLED: 0}
        for batch in self.blocks:
            for status, q in self.supply(batch).items():
                totals[status] = totals.get(status, 0) + q
        return {
            "parties": len(self.parties),
            "accounts": len(self.accounts),
            "projects": len(self.projects),
            "forest_units": len(self.units),
            "reports": len(self.reports),
            "batches": len(self.batches),
            "blocks": sum(len(b) for b in self.blocks.values()),
            "issued": sum(b.quantity for b in self.batches.values()),
            "active": totals[ACTIVE],
            "retired": totals[RETIRED],
            "cancelled": totals[CANCELLED],
            "shortfall": sum(u.shortfall for u in self.units.values()),
        }


# --- payload shapes ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class _GenesisAdmin(_Strict):
    party_id: StrictStr
    name: StrictStr
    role: Literal["administrator"]
    country: StrictStr | None
    key_id: StrictStr
    public_key: StrictStr


class _GenesisAccount(_Strict):
    account_id: StrictStr
    kind: StrictStr
    holder: StrictStr
    name: StrictStr


class _Genesis(_Strict):
    origin: StrictStr
    registry_key: RegistryKeyRecord
    administrator: _GenesisAdmin
    accounts: list[_GenesisAccount]
    instructions_name_registry: StrictBool = False
    issuance_to_project_side: StrictBool = False
    status_changes_change: StrictBool = False
    max_active_keys: StrictInt | None = None
    plain_text: StrictBool = False
    methodology_of_partner_country: StrictBool = False


class _Span(_Strict):
    start: StrictInt
    end: StrictInt


class _AccountSpan(_Span):
    account: StrictStr


class _BatchSpan(_Span):
    batch: StrictStr


class _ReddFigures(_Strict):
    gross: StrictInt
    leakage: StrictInt
    net: StrictInt
    buffer: StrictInt
    buffer_account: StrictStr


class _IssueEffects(_Strict):
    batch: StrictStr
    quantity: StrictInt
    blocks: list[_AccountSpan]
    redd: _ReddFigures | None = None


class _MoveEffects(_Strict):
    batch: StrictStr
    from_: StrictStr = Field(alias="from")
    to: StrictStr | None = None
    retirement_id: StrictStr | None = None
    quantity: StrictInt
    blocks: list[_Span]


class _ReversalEffects(_Strict):
    unit_id: StrictStr
    lost: StrictInt
    pool_before: StrictInt
    cancelled: StrictInt
    shortfall: StrictInt
    blocks: list[_BatchSpan]


# --- the replay -------------------------------------------------------------------------------


_M = TypeVar("_M", bound=BaseModel)


class _Refused(Exception):
    """Internal: a recorded change that cannot be applied to the state (already reported)."""


@dataclass(slots=True)
class _Acting:
    """An entry's instruction, parsed, and what is known of who signed it."""

    entry: Entry
    now: datetime
    kind: str
    actor: str
    party: PartyState | None
    body: Any
    effects: Any
    names_registry: bool
    """Whether the instruction names its registry: signed for a version of the registry that
    requires it, and so held to the rules that came with that version (a ledger's older entries
    keep the rules of their time)."""

    @property
    def seq(self) -> int:
        return self.entry.seq


@dataclass(slots=True)
class _Derived:
    effects: dict[str, Any]
    apply: Callable[[], None] | None = None


def _get(table: dict[str, Any], key: str, what: str) -> Any:
    """The service's ``get_or_404``: same message, same code."""
    row = table.get(key)
    if row is None:
        raise NotFoundError(f"no {what} {key!r}", details={what.replace(" ", "_"): key})
    return row


def _same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same value: as ``==``, but ``true`` is not ``1`` nor
    ``false`` ``0`` (Python's ``True == 1`` would let an entry record a boolean for a count)."""
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_same_json(value, b[key]) for key, value in a.items())
        )
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
        )
    return (
        isinstance(a, bool) is isinstance(b, bool)
        and isinstance(a, float) is isinstance(b, float)
        and a == b
    )


def _differences(path: str, recorded: Any, expected: Any, out: list[str], limit: int = 3) -> None:
    """Paths where two JSON values differ, as ``path: recorded X, expected Y``."""
    if len(out) >= limit:
        return
    if isinstance(recorded, dict) and isinstance(expected, dict):
        for key in sorted(set(recorded) | set(expected)):
            if not _same_json(recorded.get(key, _MISSING), expected.get(key, _MISSING)):
                _differences(
                    f"{path}.{key}",
                    recorded.get(key, _MISSING),
                    expected.get(key, _MISSING),
                    out,
                    limit,
                )
        return
    if isinstance(recorded, list) and isinstance(expected, list) and len(recorded) == len(expected):
        for i, (a, b) in enumerate(zip(recorded, expected, strict=True)):
            if not _same_json(a, b):
                _differences(f"{path}[{i}]", a, b, out, limit)
        return
    out.append(f"{path} is {_show(recorded)}, the replay gives {_show(expected)}")


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING: Final = _Missing()


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def _ranges(taken: Iterable[SerialRange]) -> list[dict[str, int]]:
    return [{"start": r.start, "end": r.end} for r in taken]


class Replay:
    """Feed entries in ledger order with :meth:`apply`; :meth:`finish` runs the final checks.

    ``registry_key`` and ``origin``, when given, are what genesis must name (a pinned key, for
    a replay alone: ``registry verify`` pins any key of the history, which its log auditor
    follows through the rotations). Failures go to ``report`` (a fresh one by default).
    """

    def __init__(
        self,
        *,
        registry_key: PublicKey | None = None,
        origin: str | None = None,
        report: LogReport | None = None,
    ) -> None:
        self.state = ReplayedState()
        self.report = report if report is not None else LogReport()
        self.pinned_key = registry_key
        self.pinned_origin = origin
        self.entries = 0
        self._genesis_seen = False
        self._handlers: dict[str, Callable[[_Acting], _Derived]] = {
            ins.RegisterParty.TYPE: self._register_party,
            ins.AddPartyKey.TYPE: self._add_party_key,
            ins.RevokePartyKey.TYPE: self._revoke_party_key,
            ins.OpenAccount.TYPE: self._open_account,
            ins.RegisterProject.TYPE: self._register_project,
            ins.SetProjectStatus.TYPE: self._set_project_status,
            ins.RegisterForestUnit.TYPE: self._register_forest_unit,
            ins.SubmitReport.TYPE: self._submit_report,
            ins.VerifyReport.TYPE: self._verify_report,
            ins.RejectReport.TYPE: self._reject_report,
            ins.WithdrawReport.TYPE: self._withdraw_report,
            ins.Issue.TYPE: self._issue,
            ins.Transfer.TYPE: self._transfer,
            ins.Retire.TYPE: self._retire,
            ins.Cancel.TYPE: self._cancel,
            ins.RecordReversal.TYPE: self._reversal,
        }
        self._appliers: dict[str, Callable[[_Acting], None]] = {
            ins.Issue.TYPE: self._apply_issue,
            ins.Transfer.TYPE: self._apply_move,
            ins.Retire.TYPE: self._apply_move,
            ins.Cancel.TYPE: self._apply_move,
            ins.RecordReversal.TYPE: self._apply_reversal,
        }
        assert set(self._handlers) == set(ins.BODIES), "every instruction type is replayed"

    def fail(self, seq: int | None, code: str, message: str) -> None:
        self.report.add(Failure(code=code, message=message, seq=seq))

    # -- driving --

    def apply(self, entry: Entry, signature: SignatureCheck | None = None) -> None:
        """Replay one entry (the next in the ledger); ``signature`` may carry a precomputed
        check of its instruction signature."""
        self.entries += 1
        if not self._genesis_seen:
            if entry.kind != GENESIS_KIND:
                self.fail(
                    entry.seq,
                    "no_genesis",
                    f"the first entry must be {GENESIS_KIND}, got {entry.kind}",
                )
            else:
                self._genesis(entry)
            self._genesis_seen = True
            if entry.kind == GENESIS_KIND:
                return
        if entry.kind == GENESIS_KIND:
            self.fail(entry.seq, "second_genesis", "a second genesis entry; only entry 0 is one")
            return
        if entry.kind == ROTATION_KIND:
            return  # no state but the registry's key, which the log auditor follows
        handler = self._handlers.get(entry.kind)
        if handler is None:
            self.fail(
                entry.seq,
                "unknown_kind",
                f"entry kind {entry.kind!r} is not a use case "
                "the registry has; its changes cannot be replayed",
            )
            return
        acting = self._authenticate(entry, signature)
        if acting is None:
            return
        problem = _text_problem(entry.payload["instruction"].get("body"), self.state.plain_text)
        if problem is not None:
            self.fail(
                entry.seq, "invalid_request", f"{entry.kind} should have been refused: {problem}"
            )
        try:
            derived: _Derived | None = handler(acting)
        except RegistryError as e:
            self.fail(entry.seq, e.code, f"{entry.kind} should have been refused: {e.message}")
            derived = None
        # The kinds with an applier read their effects with a strict model, which refuses a
        # boolean for a number: for them (every transfer) Python's own comparison is enough.
        strict = entry.kind in self._appliers
        if derived is not None and (
            derived.effects != acting.effects
            or (not strict and not _same_json(acting.effects, derived.effects))
        ):
            diffs: list[str] = []
            _differences("effects", acting.effects, derived.effects, diffs)
            self.fail(
                entry.seq,
                "effects_mismatch",
                f"{entry.kind}: recorded effects differ from the replay: " + "; ".join(diffs),
            )
        applier = self._appliers.get(entry.kind)
        if applier is not None:
            with contextlib.suppress(_Refused):
                applier(acting)
        elif derived is not None and derived.apply is not None:
            derived.apply()

    def finish(self) -> LogReport:
        """Whole-state invariants: the ledger began with a genesis, each batch's serials are
        1..quantity exactly once, and each forest unit's shortfall is the sum of its
        reversals'."""
        if not self._genesis_seen:
            # Only genesis binds a ledger to the pinned key and origin: without one, an empty
            # file anyone could write would pass.
            self.fail(None, "no_genesis", "the ledger has no entries, so no genesis entry")
        state = self.state
        for batch_id in sorted(state.blocks):
            batch = state.batches[batch_id]
            expected = 1
            for block in state.blocks[batch_id]:
                if block.start != expected:
                    what = "missing" if block.start > expected else "in two blocks"
                    lo, hi = sorted((expected, block.start))
                    self.fail(
                        None,
                        "supply_not_conserved",
                        f"batch {batch_id}: serials {lo}-{hi - 1} are {what}",
                    )
                expected = block.end + 1
            if expected != batch.quantity + 1:
                self.fail(
                    None,
                    "supply_not_conserved",
                    f"batch {batch_id}: blocks end at serial {expected - 1}, the batch "
                    f"issued {batch.quantity}",
                )
            supply = state.supply(batch_id)
            if sum(supply.values()) != batch.quantity:
                self.fail(
                    None,
                    "supply_not_conserved",
                    f"batch {batch_id}: issued {batch.quantity} != active {supply[ACTIVE]} "
                    f"+ retired {supply[RETIRED]} + cancelled {supply[CANCELLED]}",
                )
        shortfalls: dict[str, int] = {}
        for reversal in state.reversals.values():
            shortfalls[reversal.unit_id] = shortfalls.get(reversal.unit_id, 0) + reversal.shortfall
        for unit in state.units.values():
            recorded = shortfalls.get(unit.id, 0)
            if recorded != unit.shortfall:
                self.fail(
                    None,
                    "buffer_mismatch",
                    f"forest unit {unit.id}: shortfall {unit.shortfall} is not the sum of "
                    f"its reversals' shortfalls ({recorded})",
                )
        return self.report

    # -- genesis --

    def _genesis(self, entry: Entry) -> None:
        seq, state = entry.seq, self.state
        if entry.seq != 0:
            self.fail(seq, "no_genesis", f"genesis must be entry 0, it is entry {entry.seq}")
        try:
            g = _Genesis.model_validate(entry.payload)
            key = PublicKey.from_b64(g.registry_key.public_key)
            admin_key = PublicKey.from_b64(g.administrator.public_key)
            verifier = NoteVerifier.parse(g.registry_key.note_verifier)
        except (ValidationError, MalformedError) as e:
            self.fail(seq, "malformed", f"genesis payload is not valid: {e}")
            return
        if key.key_id != g.registry_key.key_id:
            self.fail(
                seq,
                "malformed",
                f"genesis registry key_id {g.registry_key.key_id} is not "
                f"the SHA-256 of its key ({key.key_id})",
            )
        if verifier.key != key or verifier.name != g.origin:
            self.fail(
                seq,
                "malformed",
                f"genesis note verifier {verifier.describe()} is not the "
                f"registry key under the origin {g.origin!r}",
            )
        if self.pinned_key is not None and key != self.pinned_key:
            self.fail(
                seq,
                "unknown_key",
                f"genesis names registry key {key.key_id}, not the "
                f"pinned key {self.pinned_key.key_id}",
            )
        if self.pinned_origin is not None and g.origin != self.pinned_origin:
            self.fail(
                seq,
                "malformed",
                f"genesis names origin {g.origin!r}, the bundle is for {self.pinned_origin!r}",
            )
        state.origin = g.origin
        state.registry_keys = [KeyPeriod(key, 0)]
        state.instructions_name_registry = g.instructions_name_registry
        state.issuance_to_project_side = g.issuance_to_project_side
        state.status_changes_change = g.status_changes_change
        state.max_active_keys = g.max_active_keys
        state.plain_text = g.plain_text
        state.methodology_of_partner_country = g.methodology_of_partner_country
        a = g.administrator
        if admin_key.key_id != a.key_id:
            self.fail(
                seq,
                "malformed",
                f"genesis administrator key_id {a.key_id} is not the "
                f"SHA-256 of its key ({admin_key.key_id})",
            )
        state.parties[a.party_id] = PartyState(a.party_id, a.name, a.role, a.country, seq)
        state.keys[admin_key.key_id] = KeyState(admin_key.key_id, a.party_id, admin_key.raw, seq)
        for acc in g.accounts:
            if acc.holder not in state.parties:
                self.fail(
                    seq,
                    "not_found",
                    f"genesis account {acc.account_id} is held by unknown party {acc.holder}",
                )
            state.accounts[acc.account_id] = AccountState(
                acc.account_id, acc.holder, acc.kind, acc.name, None, seq
            )
        for needed, kind in (
            (RETIREMENT_ACCOUNT, "retirement"),
            (CANCELLATION_ACCOUNT, "cancellation"),
        ):
            found = state.accounts.get(needed)
            if found is None or found.kind != kind:
                self.fail(seq, "malformed", f"genesis must open the {kind} account {needed}")

    # -- authority --

    def _authenticate(self, entry: Entry, precomputed: SignatureCheck | None) -> _Acting | None:
        seq, kind, state = entry.seq, entry.kind, self.state
        payload = entry.payload
        if payload.keys() != _INSTRUCTION_PAYLOAD:
            self.fail(
                seq,
                "malformed",
                f"{kind} payload must hold instruction, signature and "
                f"effects; it holds {sorted(payload)}",
            )
            return None
        raw_instruction = payload["instruction"]
        try:
            signed = ins.SignedInstruction.model_validate(
                {"instruction": raw_instruction, "signature": payload["signature"]}
            )
        except ValidationError as e:
            self.fail(
                seq, "malformed", f"{kind}: the signed instruction is not valid: {_first_error(e)}"
            )
            return None
        instruction = signed.instruction
        if instruction.type != kind:
            self.fail(
                seq,
                "kind_mismatch",
                f"entry kind is {kind}, but the signed instruction is a {instruction.type}",
            )
        try:
            body = ins.BODIES[kind].model_validate(instruction.body)
        except ValidationError as e:
            self.fail(
                seq, "malformed", f"{kind}: the instruction body is not valid: {_first_error(e)}"
            )
            return None
        named = instruction.registry
        if named is None:
            if state.instructions_name_registry:
                self.fail(
                    seq,
                    "wrong_registry",
                    f"{kind}: the instruction names no registry; every instruction of this "
                    f"ledger must name {state.origin!r} (its genesis says so)",
                )
            elif state.registry_named_since is not None:
                self.fail(
                    seq,
                    "wrong_registry",
                    f"{kind}: the instruction names no registry; the instructions of this "
                    f"ledger name {state.origin!r} since entry {state.registry_named_since}",
                )
        elif named != state.origin:
            self.fail(
                seq,
                "wrong_registry",
                f"{kind}: the instruction is for registry {named!r}, this ledger is "
                f"{state.origin!r}",
            )
        elif state.registry_named_since is None:
            state.registry_named_since = seq
        actor = instruction.actor
        if entry.actor != actor:
            self.fail(
                seq,
                "actor_mismatch",
                f"entry actor is {entry.actor}, but the instruction is signed as {actor}",
            )
        party = state.parties.get(actor)
        if party is None:
            self.fail(seq, "unauthenticated", f"{kind} by unknown party {actor!r}")
        key = state.keys.get(instruction.key_id)
        if key is None or key.party_id != actor:
            self.fail(
                seq,
                "unauthenticated",
                f"{kind}: key {instruction.key_id} was not a key of party {actor} at this "
                "entry" + ("" if key is None else f" (it is party {key.party_id}'s)"),
            )
        else:
            if key.revoked_seq is not None:
                self.fail(
                    seq,
                    "key_revoked",
                    f"{kind}: key {key.key_id} of party {actor} was "
                    f"revoked at entry {key.revoked_seq}, before this one",
                )
            if precomputed is not None and precomputed.key_id == key.key_id:
                ok = precomputed.ok
            else:
                ok = check_instruction_signature(
                    raw_instruction, payload["signature"], key.public_key, from_entry=True
                )
            if not ok:
                self.fail(
                    seq,
                    "bad_signature",
                    f"{kind}: the signature of party {actor} (key "
                    f"{key.key_id}) does not verify over its instruction",
                )
        now = entry.timestamp
        expires = parse_expiry(instruction.expires)
        if expires is None:
            self.fail(seq, "malformed", f"{kind}: expires {instruction.expires!r} is not a time")
        elif expires <= now:
            self.fail(
                seq,
                "instruction_expired",
                f"{kind}: the instruction expired at "
                f"{instruction.expires}, before the entry's time {entry.time}",
            )
        elif expires > now + MAX_VALIDITY:
            self.fail(
                seq,
                "instruction_expired",
                f"{kind}: expires {instruction.expires} is more "
                f"than {MAX_VALIDITY.days} days after the entry's time {entry.time}",
            )
        used = state.nonces.setdefault(actor, {})
        first = used.get(instruction.nonce)
        if first is not None:
            self.fail(
                seq,
                "nonce_reused",
                f"{kind}: nonce {instruction.nonce} of party {actor} "
                f"was already used at entry {first}: a replayed instruction",
            )
        else:
            used[instruction.nonce] = seq
        return _Acting(
            entry=entry,
            now=now,
            kind=kind,
            actor=actor,
            party=party,
            body=body,
            effects=payload["effects"],
            names_registry=instruction.registry is not None,
        )

    def _require_role(self, acting: _Acting, *roles: str) -> None:
        role = acting.party.role if acting.party is not None else "unknown"
        if role not in roles:
            self.fail(
                acting.seq,
                "forbidden",
                f"{acting.kind} needs the role {' or '.join(roles)}; party {acting.actor} "
                f"is {role}",
            )

    def _self_or_admin(self, acting: _Acting, party_id: str) -> None:
        role = acting.party.role if acting.party is not None else "unknown"
        if role != "administrator" and acting.actor != party_id:
            self.fail(
                acting.seq,
                "forbidden",
                f"{acting.kind}: only an administrator or party "
                f"{party_id} itself may change its keys, not {acting.actor}",
            )

    # -- parties, keys, accounts --

    def _new_key(self, text: str, pending: set[str]) -> PublicKey:
        try:
            key = PublicKey.from_b64(text)
        except RegistryError as e:  # not base64, not 32 bytes, or a weak key, as the service says
            raise InvalidRequestError(f"public key {text[:60]!r}: {e.message}") from e
        if key.key_id in self.state.keys or key.key_id in pending:
            raise ConflictError(f"key {key.key_id} is already registered")
        pending.add(key.key_id)
        return key

    def _register_party(self, acting: _Acting) -> _Derived:
        self._require_role(acting, "administrator")
        b: ins.RegisterParty = acting.body
        state, seq = self.state, acting.seq
        if b.party_id in state.parties:
            raise ConflictError(f"party {b.party_id} already exists")
        pending: set[str] = set()
        keys = [self._new_key(k, pending) for k in b.public_keys]

        def apply() -> None:
            state.parties[b.party_id] = PartyState(b.party_id, b.name, b.role, b.country, seq)
            for k in keys:
                state.keys[k.key_id] = KeyState(k.key_id, b.party_id, k.raw, seq)

        return _Derived({"party_id": b.party_id, "key_ids": [k.key_id for k in keys]}, apply)

    def _add_party_key(self, acting: _Acting) -> _Derived:
        b: ins.AddPartyKey = acting.body
        state, seq = self.state, acting.seq
        if acting.actor != b.party_id:
            self.fail(
                acting.seq,
                "forbidden",
                f"party.key_add: only party {b.party_id} itself may add a key to itself, "
                f"not {acting.actor}",
            )
        _get(state.parties, b.party_id, "party")
        if state.max_active_keys is not None:  # a ledger begun under the limit
            active = sum(
                1 for k in state.keys.values() if k.party_id == b.party_id and k.revoked_seq is None
            )
            if active >= state.max_active_keys:
                raise StateError(
                    f"party {b.party_id} already has {active} active keys, the most a party "
                    "may hold: revoke one before adding another"
                )
        key = self._new_key(b.public_key, set())

        def apply() -> None:
            state.keys[key.key_id] = KeyState(key.key_id, b.party_id, key.raw, seq)

        return _Derived({"party_id": b.party_id, "key_id": key.key_id}, apply)

    def _revoke_party_key(self, acting: _Acting) -> _Derived:
        b: ins.RevokePartyKey = acting.body
        state = self.state
        self._self_or_admin(acting, b.party_id)
        key: KeyState = _get(state.keys, b.key_id, "key")
        if key.party_id != b.party_id:
            raise InvalidRequestError(f"key {b.key_id} is not a key of party {b.party_id}")
        if key.revoked_seq is not None:
            raise StateError(f"key {b.key_id} is already revoked")
        active = [
            k for k in state.keys.values() if k.party_id == b.party_id and k.revoked_seq is None
        ]
        if len(active) <= 1:
            raise StateError(
                f"refusing to revoke the last active key of party {b.party_id}: add a new key first"
            )

        def apply() -> None:
            key.revoked_seq = acting.seq

        return _Derived({"party_id": b.party_id, "key_id": b.key_id}, apply)

    def _open_account(self, acting: _Acting) -> _Derived:
        self._require_role(acting, "administrator")
        b: ins.OpenAccount = acting.body
        state = self.state
        holder: PartyState = _get(state.parties, b.holder, "party")
        if holder.role in {"auditor", "third_party_entity"}:
            raise InvalidRequestError(f"a {holder.role} cannot hold credits")
        if b.account_id in state.accounts:
            raise ConflictError(f"account {b.account_id} already exists")

        def apply() -> None:
            state.accounts[b.account_id] = AccountState(
                b.account_id, holder.id, "holding", b.name, None, acting.seq
            )

        return _Derived({"account_id": b.account_id}, apply)

    # -- projects, units, reports --

    def _party_with_role(self, party_id: str, *roles: str) -> None:
        party: PartyState = _get(self.state.parties, party_id, "party")
        if party.role not in roles:
            raise InvalidRequestError(
                f"party {party_id} is a {party.role}, expected {' or '.join(roles)}"
            )

    def _register_project(self, acting: _Acting) -> _Derived:
        self._require_role(acting, "administrator")
        b: ins.RegisterProject = acting.body
        state = self.state
        if b.programme is None and acting.names_registry:
            # Programmes were required before instructions named their registry: a registration
            # naming both the registry and no programme was refused when it was written.
            raise InvalidRequestError(
                "programme is required: JCM (reports cover the whole project) or REDD+ (reports "
                "by forest unit)"
            )
        if state.methodology_of_partner_country:
            check_country_and_methodology(b.partner_country, b.methodology)
        if b.project_id in state.projects:
            raise ConflictError(f"project {b.project_id} already exists")
        if b.crediting_period_end < b.crediting_period_start:
            raise InvalidRequestError(
                f"crediting period ends ({b.crediting_period_end}) before it starts "
                f"({b.crediting_period_start})"
            )
        if len(set(b.participants)) != len(b.participants):
            raise InvalidRequestError("participants are listed twice")
        for p in b.participants:
            self._party_with_role(p, "participant", "government")
        self._party_with_role(b.third_party_entity, "third_party_entity")

        # A registration naming no programme (and no registry) is one from before projects named
        # it, and its project keeps the rule of then.

        def apply() -> None:
            state.projects[b.project_id] = ProjectState(
                b.project_id,
                b.title,
                b.partner_country,
                b.methodology,
                b.sector,
                b.programme,
                list(b.participants),
                b.third_party_entity,
                b.crediting_period_start,
                b.crediting_period_end,
                "registered",
                acting.seq,
            )

        return _Derived({"project_id": b.project_id, "status": "registered"}, apply)

    def _set_project_status(self, acting: _Acting) -> _Derived:
        self._require_role(acting, "administrator")
        b: ins.SetProjectStatus = acting.body
        project: ProjectState = _get(self.state.projects, b.project_id, "project")
        if project.status == "closed":
            raise ConflictError(f"project {project.id} is closed; its status cannot change")
        if self.state.status_changes_change and project.status == b.status:
            raise StateError(f"project {project.id} is already {project.status}")
        previous = project.status

        def apply() -> None:
            project.status = b.status

        return _Derived({"project_id": project.id, "from": previous, "to": b.status}, apply)

    def _register_forest_unit(self, acting: _Acting) -> _Derived:
        self._require_role(acting, "administrator")
        b: ins.RegisterForestUnit = acting.body
        state = self.state
        if b.unit_id in state.units:
            raise ConflictError(f"forest unit {b.unit_id} already exists")
        project: ProjectState = _get(state.projects, b.project_id, "project")
        if project.status == "closed" and acting.names_registry:
            raise StateError(f"project {project.id} is closed; it cannot gain a forest unit")
        check_unit_can_join(
            project_id=project.id,
            programme=project.programme,
            project_wide_reports=lambda: [
                r.id
                for r in state.reports.values()
                if r.project_id == b.project_id
                and r.forest_unit_id is None
                and r.status not in CLOSED_REPORT_STATUSES
            ],
        )
        from registry.domain.forest import (
            check_no_overlap,
            edge_by_edge_hectares,
            parse_boundary_text,
        )

        boundary = parse_boundary_text(b.boundary)
        area = boundary.area_hectares
        recorded = acting.effects.get("area_ha") if isinstance(acting.effects, dict) else None
        if recorded != area and recorded == edge_by_edge_hectares(boundary):
            area = recorded  # a unit registered before edges were cut: its measure of then
        if area < 1 and acting.names_registry:
            raise InvalidGeometryError(
                f"boundary covers {boundary.area_m2:.4g} m2, which is 0 ha in whole hectares: a "
                "forest unit must cover at least half a hectare"
            )
        check_no_overlap(
            boundary,
            [(u.id, u.boundary) for u in state.units.values()],
            tolerance_ha=OVERLAP_TOLERANCE_HA,
        )
        buffer = buffer_account_id(b.unit_id)
        if buffer in state.accounts:
            raise ConflictError(f"account {buffer} already exists")

        def apply() -> None:
            state.accounts[buffer] = AccountState(
                buffer,
                acting.actor,
                "buffer",
                f"Non-permanence buffer pool of {b.name}",
                b.unit_id,
                acting.seq,
            )
            state.units[b.unit_id] = UnitState(
                b.unit_id,
                b.project_id,
                b.name,
                boundary,
                area,
                b.jurisdiction,
                b.reference_level,
                b.leakage_rate_bp,
                b.buffer_rate_bp,
                buffer,
                0,
                acting.seq,
            )

        effects = {
            "unit_id": b.unit_id,
            "area_ha": area,
            "buffer_account": buffer,
        }
        return _Derived(effects, apply)

    def _submit_report(self, acting: _Acting) -> _Derived:
        b: ins.SubmitReport = acting.body
        state = self.state
        project: ProjectState = _get(state.projects, b.project_id, "project")
        if acting.actor not in project.participants:
            self.fail(
                acting.seq,
                "forbidden",
                f"party {acting.actor} is not a participant of project {project.id}",
            )
        if project.status != "registered":
            raise StateError(f"project {project.id} is {project.status}; it cannot report")
        if b.report_id in state.reports:
            raise ConflictError(f"report {b.report_id} already exists")
        check_report_period(
            period_start=b.period_start,
            period_end=b.period_end,
            crediting_start=project.crediting_period_start,
            crediting_end=project.crediting_period_end,
            today=acting.now.date(),
        )
        check_report_area(
            project_id=project.id,
            programme=project.programme,
            forest_unit_id=b.forest_unit_id,
            reference_levels={
                u.id: u.reference_level for u in state.units.values() if u.project_id == project.id
            },
            reductions=b.reductions,
            period_start=b.period_start,
            period_end=b.period_end,
        )
        check_no_period_overlap(
            period_start=b.period_start,
            period_end=b.period_end,
            forest_unit_id=b.forest_unit_id,
            others=[
                (o.id, o.period_start, o.period_end, o.forest_unit_id)
                for o in state.reports.values()
                if o.project_id == project.id and o.status not in CLOSED_REPORT_STATUSES
            ],
        )

        def apply() -> None:
            state.reports[b.report_id] = ReportState(
                b.report_id,
                project.id,
                b.forest_unit_id,
                b.period_start,
                b.period_end,
                b.reductions,
                b.document_sha256,
                "submitted",
                acting.seq,
            )

        return _Derived({"report_id": b.report_id, "status": "submitted"}, apply)

    def _verify_report(self, acting: _Acting) -> _Derived:
        b: ins.VerifyReport = acting.body
        report = self._submitted_report(acting, b.report_id, by_verifier=True)
        if b.verified_reductions > report.reductions:
            raise InvalidRequestError(
                f"verified {b.verified_reductions} tCO2e exceeds the {report.reductions} claimed"
            )

        def apply() -> None:
            report.status = "verified"
            report.verified_reductions = b.verified_reductions
            report.verifier = acting.actor
            report.statement_sha256 = b.statement_sha256
            report.verified_seq = acting.seq

        effects = {
            "report_id": report.id,
            "status": "verified",
            "verified_reductions": b.verified_reductions,
        }
        return _Derived(effects, apply)

    def _reject_report(self, acting: _Acting) -> _Derived:
        b: ins.RejectReport = acting.body
        report = self._submitted_report(acting, b.report_id, by_verifier=True)

        def apply() -> None:
            report.status = "rejected"
            report.verifier = acting.actor
            report.statement_sha256 = b.statement_sha256

        return _Derived({"report_id": report.id, "status": "rejected"}, apply)

    def _withdraw_report(self, acting: _Acting) -> _Derived:
        b: ins.WithdrawReport = acting.body
        report = self._submitted_report(acting, b.report_id, by_verifier=False)

        def apply() -> None:
            report.status = "withdrawn"

        return _Derived({"report_id": report.id, "status": "withdrawn"}, apply)

    def _submitted_report(
        self, acting: _Acting, report_id: str, *, by_verifier: bool
    ) -> ReportState:
        """The report a verification, a rejection or a withdrawal decides on: still only
        submitted, and decided by the project's third-party entity (``by_verifier``) or by one
        of its participants."""
        state = self.state
        report: ReportState = _get(state.reports, report_id, "report")
        project: ProjectState = _get(state.projects, report.project_id, "project")
        if by_verifier and acting.actor != project.third_party_entity:
            verb = "verify" if acting.kind == ins.VerifyReport.TYPE else "reject"
            self.fail(
                acting.seq,
                "forbidden",
                f"only project {project.id}'s third-party entity "
                f"{project.third_party_entity} may {verb} its reports, not {acting.actor}",
            )
        if not by_verifier and acting.actor not in project.participants:
            self.fail(
                acting.seq,
                "forbidden",
                f"only a participant of project {project.id} may withdraw its reports, "
                f"not {acting.actor}",
            )
        if report.status != "submitted":
            raise StateError(f"report {report.id} is already {report.status}")
        return report

    # -- credits: deriving what should happen --

    def _issue(self, acting: _Acting) -> _Derived:
        self._require_role(acting, "administrator")
        b: ins.Issue = acting.body
        state = self.state
        report: ReportState = _get(state.reports, b.report_id, "report")
        if report.status == "issued":
            raise ConflictError(f"report {report.id} has already been issued against")
        if report.status != "verified" or report.verified_reductions is None:
            raise StateError(
                f"report {report.id} is {report.status}; only a verified report issues"
            )
        project: ProjectState = _get(state.projects, report.project_id, "project")
        if project.status != "registered":
            raise StateError(f"project {project.id} is {project.status}; it cannot issue")
        shares = [(a.account, a.quantity) for a in b.allocations]
        for account_id, _ in shares:
            allocated_to: AccountState = _get(state.accounts, account_id, "account")
            if allocated_to.kind != "holding":
                raise InvalidRequestError(f"account {account_id} is not a holding account")
            if state.issuance_to_project_side:  # a ledger begun under the rule
                holder: PartyState = _get(state.parties, allocated_to.holder, "party")
                check_allocation_holder(
                    project_id=project.id,
                    participants=project.participants,
                    account_id=account_id,
                    holder=holder.id,
                    role=holder.role,
                )
        terms = None
        if report.forest_unit_id is not None:
            unit: UnitState = _get(state.units, report.forest_unit_id, "forest unit")
            terms = BufferTerms(
                leakage_rate_bp=unit.leakage_rate_bp,
                buffer_rate_bp=unit.buffer_rate_bp,
                buffer_account=unit.buffer_account,
                pool=state.pool(unit.buffer_account),
            )
        plan = plan_issuance(
            country=project.partner_country,
            project_id=project.id,
            vintage=b.vintage,
            batch_number=1 + state.batch_numbers.get((project.id, b.vintage), 0),
            period_start=report.period_start,
            period_end=report.period_end,
            verified=report.verified_reductions,
            allocations=shares,
            redd=terms,
        )
        effects = plan.effects()
        return _Derived(effects)

    def _source(self, acting: _Acting, body: ins.Movement) -> AccountState:
        source: AccountState = _get(self.state.accounts, body.account, "account")
        if source.holder != acting.actor:
            self.fail(
                acting.seq,
                "forbidden",
                f"{acting.kind}: account {source.id} is held by "
                f"{source.holder}, not {acting.actor}, who signed the instruction",
            )
        if source.kind not in MOVABLE_FROM[acting.kind]:
            raise InvalidRequestError(
                f"credits in {source.kind} account {source.id} cannot move by {acting.kind}"
            )
        return source

    def _take(self, acting: _Acting, body: ins.Movement) -> list[SerialRange]:
        if (body.quantity is None) == (body.range is None):
            raise InvalidRequestError("give exactly one of quantity or range")
        source = self._source(acting, body)
        if body.batch not in self.state.batches:
            raise NotFoundError(f"no batch {body.batch!r}")
        held = self.state.held(source.id, body.batch)
        if body.range is not None:
            taken, _ = take_range(held, SerialRange(body.range.start, body.range.end))
        else:
            assert body.quantity is not None
            taken, _ = take_lowest(held, body.quantity)
        return taken

    def _transfer(self, acting: _Acting) -> _Derived:
        b: ins.Transfer = acting.body
        if b.to_account == b.account:
            raise InvalidRequestError("source and destination accounts are the same")
        destination: AccountState = _get(self.state.accounts, b.to_account, "account")
        if destination.kind != "holding":
            raise InvalidRequestError(
                f"{b.to_account} is a {destination.kind} account; transfers go to holding "
                "accounts (use a retirement or cancellation instead)"
            )
        taken = self._take(acting, b)
        return _Derived(
            {
                "batch": b.batch,
                "from": b.account,
                "to": b.to_account,
                "quantity": sum(r.quantity for r in taken),
                "blocks": _ranges(taken),
            }
        )

    def _retire(self, acting: _Acting) -> _Derived:
        b: ins.Retire = acting.body
        taken = self._take(acting, b)
        return _Derived(
            {
                "retirement_id": f"RET-{acting.seq}",
                "batch": b.batch,
                "from": b.account,
                "quantity": sum(r.quantity for r in taken),
                "blocks": _ranges(taken),
            }
        )

    def _cancel(self, acting: _Acting) -> _Derived:
        b: ins.Cancel = acting.body
        taken = self._take(acting, b)
        return _Derived(
            {
                "batch": b.batch,
                "from": b.account,
                "quantity": sum(r.quantity for r in taken),
                "blocks": _ranges(taken),
            }
        )

    def _reversal(self, acting: _Acting) -> _Derived:
        self._require_role(acting, "administrator")
        b: ins.RecordReversal = acting.body
        state = self.state
        unit: UnitState = _get(state.units, b.unit_id, "forest unit")
        batches = state.held_batches(unit.buffer_account)
        held = {batch: state.held(unit.buffer_account, batch) for batch in batches}
        pool = sum(r.quantity for ranges in held.values() for r in ranges)
        outcome = compute_reversal(lost=b.lost, pool=pool)
        unit_shortfall_after(unit_id=unit.id, shortfall=unit.shortfall, added=outcome.shortfall)
        remaining = outcome.cancelled
        cancelled: list[dict[str, Any]] = []
        for batch in batches:
            if remaining == 0:
                break
            ranges = held[batch]
            taken, _ = take_lowest(ranges, min(remaining, sum(r.quantity for r in ranges)))
            remaining -= sum(t.quantity for t in taken)
            cancelled.extend({"batch": batch, "start": t.start, "end": t.end} for t in taken)
        return _Derived(
            {
                "unit_id": unit.id,
                "lost": b.lost,
                "pool_before": pool,
                "cancelled": outcome.cancelled,
                "shortfall": outcome.shortfall,
                "blocks": cancelled,
            }
        )

    # -- credits: applying what the entry says happened --

    def _effects(self, acting: _Acting, model: type[_M]) -> _M:
        try:
            return model.model_validate(acting.effects)
        except ValidationError as e:
            self.fail(
                acting.seq,
                "malformed",
                f"{acting.kind}: effects cannot be applied: {_first_error(e)}",
            )
            raise _Refused from e

    def _span(self, acting: _Acting, batch: str, span: _Span) -> SerialRange:
        try:
            return SerialRange(span.start, span.end)
        except RegistryError as e:
            self.fail(
                acting.seq,
                "malformed",
                f"{acting.kind}: block {batch} {span.start}-"
                f"{span.end} is not a serial range: {e.message}",
            )
            raise _Refused from e

    def _account(self, acting: _Acting, account_id: str, what: str) -> AccountState:
        account = self.state.accounts.get(account_id)
        if account is None:
            self.fail(
                acting.seq,
                "not_found",
                f"{acting.kind} {what} account {account_id}, which does not exist",
            )
            raise _Refused
        return account

    def _apply_issue(self, acting: _Acting) -> None:
        e = self._effects(acting, _IssueEffects)
        state, seq, b = self.state, acting.seq, acting.body
        try:
            serial = parse_batch_serial_id(e.batch)
        except RegistryError as err:
            self.fail(seq, "malformed", f"credits.issue: {err.message}")
            raise _Refused from err
        if e.batch in state.batches:
            self.fail(
                seq,
                "duplicate_serial",
                f"credits.issue creates batch {e.batch} again "
                f"(first issued at entry {state.batches[e.batch].issued_seq}): its "
                "serials would be in two blocks",
            )
            raise _Refused
        report = state.reports.get(b.report_id)
        if report is None or report.status != "verified" or report.verified_reductions is None:
            status = "missing" if report is None else report.status
            code = "report_issued_twice" if status == "issued" else "issued_without_verification"
            self.fail(
                seq,
                code,
                f"credits.issue creates batch {e.batch} from report "
                f"{b.report_id}, which is {status}: only a verified report issues, once",
            )
        ranges: list[tuple[str, SerialRange]] = []
        for span in e.blocks:
            self._account(acting, span.account, "allocates to")
            ranges.append((span.account, self._span(acting, e.batch, span)))
        expected = 1
        for _account_id, r in sorted(ranges, key=lambda item: item[1]):
            if r.start != expected:
                self.fail(
                    seq,
                    "supply_not_conserved",
                    f"credits.issue: the blocks of {e.batch} "
                    f"must cover 1..{e.quantity} once each; serial {min(expected, r.start)}"
                    " is missing or in two blocks",
                )
                raise _Refused
            expected = r.end + 1
        if expected != e.quantity + 1:
            self.fail(
                seq,
                "supply_not_conserved",
                f"credits.issue: the blocks of {e.batch} hold "
                f"{expected - 1} serials, but its quantity is {e.quantity}",
            )
            raise _Refused
        if report is not None and report.verified_reductions is not None:
            self._check_issued_amounts(acting, e, report)
        project_id = report.project_id if report is not None else serial.project_id
        state.batches[e.batch] = BatchState(
            e.batch,
            project_id,
            b.report_id,
            serial.programme,
            serial.vintage,
            serial.number,
            e.quantity,
            seq,
        )
        key = (project_id, serial.vintage)
        state.batch_numbers[key] = state.batch_numbers.get(key, 0) + 1
        state.blocks[e.batch] = BatchBlocks(e.batch)
        for account_id, r in ranges:
            state.add_block(Block(e.batch, r, account_id, ACTIVE))
        if report is not None:
            report.status = "issued"

    def _check_issued_amounts(self, acting: _Acting, e: _IssueEffects, report: ReportState) -> None:
        """Nothing beyond what was verified: JCM <= verified; REDD+ <= net after leakage, with
        the buffer pool receiving exactly its share."""
        seq, verified = acting.seq, report.verified_reductions
        assert verified is not None
        unit = self.state.units.get(report.forest_unit_id) if report.forest_unit_id else None
        if unit is None:
            if e.quantity > verified:
                self.fail(
                    seq,
                    "over_issuance",
                    f"credits.issue issues {e.quantity} tCO2e from "
                    f"report {report.id}, which verified only {verified}",
                )
            return
        calc = compute_issuance(
            gross=verified, leakage_bp=unit.leakage_rate_bp, buffer_bp=unit.buffer_rate_bp
        )
        to_buffer = sum(s.end - s.start + 1 for s in e.blocks if s.account == unit.buffer_account)
        if e.quantity > calc.net:
            self.fail(
                seq,
                "redd_over_issuance",
                f"credits.issue issues {e.quantity} tCO2e from REDD+ report {report.id}, "
                f"more than the {calc.net} net verified reductions after leakage "
                f"(gross {calc.gross}, leakage {calc.leakage})",
            )
        if to_buffer != calc.buffer:
            self.fail(
                seq,
                "buffer_mismatch",
                f"credits.issue puts {to_buffer} tCO2e in buffer pool "
                f"{unit.buffer_account}; {unit.buffer_rate_bp} bp of net {calc.net} is "
                f"{calc.buffer}",
            )
        if e.quantity - to_buffer > calc.issuable:
            self.fail(
                seq,
                "redd_over_issuance",
                f"credits.issue gives {e.quantity - to_buffer} tCO2e to the proponent; "
                f"net after leakage and buffer is {calc.issuable}",
            )

    def _check_held(
        self, acting: _Acting, batch: str, source: str, taken: list[SerialRange]
    ) -> None:
        """Every serial to move is active and held by ``source``: no negative holdings, and
        nothing retired or cancelled ever moves again."""
        state, seq, kind = self.state, acting.seq, acting.kind
        quantity = state.batches[batch].quantity
        ok = True
        for r in sorted(taken):
            if r.end > quantity:
                self.fail(
                    seq,
                    "serials_not_held",
                    f"{kind} moves serials {r} of {batch}, which has only serials 1-{quantity}",
                )
                ok = False
                continue
            for block in state.blocks[batch].covering(r):
                if block.status == ACTIVE and block.account == source:
                    continue
                piece = SerialRange(max(block.start, r.start), min(block.end, r.end))
                if block.status != ACTIVE:
                    self.fail(
                        seq,
                        f"moved_{block.status}_serials",
                        f"{kind} moves serials {piece} of {batch}, which are already "
                        f"{block.status} (in {block.account}) and can never move again",
                    )
                    ok = False
                elif block.account != source:
                    self.fail(
                        seq,
                        "serials_not_held",
                        f"{kind} moves serials {piece} of {batch} from {source}, but "
                        f"{block.account} holds them: {source}'s holding would go "
                        "negative",
                    )
                    ok = False
        if not ok:
            raise _Refused

    def _taken(
        self, acting: _Acting, batch: str, spans: Iterable[_Span], quantity: int
    ) -> list[SerialRange]:
        taken = [self._span(acting, batch, s) for s in spans]
        ordered = sorted(taken)
        for before, after in itertools.pairwise(ordered):
            if after.start <= before.end:
                self.fail(
                    acting.seq,
                    "duplicate_serial",
                    f"{acting.kind} names serials "
                    f"{after.start}-{min(before.end, after.end)} of {batch} twice",
                )
                raise _Refused
        moved = sum(r.quantity for r in taken)
        if moved != quantity:
            self.fail(
                acting.seq,
                "supply_not_conserved",
                f"{acting.kind} says {quantity} tCO2e moved, but its blocks hold {moved}",
            )
            raise _Refused
        return taken

    def _apply_move(self, acting: _Acting) -> None:
        e = self._effects(acting, _MoveEffects)
        state, kind = self.state, acting.kind
        if e.batch not in state.batches:
            self.fail(
                acting.seq,
                "not_found",
                f"{kind} moves credits of batch {e.batch}, which was never issued",
            )
            raise _Refused
        if kind == ins.Transfer.TYPE:
            to, status = e.to or "", ACTIVE
        elif kind == ins.Retire.TYPE:
            to, status = RETIREMENT_ACCOUNT, RETIRED
        else:
            to, status = CANCELLATION_ACCOUNT, CANCELLED
        self._account(acting, e.from_, "moves credits from")
        self._account(acting, to, "moves credits to")
        taken = self._taken(acting, e.batch, e.blocks, e.quantity)
        self._check_held(acting, e.batch, e.from_, taken)
        state.move(e.batch, taken, to=to, status=status)
        if kind == ins.Retire.TYPE:
            b: ins.Retire = acting.body
            rid = e.retirement_id or f"RET-{acting.seq}"
            state.retirements[rid] = RetirementState(
                rid,
                acting.seq,
                e.from_,
                e.batch,
                ",".join(f"{r.start}-{r.end}" for r in taken),
                e.quantity,
                b.beneficiary,
                b.purpose,
                b.jurisdiction,
                b.reason,
                acting.now,
            )

    def _apply_reversal(self, acting: _Acting) -> None:
        e = self._effects(acting, _ReversalEffects)
        state, seq = self.state, acting.seq
        b: ins.RecordReversal = acting.body
        unit = state.units.get(e.unit_id)
        if unit is None:
            self.fail(
                seq,
                "not_found",
                f"redd.reversal against forest unit {e.unit_id}, which does not exist",
            )
            raise _Refused
        pool = state.total(unit.buffer_account)
        if e.pool_before != pool:
            self.fail(
                seq,
                "buffer_mismatch",
                f"redd.reversal says buffer pool "
                f"{unit.buffer_account} held {e.pool_before} tCO2e; it held {pool}",
            )
        try:
            outcome = compute_reversal(lost=e.lost, pool=pool)
        except RegistryError as err:
            self.fail(seq, "malformed", f"redd.reversal: {err.message}")
            raise _Refused from err
        if (e.cancelled, e.shortfall) != (outcome.cancelled, outcome.shortfall):
            self.fail(
                seq,
                "buffer_mismatch",
                f"redd.reversal of {e.lost} tCO2e against a pool of {pool} must cancel "
                f"{outcome.cancelled} and record a shortfall of {outcome.shortfall}; it "
                f"says {e.cancelled} and {e.shortfall}",
            )
        by_batch: dict[str, list[_Span]] = {}
        for span in e.blocks:
            if span.batch not in state.batches:
                self.fail(
                    seq,
                    "not_found",
                    f"redd.reversal cancels credits of batch {span.batch}, which was never issued",
                )
                raise _Refused
            by_batch.setdefault(span.batch, []).append(span)
        moves = []
        for batch, spans in by_batch.items():
            taken = [self._span(acting, batch, s) for s in spans]
            self._check_held(acting, batch, unit.buffer_account, taken)
            moves.append((batch, taken))
        moved = sum(r.quantity for _, taken in moves for r in taken)
        if moved != e.cancelled:
            self.fail(
                seq,
                "buffer_mismatch",
                f"redd.reversal says it cancelled {e.cancelled} "
                f"buffer credits, its blocks hold {moved}",
            )
        for batch, taken in moves:
            state.move(batch, taken, to=CANCELLATION_ACCOUNT, status=CANCELLED)
        unit.shortfall += e.shortfall
        state.reversals[seq] = ReversalState(
            seq, unit.id, e.lost, e.cancelled, e.shortfall, b.document_sha256, b.reason
        )


def _text_problem(body: Any, plain: bool) -> str | None:
    """Why the service would have refused a string of ``body`` (a NUL; in a ledger begun
    under the rule, text not plain: see ``text_problem``)."""
    if type(body) is dict and all(
        type(v) is int
        or (type(v) is str and (ins.is_plain_text(v) if plain else "\x00" not in v))
        for v in body.values()
    ):
        return None  # the usual flat body, answered without a walk
    return ins.text_problem(body, "$.instruction.body", plain=plain)


def _first_error(e: ValidationError) -> str:
    err = e.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    return f"{where}: {err['msg']}"


def replay_entries(
    entries: Iterable[Entry], *, registry_key: PublicKey | None = None, origin: str | None = None
) -> tuple[ReplayedState, LogReport]:
    """Replay ``entries`` (opened, in order) and run the final checks: the state and report."""
    replay = Replay(registry_key=registry_key, origin=origin)
    for entry in entries:
        replay.apply(entry)
    return replay.state, replay.finish()
