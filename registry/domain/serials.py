"""Serial identifiers and serial-block arithmetic: the one place credits are counted.

Credits never exist one row per tonne. They exist as inclusive blocks ``(batch, start, end)`` of
1-based serials; a batch of quantity ``q`` spans ``1..q``. Every movement (transfer, retirement,
cancellation) either moves whole blocks or splits one, so the cost of any operation grows with the
number of blocks touched, never with the number of tonnes: issuing 10^9 tonnes is one block.

The functions here are pure. They are what the service layer uses to decide which blocks move, and
what the auditor uses to replay those decisions, so both get the same answer from the same code.
Every function either returns ranges that together hold exactly the serials it was given, or
raises: a serial is never created, lost or duplicated.

Text forms (all ASCII, one spelling per value, so a serial can be compared as a string):

* batch id   ``KH-JCM-KH001-2025-00001``  (country, programme, project, vintage, batch number)
* unit       ``<batch>-<n>``              e.g. ``KH-JCM-KH001-2025-00001-42``
* block      ``<batch>-<start>-<end>``    e.g. ``KH-JCM-KH001-2025-00001-1-1000`` (a one-serial
  block still prints both ends: ``...-7-7``)

Serial numbers are printed without padding or leading zeros; a leading zero is refused when
parsing, so no serial has two spellings.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from registry.errors import (
    DuplicateSerialError,
    InsufficientCreditsError,
    InvalidQuantityError,
    InvalidRequestError,
    InvalidSerialIdError,
    SerialRangeError,
    SerialsNotHeldError,
)

__all__ = [
    "MAX_SERIAL",
    "PROGRAMMES",
    "BatchSerial",
    "SerialRange",
    "allocate",
    "batch_serial_id",
    "check_disjoint",
    "coalesce",
    "format_block",
    "format_unit_serial",
    "parse_batch_serial_id",
    "parse_block",
    "parse_unit_serial",
    "require_quantity",
    "take_lowest",
    "take_range",
    "total_quantity",
]

#: Largest serial (and so largest batch): 2^53 - 1. Ledger payloads are RFC 8785 canonical JSON,
#: whose numbers are IEEE doubles; beyond this an integer cannot be written exactly.
MAX_SERIAL: Final = 2**53 - 1

#: Programmes a batch can belong to, as they appear in the batch id.
PROGRAMMES: Final = ("JCM", "REDD")

_MAX_PROJECT_ID_LEN: Final = 32
_BATCH_RE: Final = re.compile(
    rf"([A-Z]{{2}})-(JCM|REDD)-([A-Z0-9]{{1,{_MAX_PROJECT_ID_LEN}}})-([1-9][0-9]{{3}})-([0-9]{{5}})",
    re.ASCII,
)
_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}", re.ASCII)
_PROJECT_RE: Final = re.compile(rf"[A-Z0-9]{{1,{_MAX_PROJECT_ID_LEN}}}", re.ASCII)
# Canonical decimal: no sign, no leading zero, no underscores or spaces (int() accepts those).
_NUMBER_RE: Final = re.compile(r"[1-9][0-9]{0,15}", re.ASCII)


def _is_int(value: object) -> bool:
    """True for real integers; ``bool`` is an ``int`` subclass and is refused on purpose."""
    return isinstance(value, int) and not isinstance(value, bool)


def require_quantity(value: object, *, name: str = "quantity", maximum: int = MAX_SERIAL) -> int:
    """Return ``value`` if it is an int in ``1..maximum``; raise InvalidQuantityError otherwise.

    Bools and floats are refused explicitly, even ``5.0``: a quantity of credits is a count.
    """
    if not _is_int(value):
        raise InvalidQuantityError(
            f"{name} must be an integer, got {type(value).__name__} {value!r}",
            details={"field": name, "value": repr(value)},
        )
    assert isinstance(value, int)
    if value < 1 or value > maximum:
        raise InvalidQuantityError(
            f"{name} must be between 1 and {maximum}, got {value}",
            details={"field": name, "value": value},
        )
    return value


# --- identifiers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchSerial:
    """The parts of a batch id; ``str()`` gives the id, e.g. ``KH-JCM-KH001-2025-00001``.

    ``country`` is checked for shape (two uppercase ASCII letters), not against the ISO list.
    """

    country: str
    programme: str
    project_id: str
    vintage: int
    number: int

    def __post_init__(self) -> None:
        if not isinstance(self.country, str) or not _COUNTRY_RE.fullmatch(self.country):
            raise InvalidSerialIdError(
                f"country must be an ISO 3166-1 alpha-2 code in uppercase, got {self.country!r}"
            )
        if self.programme not in PROGRAMMES:
            raise InvalidSerialIdError(
                f"programme must be one of {', '.join(PROGRAMMES)}, got {self.programme!r}"
            )
        if not isinstance(self.project_id, str) or not _PROJECT_RE.fullmatch(self.project_id):
            raise InvalidSerialIdError(
                f"project id must be 1-{_MAX_PROJECT_ID_LEN} characters A-Z or 0-9, "
                f"got {self.project_id!r}"
            )
        if not _is_int(self.vintage) or not 1000 <= self.vintage <= 9999:
            raise InvalidSerialIdError(f"vintage must be a four-digit year, got {self.vintage!r}")
        if not _is_int(self.number) or not 1 <= self.number <= 99999:
            raise InvalidSerialIdError(
                f"batch number must be between 1 and 99999, got {self.number!r}"
            )

    def __str__(self) -> str:
        return (
            f"{self.country}-{self.programme}-{self.project_id}-{self.vintage:04d}-"
            f"{self.number:05d}"
        )


def batch_serial_id(
    *, country: str, programme: str, project_id: str, vintage: int, number: int
) -> str:
    """Build a batch id such as ``KH-JCM-KH001-2025-00001``, validating every part."""
    return str(
        BatchSerial(
            country=country,
            programme=programme,
            project_id=project_id,
            vintage=vintage,
            number=number,
        )
    )


def parse_batch_serial_id(text: str) -> BatchSerial:
    """Split a batch id into its parts; exactly the strings :func:`batch_serial_id` produces."""
    if not isinstance(text, str):
        raise InvalidSerialIdError(f"batch id must be a string, got {text!r}")
    match = _BATCH_RE.fullmatch(text)
    if match is None:
        raise InvalidSerialIdError(
            "batch id must look like KH-JCM-KH001-2025-00001 "
            f"(country-programme-project-vintage-number), got {text!r}"
        )
    country, programme, project_id, vintage, number = match.groups()
    return BatchSerial(
        country=country,
        programme=programme,
        project_id=project_id,
        vintage=int(vintage),
        number=int(number),
    )


def _parse_serial_number(part: str, text: str) -> int:
    if not _NUMBER_RE.fullmatch(part):
        raise InvalidSerialIdError(
            f"serial number must be a positive decimal without leading zeros, got {part!r} "
            f"in {text!r}"
        )
    return int(part)


def format_unit_serial(batch: str, serial: int) -> str:
    """The serial of one unit: ``<batch>-<n>``."""
    parse_batch_serial_id(batch)
    SerialRange(serial, serial)
    return f"{batch}-{serial}"


def parse_unit_serial(text: str) -> tuple[str, int]:
    """Split ``<batch>-<n>`` into ``(batch, n)``, from the right (batch ids contain hyphens)."""
    if not isinstance(text, str):
        raise InvalidSerialIdError(f"unit serial must be a string, got {text!r}")
    batch, sep, number = text.rpartition("-")
    if not sep:
        raise InvalidSerialIdError(f"unit serial must look like <batch>-<n>, got {text!r}")
    parse_batch_serial_id(batch)
    serial = _parse_serial_number(number, text)
    SerialRange(serial, serial)
    return batch, serial


def format_block(batch: str, serials: SerialRange) -> str:
    """The text of a block: ``<batch>-<start>-<end>`` (both ends, even when they are equal)."""
    parse_batch_serial_id(batch)
    return f"{batch}-{serials.start}-{serials.end}"


def parse_block(text: str) -> tuple[str, SerialRange]:
    """Split ``<batch>-<start>-<end>`` into ``(batch, SerialRange)``, parsing from the right."""
    if not isinstance(text, str):
        raise InvalidSerialIdError(f"block must be a string, got {text!r}")
    parts = text.rsplit("-", 2)
    if len(parts) != 3:
        raise InvalidSerialIdError(f"block must look like <batch>-<start>-<end>, got {text!r}")
    batch, start, end = parts
    parse_batch_serial_id(batch)
    return batch, SerialRange(_parse_serial_number(start, text), _parse_serial_number(end, text))


# --- ranges -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class SerialRange:
    """An inclusive range of serials ``start..end`` within one batch; never empty.

    Ordering is by ``(start, end)``, so ``sorted()`` gives ranges in serial order.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if not _is_int(value):
                raise SerialRangeError(
                    f"serial {name} must be an integer, got {type(value).__name__} {value!r}"
                )
        if self.start < 1:
            raise SerialRangeError(f"serials start at 1, got start {self.start}")
        if self.end < self.start:
            raise SerialRangeError(f"end must be >= start, got {self.start}-{self.end}")
        if self.end > MAX_SERIAL:
            raise SerialRangeError(f"serials end at {MAX_SERIAL}, got end {self.end}")

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    @property
    def quantity(self) -> int:
        """How many serials (tonnes) the range holds."""
        return self.end - self.start + 1

    def contains(self, item: int | SerialRange) -> bool:
        """True if the serial, or every serial of the range, lies in this range."""
        if isinstance(item, SerialRange):
            return self.start <= item.start and item.end <= self.end
        return self.start <= item <= self.end

    def overlaps(self, other: SerialRange) -> bool:
        """True if at least one serial is in both ranges (merely adjacent ranges do not overlap)."""
        return self.start <= other.end and other.start <= self.end

    def intersection(self, other: SerialRange) -> SerialRange | None:
        """The serials in both ranges, or None when they share none."""
        if not self.overlaps(other):
            return None
        return SerialRange(max(self.start, other.start), min(self.end, other.end))

    def split_at(self, serial: int) -> tuple[SerialRange, SerialRange]:
        """Split so that ``serial`` is the first serial of the second part.

        ``SerialRange(1, 10).split_at(4) == (SerialRange(1, 3), SerialRange(4, 10))``; both parts
        are non-empty, so ``start < serial <= end``.
        """
        if not _is_int(serial) or not self.start < serial <= self.end:
            raise SerialRangeError(
                f"split point must satisfy {self.start} < serial <= {self.end}, got {serial!r}"
            )
        return SerialRange(self.start, serial - 1), SerialRange(serial, self.end)


def _sorted_disjoint(ranges: Iterable[SerialRange]) -> list[SerialRange]:
    """The ranges in serial order, after checking they are SerialRanges and share no serial."""
    items = list(ranges)
    for r in items:
        if not isinstance(r, SerialRange):
            raise SerialRangeError(f"expected SerialRange, got {type(r).__name__} {r!r}")
    result = sorted(items)
    for before, after in itertools.pairwise(result):
        if after.start <= before.end:
            raise DuplicateSerialError(
                f"ranges {before} and {after} both hold serial {after.start}",
                details={
                    "first": {"start": before.start, "end": before.end},
                    "second": {"start": after.start, "end": after.end},
                    "serial": after.start,
                },
            )
    return result


def check_disjoint(ranges: Iterable[SerialRange]) -> None:
    """Raise DuplicateSerialError if any serial lies in two of the ranges (any order accepted).

    Pass the ranges of one batch; serials of different batches never collide.
    """
    _sorted_disjoint(ranges)


def total_quantity(ranges: Iterable[SerialRange]) -> int:
    """Sum of the ranges' quantities."""
    return sum(r.quantity for r in ranges)


def coalesce(ranges: Iterable[SerialRange]) -> list[SerialRange]:
    """Merge adjacent ranges (``1-5`` and ``6-9`` become ``1-9``); they must be disjoint."""
    merged: list[SerialRange] = []
    for r in _sorted_disjoint(ranges):
        if merged and merged[-1].end + 1 == r.start:
            merged[-1] = SerialRange(merged[-1].start, r.end)
        else:
            merged.append(r)
    return merged


def take_lowest(
    ranges: Sequence[SerialRange], quantity: int
) -> tuple[list[SerialRange], list[SerialRange]]:
    """Take ``quantity`` serials from the lowest serials one account holds in one batch.

    ``ranges`` are the account's blocks in the batch (any order; they must be disjoint). Returns
    ``(taken, remaining)``, each in serial order. Pieces are not merged: every returned range lies
    inside exactly one input range, so the caller can tell which stored block each came from. At
    most one input range is split.
    """
    wanted = require_quantity(quantity)
    held = _sorted_disjoint(ranges)
    available = total_quantity(held)
    if wanted > available:
        raise InsufficientCreditsError(
            f"asked for {wanted} credits but only {available} are held",
            details={"held": available, "wanted": wanted},
        )
    taken: list[SerialRange] = []
    remaining: list[SerialRange] = []
    need = wanted
    for r in held:
        if need == 0:
            remaining.append(r)
        elif r.quantity <= need:
            taken.append(r)
            need -= r.quantity
        else:
            first, rest = r.split_at(r.start + need)
            taken.append(first)
            remaining.append(rest)
            need = 0
    return taken, remaining


def _gaps(wanted: SerialRange, held: Sequence[SerialRange]) -> list[SerialRange]:
    """The serials of ``wanted`` not in ``held`` (sorted, disjoint)."""
    gaps: list[SerialRange] = []
    cursor = wanted.start
    for r in held:
        if r.end < cursor:
            continue
        if r.start > wanted.end:
            break
        if r.start > cursor:
            gaps.append(SerialRange(cursor, r.start - 1))
        cursor = r.end + 1
        if cursor > wanted.end:
            break
    if cursor <= wanted.end:
        gaps.append(SerialRange(cursor, wanted.end))
    return gaps


def take_range(
    ranges: Sequence[SerialRange], wanted: SerialRange
) -> tuple[list[SerialRange], list[SerialRange]]:
    """Take exactly the serials ``wanted`` from one account's blocks in one batch.

    ``wanted`` may span several held ranges as long as they are contiguous (``1-5`` and ``6-10``
    cover ``3-8``): how the registry happened to split blocks must not change which serials a
    holder may move. Every serial of ``wanted`` must be held; otherwise SerialsNotHeldError names
    the missing serials. Returns ``(taken, remaining)`` in serial order, each piece inside one
    input range, as with :func:`take_lowest`.
    """
    if not isinstance(wanted, SerialRange):
        raise SerialRangeError(f"wanted must be a SerialRange, got {wanted!r}")
    held = _sorted_disjoint(ranges)
    missing = _gaps(wanted, held)
    if missing:
        available = total_quantity(held)
        raise SerialsNotHeldError(
            f"serials {wanted} are not all held: missing {', '.join(map(str, missing[:5]))}"
            + (f" and {len(missing) - 5} more ranges" if len(missing) > 5 else ""),
            details={
                "wanted": {"start": wanted.start, "end": wanted.end},
                "wanted_quantity": wanted.quantity,
                "held": available,
                "missing": [{"start": g.start, "end": g.end} for g in missing[:100]],
            },
        )
    taken: list[SerialRange] = []
    remaining: list[SerialRange] = []
    for r in held:
        inside = r.intersection(wanted)
        if inside is None:
            remaining.append(r)
            continue
        if r.start < inside.start:
            remaining.append(SerialRange(r.start, inside.start - 1))
        taken.append(inside)
        if inside.end < r.end:
            remaining.append(SerialRange(inside.end + 1, r.end))
    return taken, remaining


def allocate(total: int, shares: Sequence[tuple[str, int]]) -> list[tuple[str, SerialRange]]:
    """Divide a new batch ``1..total`` among accounts in the order given.

    Each share is ``(account_id, quantity)`` with a positive quantity; the quantities must add up
    to ``total`` exactly and an account may appear only once. Account ``i`` receives the range that
    starts right after account ``i-1``'s, so the allocation is a partition of ``1..total``.
    """
    batch_size = require_quantity(total, name="total")
    if not shares:
        raise InvalidRequestError("an allocation needs at least one share", details={})
    checked: list[tuple[str, int]] = []
    seen: set[str] = set()
    for index, share in enumerate(shares):
        if not isinstance(share, tuple) or len(share) != 2:
            raise InvalidRequestError(
                f"share {index} must be (account_id, quantity), got {share!r}"
            )
        account, quantity = share
        if not isinstance(account, str) or not account or account != account.strip():
            raise InvalidRequestError(
                f"share {index}: account id must be a non-empty string without surrounding "
                f"spaces, got {account!r}"
            )
        if account in seen:
            raise InvalidRequestError(
                f"account {account!r} appears in more than one share",
                details={"account": account},
            )
        seen.add(account)
        checked.append((account, require_quantity(quantity, name=f"quantity of {account!r}")))
    allocated = sum(q for _, q in checked)
    if allocated != batch_size:
        raise InvalidQuantityError(
            f"shares add up to {allocated} but the batch holds {batch_size}",
            details={"total": batch_size, "allocated": allocated},
        )
    result: list[tuple[str, SerialRange]] = []
    next_serial = 1
    for account, size in checked:
        result.append((account, SerialRange(next_serial, next_serial + size - 1)))
        next_serial += size
    return result
