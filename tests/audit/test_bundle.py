"""The export bundle format: writing, reading, and what the reader says about a damaged file."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from registry.errors import LedgerError, MalformedError
from registry.ledger.bundle import (
    BUNDLE_MODELS,
    BundleCheckpoint,
    BundleEntry,
    BundleFormatError,
    BundleHeader,
    BundlePartyKey,
    BundleReader,
    BundleWriter,
    CheckpointLine,
    LineProblem,
    PartyKeyLine,
    _written_checkpoint,
    _written_entry,
)
from registry.ledger.keys import b64decode_strict
from registry.schemas import all_schemas

KEY_ID = "ab" * 32


def _header(size: int) -> BundleHeader:
    return BundleHeader(
        format="kh-carbon-registry-export", version=1, origin="test.example/log",
        tree_size=size, exported_at="2026-01-01T00:00:00.000000Z", registry_keys=[],
    )


def _party_key() -> BundlePartyKey:
    return BundlePartyKey(
        type="party_key", party_id="p", key_id=KEY_ID, public_key="A" * 43 + "=",
        valid_from_seq=1, valid_until_seq=None,
    )


def _write(path: Path, size: int = 3) -> Path:
    out = io.BytesIO()
    writer = BundleWriter(out, _header(size))
    for seq in range(size):
        writer.entry(seq, b"envelope %d" % seq)
    writer.checkpoint(1, "note 1\n")
    writer.checkpoint(3, "note 3\n")
    writer.party_key(_party_key())
    writer.close()
    path.write_bytes(out.getvalue())
    return path


def test_a_bundle_reads_back_line_for_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "b.jsonl")
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[0])["format"] == "kh-carbon-registry-export"
    assert lines[1] == b'{"type":"entry","seq":0,"envelope":"ZW52ZWxvcGUgMA=="}'
    reader = BundleReader(path)
    assert reader.header == _header(3)
    assert [(e.seq, e.envelope, e.problem) for e in reader.entries()] == [
        (0, b"envelope 0", None), (1, b"envelope 1", None), (2, b"envelope 2", None)]
    assert list(reader.tail()) == [
        CheckpointLine(5, 1, "note 1\n"), CheckpointLine(6, 3, "note 3\n"),
        PartyKeyLine(7, _party_key()),
    ]


def test_the_writer_keeps_sections_in_order_and_its_promise() -> None:
    writer = BundleWriter(io.BytesIO(), _header(2))
    with pytest.raises(LedgerError, match="expected seq 0, got 1"):
        writer.entry(1, b"x")
    writer.entry(0, b"x")
    with pytest.raises(LedgerError, match="promises 2 entries, 1 were written"):
        writer.checkpoint(1, "n\n")
    writer.entry(1, b"y")
    with pytest.raises(LedgerError, match="promises 2 entries; got more"):
        writer.entry(2, b"z")
    writer.party_key(_party_key())
    with pytest.raises(LedgerError, match="cannot follow the next section"):
        writer.checkpoint(2, "n\n")


def test_damaged_lines_are_reported_not_fatal(tmp_path: Path) -> None:
    path = _write(tmp_path / "b.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = "{not json"
    lines[3] = json.dumps({"type": "entry", "seq": 2, "envelope": "not base64!"})
    lines.insert(6, json.dumps({"type": "entry", "seq": 3, "envelope": "eA=="}))
    lines.append(json.dumps({"type": "checkpoint", "size": 4, "note": "late\n"}))
    path.write_text("\n".join(lines) + "\n")
    reader = BundleReader(path)
    entries = list(reader.entries())
    assert [e.problem is None for e in entries] == [True, False, False]
    assert entries[1].problem == "line 3 is not an entry line"
    assert "envelope on line 4 is not valid standard base64" in str(entries[2].problem)
    tail = list(reader.tail())
    assert tail[2] == LineProblem(7, "line 7 is an entry line, after the entries ended")
    assert tail[-1] == LineProblem(9, "line 9: a checkpoint after the party keys")


@pytest.mark.parametrize(
    ("first_line", "message"),
    [
        ("hello", "line 1 is not JSON"),
        ('{"format": "something-else"}', 'lacks "format": "kh-carbon-registry-export"'),
        ('{"format": "kh-carbon-registry-export", "version": 2}', "version 2 is not supported"),
        ('{"format": "kh-carbon-registry-export", "version": 1}', "header is not valid"),
    ],
)
def test_a_file_that_is_not_a_bundle_is_a_usage_error(
    tmp_path: Path, first_line: str, message: str
) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(first_line + "\n")
    with pytest.raises(BundleFormatError, match=message):
        BundleReader(path)
    with pytest.raises(BundleFormatError, match="cannot read the bundle"):
        BundleReader(tmp_path / "missing.jsonl")


def test_every_line_kind_has_a_published_schema() -> None:
    assert set(BUNDLE_MODELS) == {"header", "entry", "checkpoint", "party-key"}
    schemas = all_schemas()
    for name in BUNDLE_MODELS:
        assert f"export-{name}" in schemas
    entry = schemas["export-entry"]
    assert entry["properties"]["type"]["const"] == "entry"
    assert set(entry["required"]) == {"type", "seq", "envelope"}


def _carefully(raw: bytes) -> tuple[int, bytes] | None:
    """What the reader's general parse makes of an entry line (``None`` if it refuses it)."""
    try:
        line = BundleEntry.model_validate_json(raw)
        return line.seq, b64decode_strict(line.envelope, what="envelope")
    except (ValidationError, MalformedError):
        return None


def _entry_line(seq: int, envelope: bytes) -> bytes:
    return b'{"type":"entry","seq":%d,"envelope":"%s"}' % (seq, base64.b64encode(envelope))


def test_the_writers_own_entry_lines_take_the_fast_path() -> None:
    out = io.BytesIO()
    BundleWriter(out, _header(1)).entry(0, b"envelope bytes")
    raw = out.getvalue().splitlines()[1]
    assert raw == _entry_line(0, b"envelope bytes")
    assert _written_entry(raw) == (0, b"envelope bytes") == _carefully(raw)


@settings(max_examples=400)
@given(st.integers(0, 2**53 + 5), st.binary(max_size=12), st.data())
def test_written_entry_lines_parse_as_the_careful_parse_does(
    seq: int, envelope: bytes, data: st.DataObject
) -> None:
    raw = _entry_line(seq, envelope)
    at = data.draw(st.integers(0, len(raw)))
    insert = data.draw(st.sampled_from([b"", b"0", b"A", b"=", b'"', b" ", b"\\"]))
    raw = raw[:at] + insert + raw[at:]
    fast = _written_entry(raw)
    assert fast is None or fast == _carefully(raw)


@pytest.mark.parametrize("raw", [
    b'{"type":"checkpoint","size":3,"note":"a\\n"}',
    b'{"type":"checkpoint","size":3,"note":"a","type":"entry"}',
    b'{"type":"checkpoint","size":-1,"note":"a"}',
    b'{"type":"checkpoint","size":3,"note":"\\ud800"}',
    b'{"type":"checkpoint", "size":3,"note":"a"}',
])
def test_a_written_checkpoint_is_what_json_calls_a_checkpoint(raw: bytes) -> None:
    found = _written_checkpoint(raw)
    if found is not None:
        assert json.loads(raw)["type"] == "checkpoint"
        assert found == BundleCheckpoint.model_validate_json(raw)
