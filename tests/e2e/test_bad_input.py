"""Bad input over HTTP: every refusal is a 4xx with a machine code, and nothing changes.

Each test wraps its refusals in ``World.unchanged()`` (checkpoint, lists and holdings before and
after), and ``World.refuse`` checks the checkpoint after every single refusal.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from datetime import timedelta
from typing import Any

from registry.api.app import MAX_BODY_BYTES
from registry.client import sign_instruction
from registry.ledger.keys import SigningKey
from tests.world import ADMIN, UNIT, World, expect_error, flip_first_byte, issue_jcm

BATCH = "KH-JCM-KH004-2024-00001"


def transfer(**changes: Any) -> dict[str, Any]:
    """A fresh transfer body (signing keeps a reference to it, and some tests alter it)."""
    body: dict[str, Any] = {
        "account": "KH-WATER-1", "batch": BATCH, "quantity": 10, "to_account": "JP-BUYER-1"}
    return {**body, **changes}


def unit_body(unit_id: str, boundary: str) -> dict[str, Any]:
    return {"unit_id": unit_id, "project_id": "KH005", "name": "Prey Lang block (illustrative)",
            "boundary": boundary, "jurisdiction": "Stung Treng", "reference_level": 1000,
            "leakage_rate_bp": 1000, "buffer_rate_bp": 2000}


def polygon(*ring: tuple[float, float]) -> str:
    return json.dumps({"type": "Polygon", "coordinates": [[list(p) for p in ring]]})


def box(west: float, south: float, east: float, north: float) -> str:
    return polygon((west, south), (east, south), (east, north), (west, north), (west, south))


def test_an_overlap_is_found_from_every_side_and_a_neighbour_in_the_box_is_not_one(
    world: World,
) -> None:
    """A new unit is checked against the units whose bounding boxes meet its own: one
    overlapping KH005-FU1 (105.8..105.9 x 13.6..13.7) across any side, or holding it whole,
    is still refused; one inside its neighbour's box but outside its shape is registered."""
    with world.unchanged():
        for west, south, east, north in (
            (105.75, 13.62, 105.82, 13.68), (105.88, 13.62, 105.95, 13.68),  # west, east
            (105.82, 13.55, 105.88, 13.62), (105.82, 13.68, 105.88, 13.75),  # south, north
            (105.7, 13.5, 106.0, 13.8),  # around it
        ):
            error = world.refuse(ADMIN, "forest_unit.register",
                                 unit_body("KH005-FU2", box(west, south, east, north)),
                                 status=409, code="boundary_overlap")
            assert error["details"]["unit_id"] == UNIT
    # An L around a corner of 106.0..106.2 x 13.0..13.2; the next unit sits in its notch.
    ell = polygon((106.0, 13.0), (106.2, 13.0), (106.2, 13.1), (106.1, 13.1), (106.1, 13.2),
                  (106.0, 13.2), (106.0, 13.0))
    world.submit(ADMIN, "forest_unit.register", unit_body("KH005-FU2", ell))
    world.submit(ADMIN, "forest_unit.register",
                 unit_body("KH005-FU3", box(106.12, 13.12, 106.18, 13.18)))
    assert world.http.get("/v1/forest-units")["count"] == 3



def test_a_neighbour_over_the_edge_by_more_than_a_hectare_is_refused(world: World) -> None:
    """Digitising noise along a shared edge is tolerated up to 1 ha: a neighbour drawn half a
    metre into KH005-FU1 (about 0.4 ha) is registered, one drawn 30 m in (about 21 ha, well
    under 1 % of either unit) is double counting and is refused."""
    with world.unchanged():
        error = world.refuse(ADMIN, "forest_unit.register",
                             unit_body("KH005-FU2", box(105.8997, 13.62, 105.95, 13.68)),
                             status=409, code="boundary_overlap")
        assert error["details"]["unit_id"] == UNIT
        assert error["details"]["tolerance_hectares"] == 1.0
        assert 20 < error["details"]["overlap_hectares"] < 23
    world.submit(ADMIN, "forest_unit.register",
                 unit_body("KH005-FU2", box(105.899995, 13.62, 105.95, 13.68)))
    assert world.http.get("/v1/forest-units")["count"] == 2

def comb(teeth: int, *, across: bool = False) -> str:
    """A comb over 106.0..106.5 x 12.0..12.5: a spine along the bottom and ``teeth`` teeth
    up from it; ``across`` turns it a quarter, spine on the left and teeth to the east."""
    w = 0.5 / (2 * teeth)
    ring = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.01)]
    for i in reversed(range(teeth)):
        a = 2 * i * w
        ring += [(a + w, 0.01), (a + w, 0.5), (a, 0.5), (a, 0.01)][1 if i == teeth - 1 else 0:]
    ring.append((0.0, 0.0))
    return polygon(*((106.0 + y, 12.0 + x) if across else (106.0 + x, 12.0 + y)
                     for x, y in ring))


def test_a_boundary_tangled_across_a_neighbour_is_refused_at_once(world: World) -> None:
    """Two combs of 500 teeth laid across each other (2,000 positions each) overlap in a
    quarter of a million pieces: the registry refuses the second in well under a second,
    instead of measuring every piece under the ledger's lock for a minute and gigabytes."""
    world.submit(ADMIN, "forest_unit.register", unit_body("KH005-FU2", comb(500)))
    with world.unchanged():
        started = time.monotonic()
        error = world.refuse(ADMIN, "forest_unit.register",
                             unit_body("KH005-FU3", comb(500, across=True)),
                             status=409, code="boundary_overlap")
        assert time.monotonic() - started < 5
        assert error["details"]["unit_id"] == "KH005-FU2"
        assert "KH005-FU2" in error["message"]


def test_a_boundary_of_no_whole_hectare_is_refused(world: World) -> None:
    """A forest unit records its area in whole hectares: one of a few square metres (or a
    tenth of a millimetre) would be registered as a forest of 0 ha, so it is refused; one of
    about a hectare is registered as 1 ha."""
    with world.unchanged():
        for side in (1e-9, 0.0002):  # 0.1 mm, and about 22 m
            error = world.refuse(ADMIN, "forest_unit.register",
                                 unit_body("KH005-FU2", box(107.0, 12.0, 107.0 + side,
                                                            12.0 + side)),
                                 status=422, code="invalid_geometry")
            assert "0 ha" in error["message"]
    answer = world.submit(ADMIN, "forest_unit.register",
                          unit_body("KH005-FU2", box(107.0, 12.0, 107.0009, 12.0009)))
    assert answer["result"]["area_ha"] == 1


def test_bad_boundaries_are_refused(world: World) -> None:
    bad = {
        "not JSON": "{this is not json",
        "bow-tie": polygon((106.0, 13.0), (106.1, 13.1), (106.1, 13.0), (106.0, 13.1),
                           (106.0, 13.0)),
        "unclosed ring": polygon((106.0, 13.0), (106.1, 13.0), (106.1, 13.1), (106.0, 13.1)),
        "latitude out of range": polygon((106.0, 89.0), (106.1, 89.0), (106.1, 95.0),
                                         (106.0, 89.0)),
        "a Point": json.dumps({"type": "Point", "coordinates": [106.0, 13.0]}),
        "a Feature": json.dumps({"type": "Feature", "properties": {},
                                 "geometry": json.loads(polygon(
                                     (106.0, 13.0), (106.1, 13.0), (106.1, 13.1),
                                     (106.0, 13.0)))}),
        "a JSON list": "[[106.0, 13.0], [106.1, 13.0]]",
        "string coordinates": polygon(("106.0", "13.0"), (106.1, 13.0),  # type: ignore[arg-type]
                                      (106.1, 13.1), ("106.0", "13.0")),  # type: ignore[arg-type]
    }
    with world.unchanged():
        for what, boundary in bad.items():
            error = world.refuse(ADMIN, "forest_unit.register", unit_body("KH005-FU2", boundary),
                                 status=422, code="invalid_geometry")
            assert error["message"], what
    # Half of KH005-FU1 (105.8..105.9 x 13.6..13.7) and half outside it.
    overlapping = polygon((105.85, 13.6), (105.95, 13.6), (105.95, 13.7), (105.85, 13.7),
                          (105.85, 13.6))
    with world.unchanged():
        error = world.refuse(ADMIN, "forest_unit.register",
                             unit_body("KH005-FU2", overlapping), status=409,
                             code="boundary_overlap")
        assert UNIT in error["message"]
        assert error["details"]["unit_id"] == UNIT
        assert error["details"]["overlap_hectares"] > 5000
        # Inside it entirely, too; and a unit id that exists already.
        inside = polygon((105.82, 13.62), (105.83, 13.62), (105.83, 13.63), (105.82, 13.62))
        world.refuse(ADMIN, "forest_unit.register", unit_body("KH005-FU2", inside),
                     status=409, code="boundary_overlap")
        elsewhere = polygon((107.0, 12.0), (107.1, 12.0), (107.1, 12.1), (107.0, 12.0))
        world.refuse(ADMIN, "forest_unit.register", unit_body(UNIT, elsewhere),
                     status=409, code="conflict")
        world.refuse(ADMIN, "forest_unit.register",
                     {**unit_body("KH005-FU2", elsewhere), "project_id": "KH404"},
                     status=404, code="not_found")
        world.refuse("kh-gov", "forest_unit.register", unit_body("KH005-FU2", elsewhere),
                     status=403, code="forbidden")
        world.refuse(ADMIN, "forest_unit.register",
                     {**unit_body("KH005-FU2", elsewhere), "buffer_rate_bp": 10001},
                     status=422, code="invalid_request")
    assert world.http.get("/v1/forest-units")["count"] == 1


def test_quantities_must_be_positive_whole_numbers(world: World) -> None:
    issue_jcm(world)
    by_range = {k: v for k, v in transfer().items() if k != "quantity"}
    with world.unchanged():
        for quantity in (0, -5, "10", True, None):
            world.refuse("kh-water", "credits.transfer", transfer(quantity=quantity),
                         status=422, code="invalid_request")
        for span in ({"start": 0, "end": 5}, {"start": "1", "end": 5}, {"start": 1}):
            world.refuse("kh-water", "credits.transfer", {**by_range, "range": span},
                         status=422, code="invalid_request")
        world.refuse("kh-water", "report.submit", {
            "report_id": "KH004-MR2", "project_id": "KH004", "period_start": "2025-01-01",
            "period_end": "2025-12-31", "reductions": "500", "document_sha256": "d" * 64},
            status=422, code="invalid_request")
        # Floats and integers beyond 2^53 - 1 have no canonical bytes to sign, so our client
        # cannot send them; a careless one might. They are refused before any signature check.
        for unsignable in (2.5, 10.0, 2**53, 1e300):
            signed = world.as_("kh-water").sign("credits.transfer", transfer())
            signed["instruction"]["body"]["quantity"] = unsignable
            expect_error(world.post_raw("/v1/transfers", signed), 422, "invalid_request")
        signed = world.as_("kh-water").sign("credits.transfer", {**by_range, "range": {
            "start": 1, "end": 5}})
        signed["instruction"]["body"]["range"]["start"] = 1.0
        expect_error(world.post_raw("/v1/transfers", signed), 422, "invalid_request")
        signed = world.as_(ADMIN).sign("credits.issue", {
            "report_id": "KH004-MR1", "vintage": 2024,
            "allocations": [{"account": "KH-WATER-1", "quantity": 1000}]})
        signed["instruction"]["body"]["allocations"][0]["quantity"] = 1000.0
        expect_error(world.post_raw("/v1/issuances", signed), 422, "invalid_request")


def test_signatures_expiry_and_nonces(world: World) -> None:
    issue_jcm(world)
    water = world.as_("kh-water")
    with world.unchanged():
        # A signature with one bit flipped.
        signed = water.sign("credits.transfer", transfer())
        signed["signature"] = flip_first_byte(signed["signature"])
        expect_error(water.post_signed(signed), 401, "bad_signature")
        # Signed, then the body altered: more credits, or to another account.
        for field, value in (("quantity", 800), ("to_account", "JP-GOV-1")):
            signed = water.sign("credits.transfer", transfer())
            signed["instruction"]["body"][field] = value
            expect_error(water.post_signed(signed), 401, "bad_signature")
        # Signed, then the expiry pushed back.
        signed = water.sign("credits.transfer", transfer())
        signed["instruction"]["expires"] = "2099-01-01T00:00:00Z"
        expect_error(water.post_signed(signed), 401, "bad_signature")
        # Not base64 at all is malformed; base64 of the wrong length does not verify.
        for signature, status, code in (("!!!", 422, "malformed"),
                                        (base64.b64encode(b"short").decode(), 401,
                                         "bad_signature")):
            signed = water.sign("credits.transfer", transfer())
            signed["signature"] = signature
            expect_error(water.post_signed(signed), status, code)
        # Signed by the buyer's key in the water utility's name: not a key of the actor.
        forged = sign_instruction(world.keys["jp-buyer"], registry=world.origin, actor="kh-water",
                                  type="credits.transfer", body=transfer())
        error = expect_error(water.post_signed(forged), 401, "unauthenticated")
        assert "kh-water" in error["message"]
        # The buyer's key, naming the water utility's key id.
        forged = sign_instruction(world.keys["jp-buyer"], registry=world.origin, actor="kh-water",
                                  type="credits.transfer", body=transfer())
        forged["instruction"]["key_id"] = world.keys["kh-water"].public_key.key_id
        expect_error(water.post_signed(forged), 401, "bad_signature")
        # A party the registry has never heard of, with a key it has never seen.
        stranger = SigningKey.from_seed(b"s" * 32)
        unknown = sign_instruction(stranger, registry=world.origin, actor="kh-stranger",
                                   type="credits.transfer",
                                   body=transfer())
        error = expect_error(water.post_signed(unknown), 401, "unauthenticated")
        assert "kh-stranger" in error["message"]
        # Expired, expiring more than a week ahead, or with a nonce too short to be unique.
        world.refuse("kh-water", "credits.transfer", transfer(), status=401,
                     code="instruction_expired", valid_for=timedelta(seconds=-1))
        error = world.refuse("kh-water", "credits.transfer", transfer(), status=401,
                             code="instruction_expired", valid_for=timedelta(days=8))
        assert "7 days" in error["message"]
        world.refuse("kh-water", "credits.transfer", transfer(), status=422,
                     code="invalid_request", nonce="short")
    # A week ahead (less the registry's test clock drift) is accepted.
    water.submit("credits.transfer", transfer(), valid_for=timedelta(days=6))
    # The same signed instruction posted again with a new Idempotency-Key is a replay.
    signed = water.sign("credits.transfer", transfer())
    assert water.post_signed(signed, idempotency_key="first-post").status_code == 200
    with world.unchanged():
        error = expect_error(water.post_signed(signed, idempotency_key="second-post"),
                             409, "nonce_reused")
        assert signed["instruction"]["nonce"] in error["message"]
        # The nonce is spent for ever, whatever instruction carries it.
        world.refuse("kh-water", "credits.transfer", transfer(quantity=1),
                     status=409, code="nonce_reused", nonce=signed["instruction"]["nonce"])
    # Nonces are per party: another party may use the same one.
    world.submit("jp-buyer", "credits.transfer",
                 transfer(account="JP-BUYER-1", to_account="KH-WATER-1", quantity=1),
                 nonce=signed["instruction"]["nonce"])
    assert world.active("JP-BUYER-1") == 19


def test_malformed_requests(world: World) -> None:
    issue_jcm(world)
    water = world.as_("kh-water")
    signed = water.sign("credits.transfer", transfer())
    with world.unchanged():
        # An instruction type posted to another type's endpoint.
        for path in ("/v1/retirements", "/v1/issuances", "/v1/parties"):
            expect_error(world.post_raw(path, signed), 422, "invalid_request")
        # No Idempotency-Key, or an unusable one.
        error = expect_error(world.post_raw("/v1/transfers", signed, idempotency_key=""),
                             422, "invalid_request")
        assert "Idempotency-Key" in error["message"]
        expect_error(world.post_raw("/v1/transfers", signed, idempotency_key="has space"),
                     422, "invalid_request")
        # Unknown fields anywhere: in the body, the instruction, or the envelope.
        for where in ("body", "instruction", "envelope"):
            altered = copy.deepcopy(signed)
            {"body": altered["instruction"]["body"], "instruction": altered["instruction"],
             "envelope": altered}[where]["memo"] = "hi"
            expect_error(world.post_raw("/v1/transfers", altered), 422, "invalid_request")
        # Missing pieces, or not an object at all.
        for payload in ({"instruction": signed["instruction"]}, {"signature": "x"}, [signed],
                        "transfer", None):
            expect_error(world.post_raw("/v1/transfers", payload), 422, "invalid_request")
        response = world.http.http.post("/v1/transfers", content=b"{not json",
                                        headers={"Idempotency-Key": "raw-1",
                                                 "Content-Type": "application/json"})
        expect_error(response, 422, "invalid_request")
        # A body larger than any instruction is refused before it is held in memory, whether
        # its length is declared or it comes in chunks.
        huge = b'{"memo": "' + b"y" * MAX_BODY_BYTES + b'"}'
        for content in (huge, (huge[i:i + 65536] for i in range(0, len(huge), 65536))):
            response = world.http.http.post("/v1/transfers", content=content,
                                            headers={"Idempotency-Key": "raw-2",
                                                     "Content-Type": "application/json"})
            error = expect_error(response, 413, "payload_too_large")
            assert error["message"] == f"the request body is larger than {MAX_BODY_BYTES} bytes"
        # The largest instruction fits: a boundary of one character too many is a 422.
        world.refuse(ADMIN, "forest_unit.register",
                     unit_body("KH005-FU2", "x" * 2_000_001), status=422, code="invalid_request")
    # The untouched instruction still goes through once.
    assert world.post_raw("/v1/transfers", signed).status_code == 200


def test_a_lone_surrogate_in_the_signature_is_a_422_not_a_500(world: World) -> None:
    """JSON may spell a lone UTF-16 surrogate (``"\\ud800"``); the signature, the one string
    of an instruction with no pattern, reached the Idempotency-Key fingerprint, whose UTF-8
    encoding raised: a 500 and a traceback. It is a 422, and the key stays unused."""
    issue_jcm(world)
    signed = world.as_("kh-water").sign("credits.transfer", {
        "account": "KH-WATER-1", "batch": BATCH, "quantity": 1, "to_account": "JP-BUYER-1"})
    with world.unchanged():
        for bad in ("\ud800", "abc\udfff"):
            response = world.http.http.post(
                "/v1/transfers", content=json.dumps({**signed, "signature": bad}),
                headers={"Idempotency-Key": "sur-1", "Content-Type": "application/json"})
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] in {"malformed", "invalid_request"}
    # The key was not used up: the genuine request goes through under it.
    assert world.as_("kh-water").post_signed(signed, idempotency_key="sur-1").status_code == 200


def test_a_member_named_twice_is_refused_wherever_it_is(world: World) -> None:
    """RFC 8785 signs I-JSON, whose object member names are unique. A body naming one twice
    (``"quantity": 2, "quantity": 1``) was read as its last value, signed and carried out: a
    proxy or a log that reads the first value saw another instruction than the one moved. It
    is a 422, and a body spelt once, even with `":` inside its strings, still goes through."""
    issue_jcm(world)
    water = world.as_("kh-water")
    signed = water.sign("credits.cancel", {"account": "KH-WATER-1", "batch": BATCH,
                                           "quantity": 1, "reason": 'said "why": no'})
    text = json.dumps(signed)
    twice = {
        "body": text.replace('"quantity": 1', '"quantity": 2, "quantity": 1'),
        "instruction": text.replace('"type": ', '"actor": "jp-buyer", "type": '),
        "envelope": text.replace('{"instruction": ', '{"signature": "x", "instruction": ', 1),
        "spaced": text.replace('"quantity": 1', '"quantity" : 2, "quantity"\t:1'),
    }
    with world.unchanged():
        for where, content in twice.items():
            assert json.loads(content) == signed, where
            response = world.http.http.post(
                "/v1/cancellations", content=content,
                headers={"Idempotency-Key": f"twice-{where}", "Content-Type": "application/json"})
            error = expect_error(response, 422, "invalid_request")
            assert "twice" in error["message"], (where, error)
    response = world.http.http.post(
        "/v1/cancellations", content=text,
        headers={"Idempotency-Key": "twice-body", "Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def test_a_member_named_twice_is_refused_in_every_encoding_json_reads(world: World) -> None:
    """The server reads JSON sent in UTF-16 or UTF-32 as well as UTF-8 (Python's reader guesses
    the encoding from the bytes). A member named twice is refused in those too, not only when
    its quote and colon are one byte each."""
    issue_jcm(world)
    water = world.as_("kh-water")
    signed = water.sign("credits.cancel", {"account": "KH-WATER-1", "batch": BATCH,
                                           "quantity": 1, "reason": "twice"})
    text = json.dumps(signed).replace('"quantity": 1', '"quantity": 2, "quantity": 1')
    with world.unchanged():
        for encoding in ("utf-16", "utf-16-le", "utf-32", "utf-32-be"):
            response = world.http.http.post(
                "/v1/cancellations", content=text.encode(encoding),
                headers={"Idempotency-Key": f"twice-{encoding}",
                         "Content-Type": "application/json"})
            error = expect_error(response, 422, "invalid_request")
            assert "twice" in error["message"], (encoding, error)


def test_public_text_holds_no_control_or_text_direction_character_and_is_not_blank(
    world: World,
) -> None:
    """Names, titles, beneficiaries and reasons are published as typed: a terminal escape, a
    line break or a right-to-left override would show readers another text than the one
    recorded, and a blank name names nothing."""
    issue_jcm(world)
    retire = {"account": "KH-WATER-1", "batch": BATCH, "quantity": 1,
              "beneficiary": "Tokyo Metro Co.", "purpose": "voluntary", "jurisdiction": "JP",
              "reason": "offsetting"}
    with world.unchanged():
        for field, text, said in (
            ("beneficiary", "Tokyo \u202eoC orteM", "U+202E"),
            ("beneficiary", "Tokyo\nMetro Co.", "U+000A"),
            ("reason", "\x1b[32mOK\x1b[0m", "U+001B"),
            ("reason", "offsetting\u0085", "U+0085"),
            # Unicode's own line and paragraph separators: line breaks, as NEL and LF are.
            ("beneficiary", "Tokyo Metro Co.\u2028OK", "U+2028"),
            ("reason", "offsetting\u2029done", "U+2029"),
            ("beneficiary", "   ", "blank"),
            ("beneficiary", "Tokyo\x00", "NUL"),
        ):
            error = world.refuse("kh-water", "credits.retire", {**retire, field: text},
                                 status=422, code="invalid_request")
            assert f"$.instruction.body.{field}" in error["message"] and said in error["message"]
        error = world.refuse(ADMIN, "project.status", {
            "project_id": "KH004", "status": "suspended", "reason": "\u2067under review"},
            status=422, code="invalid_request")
        assert "U+2067" in error["message"]
    # Text in any script, accents and punctuation is public text like any other.
    done = world.submit("kh-water", "credits.retire", {
        **retire, "beneficiary": "សាលាក្រុងភ្នំពេញ — 東京メトロ (Tōkyō)"})
    assert done["result"]["quantity"] == 1
