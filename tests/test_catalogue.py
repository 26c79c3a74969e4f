"""A catalogue made outside skysync (issue 19, part 4): parents and variations that SkyHub has,
that skysync never wrote, and price and stock rows for them. The batch learns from SkyHub's
listing which SKUs are variations of which product, once, so that a variation's stock goes
straight to PUT /variations (no 404 from PUT /products first, every time), at the same time
as its parent's PUT /products. Against the emulator over HTTP, on both databases."""

from __future__ import annotations

import sqlalchemy as sa
from relay_helpers import insert, relay_for, requests, rows

from skysync.emulator import Sandbox
from skysync.relay import drain
from skysync.store.db import session_scope
from skysync.store.models import Item


def seed_families(sb: Sandbox, n: int, prefix: str = "LOJA") -> list[tuple[str, str]]:
    families = [(f"{prefix}-{i}", f"{prefix}-{i}-P") for i in range(n)]
    for parent, variation in families:
        sb.seed_product(
            {
                "sku": parent,
                "name": f"Camisa {parent}",
                "price": 50.0,
                "qty": 1,
                "variations": [{"sku": variation, "qty": 1}],
            }
        )
    return families


def test_a_catalogue_made_elsewhere_is_learned_once_and_variations_go_straight_to_variations(
    db_url: str, sb: Sandbox
) -> None:
    families = seed_families(sb, 6)
    sb.seed_product({"sku": "SIMPLES", "name": "Caneca", "price": 9.0, "qty": 1})
    with relay_for(db_url, sb) as relay:
        for i, (parent, variation) in enumerate(families):
            insert(db_url, "stock", parent, {"qty": 10 + i})
            insert(db_url, "stock", variation, {"qty": 20 + i})
        insert(db_url, "stock", "SIMPLES", {"qty": 3})
        insert(db_url, "stock", "NOWHERE", {"qty": 2})  # SkyHub has no such SKU
        drain(relay.deps)
        first = len(sb.request_log())
        # later rows for the same SKUs: the catalogue is known, no listing again
        for _parent, variation in families:
            insert(db_url, "stock", variation, {"qty": 0})
        drain(relay.deps)

    state = sb.state()
    for parent, variation in families:
        assert state["products"][parent]["qty"] == 10 + families.index((parent, variation))
        assert state["variations"][variation]["qty"] == 0
    assert state["products"]["SIMPLES"]["qty"] == 3
    listing = [e for e in requests(sb, "GET") if e["path"].split("?")[0] == "/products"]
    assert len(listing) == 1, listing  # one page: all of it, once
    assert not [e for e in sb.request_log()[first:] if e["method"] == "GET"]
    # no variation was ever tried as a product
    for _parent, variation in families:
        tried = [e for e in requests(sb, "PUT") if e["path"] == f"/products/{variation}"]
        assert tried == [], tried
    puts = requests(sb, "PUT")
    assert {e["status"] for e in puts if "NOWHERE" not in e["path"]} == {204}
    got = {r.ref: r for r in rows(db_url).values() if r.ref == "NOWHERE"}
    assert got["NOWHERE"].state == "rejected" and "no product or variation" in got["NOWHERE"].reason
    with session_scope(db_url) as session:
        items = {i.sku: i for i in session.scalars(sa.select(Item))}
    for parent, variation in families:
        assert (items[variation].parent_sku, items[variation].in_skyhub) == (parent, True)
        assert (items[parent].parent_sku, items[parent].in_skyhub) == (None, True)
    assert items["NOWHERE"].in_skyhub is False and items["NOWHERE"].checked_at is not None


def test_a_catalogue_longer_than_the_discovery_limit_is_not_read(db_url: str, sb: Sandbox) -> None:
    """SKYSYNC_DISCOVERY_MAX_PAGES bounds the listing: a longer catalogue costs one page (which
    says how long it is); the rows go as before, variations through a 404 first."""
    for i in range(250):  # with the families, 3 pages of 100; the families on the last
        sb.seed_product({"sku": f"OUTRO-{i:03d}", "name": "x", "price": 1.0, "qty": 1})
    families = seed_families(sb, 3, prefix="ZZ")
    with relay_for(db_url, sb, settings_kw={"discovery_max_pages": 2}) as relay:
        for _parent, variation in families:
            insert(db_url, "stock", variation, {"qty": 5})
        drain(relay.deps)
    assert {r.state for r in rows(db_url).values()} == {"sent"}
    listing = [e for e in requests(sb, "GET") if e["path"].split("?")[0] == "/products"]
    assert len(listing) <= len(families)  # one page per batch at most, never the whole of it
    assert len([e for e in requests(sb, "PUT") if e["status"] == 404]) == len(families)
