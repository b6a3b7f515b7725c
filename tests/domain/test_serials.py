"""Serial ids and serial-block arithmetic: nothing created, lost or duplicated."""

from __future__ import annotations

import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from registry.domain.serials import (
    MAX_SERIAL,
    BatchSerial,
    SerialRange,
    allocate,
    batch_serial_id,
    check_disjoint,
    coalesce,
    format_block,
    format_unit_serial,
    parse_batch_serial_id,
    parse_block,
    parse_unit_serial,
    require_quantity,
    take_lowest,
    take_range,
    total_quantity,
)
from registry.errors import (
    ConflictError,
    DuplicateSerialError,
    InsufficientCreditsError,
    InvalidQuantityError,
    InvalidRequestError,
    InvalidSerialIdError,
    SerialRangeError,
    SerialsNotHeldError,
)

BATCH = "KH-JCM-KH001-2025-00001"
R = SerialRange

# --- strategies -------------------------------------------------------------------------------

serial_numbers = st.one_of(
    st.integers(min_value=1, max_value=1_000), st.integers(min_value=1, max_value=MAX_SERIAL)
)


@st.composite
def serial_ranges(draw: st.DrawFn) -> SerialRange:
    a = draw(serial_numbers)
    b = draw(serial_numbers)
    return SerialRange(min(a, b), max(a, b))


@st.composite
def holdings(draw: st.DrawFn, *, min_size: int = 0) -> list[SerialRange]:
    """Disjoint ranges in random order; gaps of 0 make adjacent (contiguous) blocks."""
    pieces = draw(
        st.lists(st.tuples(st.integers(0, 50), st.integers(1, 50)), min_size=min_size, max_size=12)
    )
    base = draw(st.sampled_from([1, 1_000_000, MAX_SERIAL - 2_000]))
    ranges: list[SerialRange] = []
    cursor = base
    for gap, length in pieces:
        start = cursor + gap
        ranges.append(SerialRange(start, start + length - 1))
        cursor = start + length
    return draw(st.permutations(ranges))


def serial_set(ranges: list[SerialRange]) -> list[SerialRange]:
    """A canonical form of the set of serials (ranges merged), comparable without expanding."""
    return coalesce(ranges)


def assert_conserved(
    original: list[SerialRange], taken: list[SerialRange], remaining: list[SerialRange]
) -> None:
    check_disjoint(taken + remaining)  # nothing duplicated
    assert total_quantity(taken) + total_quantity(remaining) == total_quantity(original)
    assert serial_set(taken + remaining) == serial_set(original)  # nothing created or lost
    for piece in taken + remaining:  # every piece traceable to one stored block
        assert sum(1 for r in original if r.contains(piece)) == 1
    assert taken == sorted(taken)
    assert remaining == sorted(remaining)


# --- batch ids --------------------------------------------------------------------------------


def test_batch_serial_id_example() -> None:
    text = batch_serial_id(
        country="KH", programme="JCM", project_id="KH001", vintage=2025, number=1
    )
    assert text == BATCH
    assert parse_batch_serial_id(text) == BatchSerial("KH", "JCM", "KH001", 2025, 1)


@given(
    country=st.from_regex(r"[A-Z]{2}", fullmatch=True),
    programme=st.sampled_from(["JCM", "REDD"]),
    project_id=st.from_regex(r"[A-Z0-9]{1,32}", fullmatch=True),
    vintage=st.integers(1000, 9999),
    number=st.integers(1, 99999),
)
def test_batch_serial_id_round_trip(
    country: str, programme: str, project_id: str, vintage: int, number: int
) -> None:
    parts = BatchSerial(country, programme, project_id, vintage, number)
    text = batch_serial_id(
        country=country, programme=programme, project_id=project_id, vintage=vintage, number=number
    )
    assert text == str(parts)
    assert parse_batch_serial_id(text) == parts


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("country", "kh", "country"),
        ("country", "KHM", "country"),
        ("country", "K1", "country"),
        ("programme", "VCS", "programme"),
        ("programme", "jcm", "programme"),
        ("project_id", "", "project id"),
        ("project_id", "KH-001", "project id"),
        ("project_id", "kh001", "project id"),
        ("project_id", "A" * 33, "project id"),
        ("vintage", 25, "vintage"),
        ("vintage", 10000, "vintage"),
        ("vintage", 2025.0, "vintage"),
        ("vintage", "2025", "vintage"),
        ("number", 0, "batch number"),
        ("number", 100000, "batch number"),
        ("number", True, "batch number"),
    ],
)
def test_batch_serial_id_rejects_bad_parts(field: str, value: object, match: str) -> None:
    parts: dict[str, object] = {
        "country": "KH",
        "programme": "JCM",
        "project_id": "KH001",
        "vintage": 2025,
        "number": 1,
    }
    parts[field] = value
    with pytest.raises(InvalidSerialIdError, match=match):
        batch_serial_id(**parts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "KH-JCM-KH001-2025-1",
        "KH-JCM-KH001-2025-00000",
        "KH-JCM-KH001-0999-00001",
        "kh-JCM-KH001-2025-00001",
        "KH-VCS-KH001-2025-00001",
        "KH-JCM-KH001-2025-00001-1",
        " KH-JCM-KH001-2025-00001",
        "KH-JCM-KH001-2025-00001\n",
        "KH-JCM-KH001-\uff12\uff10\uff12\uff15-00001",  # full-width digits
    ],
)
def test_parse_batch_serial_id_rejects(text: str) -> None:
    with pytest.raises(InvalidSerialIdError):
        parse_batch_serial_id(text)


# --- unit serials and blocks ------------------------------------------------------------------


def test_unit_and_block_text_examples() -> None:
    assert format_unit_serial(BATCH, 42) == f"{BATCH}-42"
    assert parse_unit_serial(f"{BATCH}-42") == (BATCH, 42)
    assert format_block(BATCH, R(1, 1000)) == f"{BATCH}-1-1000"
    assert format_block(BATCH, R(7, 7)) == f"{BATCH}-7-7"
    assert parse_block(f"{BATCH}-1-1000") == (BATCH, R(1, 1000))


@given(serials=serial_ranges(), programme=st.sampled_from(["JCM", "REDD"]))
def test_block_and_unit_round_trip(serials: SerialRange, programme: str) -> None:
    batch = batch_serial_id(
        country="KH", programme=programme, project_id="P1", vintage=2030, number=99999
    )
    assert parse_block(format_block(batch, serials)) == (batch, serials)
    assert parse_unit_serial(format_unit_serial(batch, serials.end)) == (batch, serials.end)


@pytest.mark.parametrize(
    "suffix",
    [
        *("007-9", "7-09", "+7-9", "1_000-2000", " 7-9", "7-9 ", "\u0663-9"),
        *("0-9", "9-7", "7", "-7-9", "7--9"),
    ],
)
def test_parse_block_rejects(suffix: str) -> None:
    with pytest.raises((InvalidSerialIdError, SerialRangeError)):
        parse_block(f"{BATCH}-{suffix}")


def test_parse_block_and_unit_do_not_confuse_each_other() -> None:
    with pytest.raises(InvalidSerialIdError):
        parse_block(f"{BATCH}-5")
    with pytest.raises(InvalidSerialIdError):
        parse_unit_serial(f"{BATCH}-1-5")
    with pytest.raises(InvalidSerialIdError):
        parse_unit_serial(f"{BATCH}-05")
    with pytest.raises(SerialRangeError):
        parse_unit_serial(f"{BATCH}-{MAX_SERIAL + 1}")


def test_format_checks_its_inputs() -> None:
    with pytest.raises(InvalidSerialIdError):
        format_block("KH-JCM-KH001-2025", R(1, 2))
    with pytest.raises(SerialRangeError):
        format_unit_serial(BATCH, 0)


# --- SerialRange ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        (0, 5, "start at 1, got start 0"),
        (-3, 5, "got start -3"),
        (5, 4, "5-4"),
        (True, 5, "integer, got bool"),
        (1, 5.0, "integer, got float"),
        (1, MAX_SERIAL + 1, str(MAX_SERIAL + 1)),
    ],
)
def test_serial_range_invariants(start: object, end: object, match: str) -> None:
    with pytest.raises(SerialRangeError, match=match):
        SerialRange(start, end)  # type: ignore[arg-type]


def test_serial_range_operations() -> None:
    r = R(10, 19)
    assert r.quantity == 10
    assert R(5, 5).quantity == 1
    assert r.contains(10) and r.contains(19) and not r.contains(20)
    assert r.contains(R(12, 19)) and not r.contains(R(9, 12))
    assert r.overlaps(R(19, 30)) and not r.overlaps(R(20, 30)) and not r.overlaps(R(1, 9))
    assert r.intersection(R(15, 40)) == R(15, 19)
    assert r.intersection(R(20, 40)) is None
    assert r.split_at(15) == (R(10, 14), R(15, 19))
    assert r.split_at(19) == (R(10, 18), R(19, 19))
    assert str(r) == "10-19"
    for bad in (10, 20, 9, True):
        with pytest.raises(SerialRangeError):
            r.split_at(bad)


@given(r=serial_ranges(), data=st.data())
def test_split_at_conserves(r: SerialRange, data: st.DataObject) -> None:
    assume(r.quantity > 1)
    at = data.draw(st.integers(r.start + 1, r.end))
    first, second = r.split_at(at)
    assert first.quantity + second.quantity == r.quantity
    assert first.end + 1 == second.start and first.start == r.start and second.end == r.end


@given(a=serial_ranges(), b=serial_ranges())
def test_intersection_agrees_with_overlaps(a: SerialRange, b: SerialRange) -> None:
    inter = a.intersection(b)
    assert (inter is not None) == a.overlaps(b) == b.overlaps(a)
    if inter is not None:
        assert a.contains(inter) and b.contains(inter)
        assert inter == b.intersection(a)


# --- check_disjoint / coalesce ----------------------------------------------------------------


def test_check_disjoint() -> None:
    check_disjoint([])
    check_disjoint([R(6, 10), R(1, 5)])  # adjacent, unsorted: fine
    with pytest.raises(DuplicateSerialError, match="both hold serial 5") as info:
        check_disjoint([R(5, 10), R(1, 5)])
    assert info.value.details["serial"] == 5
    with pytest.raises(DuplicateSerialError):
        check_disjoint([R(1, 100), R(40, 50)])
    with pytest.raises(DuplicateSerialError):
        check_disjoint([R(3, 3), R(3, 3)])


def test_coalesce() -> None:
    assert coalesce([R(6, 9), R(1, 5), R(11, 12)]) == [R(1, 9), R(11, 12)]
    assert coalesce([]) == []


# --- take_lowest ------------------------------------------------------------------------------


def test_take_lowest_examples() -> None:
    held = [R(20, 29), R(1, 5)]
    assert take_lowest(held, 3) == ([R(1, 3)], [R(4, 5), R(20, 29)])
    assert take_lowest(held, 5) == ([R(1, 5)], [R(20, 29)])
    assert take_lowest(held, 7) == ([R(1, 5), R(20, 21)], [R(22, 29)])
    assert take_lowest(held, 15) == ([R(1, 5), R(20, 29)], [])


def test_take_lowest_insufficient_names_figures() -> None:
    with pytest.raises(InsufficientCreditsError, match=r"asked for 16 .* only 15") as info:
        take_lowest([R(1, 5), R(20, 29)], 16)
    assert info.value.details == {"held": 15, "wanted": 16}
    assert info.value.code == "insufficient_credits" and info.value.http_status == 409
    with pytest.raises(InsufficientCreditsError):
        take_lowest([], 1)


@pytest.mark.parametrize("quantity", [0, -1, True, False, 2.0, "3", None, MAX_SERIAL + 1])
def test_take_lowest_rejects_bad_quantity(quantity: object) -> None:
    with pytest.raises(InvalidQuantityError, match="quantity"):
        take_lowest([R(1, 10)], quantity)  # type: ignore[arg-type]


def test_take_lowest_rejects_overlapping_holdings() -> None:
    with pytest.raises(DuplicateSerialError):
        take_lowest([R(1, 10), R(10, 12)], 1)


@given(held=holdings(min_size=1), data=st.data())
def test_take_lowest_conserves(held: list[SerialRange], data: st.DataObject) -> None:
    quantity = data.draw(st.integers(1, total_quantity(held)))
    taken, remaining = take_lowest(held, quantity)
    assert total_quantity(taken) == quantity
    assert_conserved(held, taken, remaining)
    if remaining:  # lowest first: every taken serial is below every remaining one
        assert max(t.end for t in taken) < min(r.start for r in remaining)
    assert sum(1 for r in held if r not in taken and r not in remaining) <= 1  # one split at most


@given(held=holdings(), extra=st.integers(1, 10**6))
def test_take_lowest_over_holding_raises(held: list[SerialRange], extra: int) -> None:
    with pytest.raises(InsufficientCreditsError):
        take_lowest(held, total_quantity(held) + extra)


def test_a_billion_tonnes_is_one_block() -> None:
    t0 = time.perf_counter()
    [(_account, block)] = allocate(10**9, [("proponent", 10**9)])
    taken, remaining = take_lowest([block], 10**9 - 1)
    assert (taken, remaining) == ([R(1, 10**9 - 1)], [R(10**9, 10**9)])
    assert time.perf_counter() - t0 < 0.1


# --- take_range -------------------------------------------------------------------------------


def test_take_range_examples() -> None:
    held = [R(1, 10), R(20, 29)]
    assert take_range(held, R(3, 5)) == ([R(3, 5)], [R(1, 2), R(6, 10), R(20, 29)])
    assert take_range(held, R(1, 10)) == ([R(1, 10)], [R(20, 29)])
    assert take_range(held, R(29, 29)) == ([R(29, 29)], [R(1, 10), R(20, 28)])


def test_take_range_across_contiguous_blocks() -> None:
    held = [R(6, 10), R(1, 5), R(11, 11)]
    taken, remaining = take_range(held, R(3, 11))
    assert taken == [R(3, 5), R(6, 10), R(11, 11)]
    assert remaining == [R(1, 2)]


def test_take_range_refuses_serials_not_held() -> None:
    held = [R(1, 10), R(20, 29)]
    with pytest.raises(SerialsNotHeldError, match="missing 11-19") as info:
        take_range(held, R(5, 25))
    err = info.value
    assert err.code == "serials_not_held" and err.http_status == 409
    assert isinstance(err, InsufficientCreditsError)
    assert err.details["missing"] == [{"start": 11, "end": 19}]
    assert err.details["held"] == 20 and err.details["wanted_quantity"] == 21
    with pytest.raises(SerialsNotHeldError, match="missing 30-31"):
        take_range(held, R(28, 31))
    with pytest.raises(SerialsNotHeldError, match="missing 1-3"):
        take_range([], R(1, 3))


@given(held=holdings(min_size=1), data=st.data())
def test_take_range_within_holding_conserves(held: list[SerialRange], data: st.DataObject) -> None:
    # Pick a run of contiguous held serials and a sub-range of it.
    run = data.draw(st.sampled_from(coalesce(held)))
    start = data.draw(st.integers(run.start, run.end))
    end = data.draw(st.integers(start, run.end))
    wanted = SerialRange(start, end)
    taken, remaining = take_range(held, wanted)
    assert coalesce(taken) == [wanted]
    assert_conserved(held, taken, remaining)
    assert not any(r.overlaps(wanted) for r in remaining)


@given(held=holdings(), wanted=serial_ranges())
def test_take_range_all_or_nothing(held: list[SerialRange], wanted: SerialRange) -> None:
    fully_held = any(run.contains(wanted) for run in coalesce(held))
    try:
        taken, remaining = take_range(held, wanted)
    except SerialsNotHeldError as e:
        assert not fully_held
        missing = [R(m["start"], m["end"]) for m in e.details["missing"]]
        assert all(wanted.contains(m) for m in missing)
        assert not any(m.overlaps(h) for m in missing for h in held)
    else:
        assert fully_held
        assert_conserved(held, taken, remaining)


# --- allocate ---------------------------------------------------------------------------------


def test_allocate_example() -> None:
    shares = [("KH-GOV", 100), ("JP-GOV", 300), ("PP-1", 600)]
    assert allocate(1000, shares) == [
        ("KH-GOV", R(1, 100)),
        ("JP-GOV", R(101, 400)),
        ("PP-1", R(401, 1000)),
    ]


@pytest.mark.parametrize(
    ("total", "shares", "error", "match"),
    [
        (1000, [("A", 100), ("B", 800)], InvalidQuantityError, "add up to 900 .* holds 1000"),
        (1000, [("A", 1000), ("B", 1)], InvalidQuantityError, "add up to 1001"),
        (10, [("A", 10), ("B", 0)], InvalidQuantityError, "quantity of 'B'"),
        (10, [("A", 5.0), ("B", 5)], InvalidQuantityError, "integer, got float"),
        (10, [("A", True), ("B", 9)], InvalidQuantityError, "integer, got bool"),
        (0, [("A", 0)], InvalidQuantityError, "total"),
        (True, [("A", 1)], InvalidQuantityError, "total"),
        (10, [], InvalidRequestError, "at least one share"),
        (10, [("A", 5), ("A", 5)], InvalidRequestError, "more than one share"),
        (10, [("", 10)], InvalidRequestError, "account id"),
        (10, [(" A", 10)], InvalidRequestError, "account id"),
        (10, [("A", 5, 5)], InvalidRequestError, "share 0"),
    ],
)
def test_allocate_rejects(
    total: object, shares: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        allocate(total, shares)  # type: ignore[arg-type]


@given(quantities=st.lists(st.integers(1, 10**12), min_size=1, max_size=20))
def test_allocate_partitions_the_batch(quantities: list[int]) -> None:
    total = sum(quantities)
    shares = [(f"acct-{i}", q) for i, q in enumerate(quantities)]
    result = allocate(total, shares)
    assert [a for a, _ in result] == [a for a, _ in shares]
    assert [r.quantity for _, r in result] == quantities
    assert coalesce([r for _, r in result]) == [SerialRange(1, total)]
    assert result[0][1].start == 1 and result[-1][1].end == total


# --- misc -------------------------------------------------------------------------------------


def test_require_quantity() -> None:
    assert require_quantity(7) == 7
    with pytest.raises(InvalidQuantityError, match="gross must be between 1 and 5, got 6"):
        require_quantity(6, name="gross", maximum=5)


def test_error_codes_are_stable() -> None:
    assert SerialRangeError.code == "invalid_serial_range" and SerialRangeError.http_status == 422
    assert DuplicateSerialError.code == "duplicate_serial"
    assert InvalidSerialIdError.code == "invalid_serial_id"
    assert InvalidQuantityError.code == "invalid_quantity"
    assert issubclass(InsufficientCreditsError, ConflictError)
