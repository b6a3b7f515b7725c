from __future__ import annotations

from tests.world import World, issue_jcm


def test_issue_transfer_retire(world: World) -> None:
    batch = issue_jcm(world)
    assert batch == "KH-JCM-KH004-2024-00001"
    assert world.active("KH-WATER-1") == 800
    world.submit("kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": batch, "quantity": 300, "to_account": "JP-BUYER-1"})
    assert world.active("KH-WATER-1") == 500 and world.active("JP-BUYER-1") == 300
    r = world.submit("jp-buyer", "credits.retire", {
        "account": "JP-BUYER-1", "batch": batch, "range": {"start": 101, "end": 150},
        "beneficiary": "Example", "purpose": "voluntary", "jurisdiction": "JP", "reason": "test"})
    assert r["result"]["quantity"] == 50
    assert world.active("JP-BUYER-1") == 250
    story = world.http.get(f"/v1/serials/{batch}-120")
    assert story["now"]["status"] == "retired"
    assert [e["kind"] for e in story["history"]] == [
        "credits.issue", "credits.transfer", "credits.retire"]
