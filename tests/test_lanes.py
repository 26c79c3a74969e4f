"""Every rate-limit bucket at once (docs/relay.md, "Every bucket at once"): which bucket a key
probably hits, the interleaving of a batch's work by bucket, chunks that carry work for every
bucket while a family stays together with its parent first, and lane threads that never wait
on another bucket."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from relay_helpers import (
    CLIENT_CREDENTIALS,
    create_product,
    insert,
    relay_for,
    rows,
    sandbox_config,
)

from skysync.domain.kinds import ORDER_KINDS
from skysync.domain.lanes import (
    ORDER_ACTIONS,
    interleave,
    lane_of_key,
    lead_with,
    threads_per_lane,
)
from skysync.domain.planner import DeliveryKey, KeyKind, ordering_parents
from skysync.emulator import Sandbox
from skysync.relay import batch
from skysync.relay.batch import chunk_by_family
from skysync.relay.deliver import _run_groups
from skysync.skyhub.buckets import bucket_for


def test_a_keys_lane_is_the_bucket_its_write_counts_against() -> None:
    assert lane_of_key("stock", variation=False) == bucket_for("PUT", "/products/P-1")
    assert lane_of_key("price", variation=True) == bucket_for("PUT", "/variations/V-1")
    assert lane_of_key("product", variation=False) == "products:PUT"
    assert set(ORDER_ACTIONS) == set(ORDER_KINDS)
    for kind, action in ORDER_ACTIONS.items():
        assert lane_of_key(kind, variation=False) == bucket_for("POST", f"/orders/O-1/{action}")


def test_interleave_spreads_each_lane_over_the_whole_list_in_its_own_order() -> None:
    items = ["a1", "a2", "a3", "a4", "b1", "b2"]
    assert interleave(items, lambda x: x[0]) == ["a1", "b1", "a2", "a3", "b2", "a4"]

    many = [f"p{i}" for i in range(90)] + [f"v{i}" for i in range(90)]
    many += [f"o{i}" for i in range(30)]
    mixed = interleave(many, lambda x: x[0])
    assert sorted(mixed) == sorted(many)
    for lane in "pvo":
        assert [x for x in mixed if x[0] == lane] == [x for x in many if x[0] == lane]
    # any stretch of 21 holds every lane in proportion (9 p, 9 v, 3 o), give or take one
    for start in range(0, len(mixed) - 21):
        counts = Counter(x[0] for x in mixed[start : start + 21])
        assert abs(counts["p"] - 9) <= 1 and abs(counts["v"] - 9) <= 1
        assert abs(counts["o"] - 3) <= 1


def test_threads_are_shared_among_lanes_one_each_first() -> None:
    assert threads_per_lane({"a": 6, "b": 6, "c": 6, "d": 6}, 8) == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert threads_per_lane({"a": 20, "b": 1}, 8) == {"a": 7, "b": 1}
    assert threads_per_lane({"a": 1}, 8) == {"a": 1}  # never more threads than work
    assert threads_per_lane({"a": 5, "b": 3, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}
    assert threads_per_lane({}, 8) == {}


def test_lead_with_turns_the_list_round_to_the_wanted_lane() -> None:
    items = ["a1", "b1", "a2", "b2"]
    assert lead_with(items, lambda x: x[0], ["a", "b"], 0) == items
    assert lead_with(items, lambda x: x[0], ["a", "b"], 1) == ["b1", "a2", "b2", "a1"]
    assert lead_with(items, lambda x: x[0], ["a", "b", "c"], 2) == items  # no c: unchanged


def _lanes_of(chunk: list[int], ref_of: dict[int, str], lane: dict[str, str]) -> list[str]:
    return [lane[ref_of[i]] for i in chunk]


def test_every_chunk_carries_work_for_every_bucket() -> None:
    """The ERP wrote 60 product stock rows, then 60 variation stock rows (variations of other
    products), then 30 invoices: each chunk mixes them in proportion, instead of the first
    chunks being all products and the variations waiting behind them."""
    products = [f"P-{i}" for i in range(60)]
    variations = [f"V-{i}" for i in range(60)]
    orders = [f"O-{i}" for i in range(30)]
    refs = products + variations + orders
    by_ref = {ref: [n + 1] for n, ref in enumerate(refs)}
    ref_of = {ids[0]: ref for ref, ids in by_ref.items()}
    parents = {v: f"F-{i // 2}" for i, v in enumerate(variations)}  # parents not in the batch
    kinds = {**{r: "stock" for r in products + variations}, **{o: "order_invoice" for o in orders}}
    lane = {
        **{p: "products:PUT" for p in products},
        **{v: "variations:PUT" for v in variations},
        **{o: "orders/invoice:POST" for o in orders},
    }

    chunks = chunk_by_family(by_ref, parents, kinds)

    assert sorted(i for chunk in chunks for i in chunk) == sorted(ref_of)
    biggest = round(batch.CHUNK_KEYS * max(batch.CHUNK_STAGGER))
    assert all(len(chunk) <= biggest for chunk in chunks)
    # chunks of different sizes, so that workers that start together do not end together
    assert len({len(chunk) for chunk in chunks[:3]}) == 3
    for chunk in chunks:
        counts = Counter(_lanes_of(chunk, ref_of, lane))
        share = len(chunk) / len(refs)
        assert abs(counts["products:PUT"] - 60 * share) <= 1.5, counts
        assert abs(counts["variations:PUT"] - 60 * share) <= 1.5, counts
        assert abs(counts["orders/invoice:POST"] - 30 * share) <= 1.5, counts
    # the chunks lead with different buckets: their first requests, sent alone while each
    # worker checks the credentials, do not queue on one bucket
    leads = [lane[ref_of[chunk[0]]] for chunk in chunks]
    assert len(set(leads[:3])) == min(3, len(chunks))


def test_a_family_stays_together_with_its_parent_first() -> None:
    """A new parent (a product row naming its variations) and its variations' own stock rows:
    one chunk, the parent before its variations, while other work is interleaved around it."""
    refs = [f"P-{i}" for i in range(40)] + ["NEW"] + [f"V-{i}" for i in range(40)]
    refs += ["NEW-a", "NEW-b"]
    by_ref = {ref: [n + 1] for n, ref in enumerate(refs)}
    parents: dict[str, str | None] = {v: f"F-{i}" for i, v in enumerate(refs[41:81])}
    parents.update({"NEW-a": "NEW", "NEW-b": "NEW"})
    kinds = {ref: "stock" for ref in refs}
    kinds["NEW"] = "product"

    chunks = chunk_by_family(by_ref, parents, kinds)

    holding = [chunk for chunk in chunks if by_ref["NEW"][0] in chunk]
    assert len(holding) == 1
    (chunk,) = holding
    at = {i: n for n, i in enumerate(chunk)}
    new, a, b = (by_ref[r][0] for r in ("NEW", "NEW-a", "NEW-b"))
    assert a in at and b in at
    assert at[new] + 1 == at[a] and at[a] + 1 == at[b]  # the family in order, unbroken


def test_a_parent_and_its_variation_on_skyhub_go_in_their_own_buckets() -> None:
    """Issue 19, part 4, a fashion catalogue: 40 parents, each with a stock row of its own and
    one on its own variation, all on SkyHub. Each variation is a family of its own in the
    variations bucket (``follows`` says it need not wait for its parent), so every chunk
    carries both buckets' work; a new parent (a product row) still heads its variation."""
    heads = [f"P-{i}" for i in range(40)]
    refs = [ref for p in heads for ref in (p, f"{p}-v")] + ["NEW", "NEW-v"]
    by_ref = {ref: [n + 1] for n, ref in enumerate(refs)}
    ref_of = {ids[0]: ref for ref, ids in by_ref.items()}
    parents: dict[str, str | None] = {ref: None for ref in refs}
    parents.update({f"{p}-v": p for p in [*heads, "NEW"]})
    kinds = {ref: "stock" for ref in refs}
    kinds["NEW"] = "product"
    follows = ordering_parents(
        parents, {ref: {kind} for ref, kind in kinds.items()}, set(refs[:-2])
    )

    chunks = chunk_by_family(by_ref, parents, kinds, follows)

    lane = {ref: "variations:PUT" if parents[ref] else "products:PUT" for ref in refs}
    for chunk in chunks:
        counts = Counter(_lanes_of(chunk, ref_of, lane))
        assert abs(counts["products:PUT"] - counts["variations:PUT"]) <= 2, counts
    holding = [chunk for chunk in chunks if by_ref["NEW"][0] in chunk]
    assert len(holding) == 1
    at = {i: n for n, i in enumerate(holding[0])}
    assert at[by_ref["NEW"][0]] + 1 == at[by_ref["NEW-v"][0]]  # the new family, in order
    # without ``follows`` (today's families) a parent's chunk holds its variation right after it
    for chunk in chunk_by_family(by_ref, parents, kinds):
        at = {i: n for n, i in enumerate(chunk)}
        for p in [*heads, "NEW"]:
            if by_ref[p][0] in at:
                assert at[by_ref[p][0]] + 1 == at[by_ref[f"{p}-v"][0]]


def test_a_thread_waiting_on_one_bucket_never_holds_up_another() -> None:
    """Two threads; the product families block (as on a limiter that has no slot) until every
    variation family ran. FIFO threads would both sit on products and never reach the
    variations; lane threads run them."""
    products = [[DeliveryKey(KeyKind.SKU, f"P-{i}")] for i in range(6)]
    variations = [[DeliveryKey(KeyKind.SKU, f"V-{i}")] for i in range(3)]
    groups = [products[0], *products[1:], *variations]
    lanes = ["products:PUT"] * 6 + ["variations:PUT"] * 3
    variations_done = threading.Event()
    ran: list[str] = []
    lock = threading.Lock()

    def run_family(keys: list[DeliveryKey]) -> None:
        ref = keys[0].ref
        blocked = ref.startswith("P-") and ref != "P-0"
        if blocked and not variations_done.wait(timeout=10):
            raise AssertionError("the variations waited behind the products")
        with lock:
            ran.append(ref)
            if sum(r.startswith("V-") for r in ran) == 3:
                variations_done.set()

    _run_groups(groups, lanes, run_family, concurrency=2)

    assert ran[0] == "P-0"  # the first family goes alone
    assert sorted(ran) == sorted(g[0].ref for g in groups)
    assert ran.index("V-2") < ran.index("P-1")


@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("concurrency", [1, 8])
def test_lane_threads_run_every_family_once(concurrency: int, check: bool) -> None:
    groups = [[DeliveryKey(KeyKind.SKU, f"S-{i}")] for i in range(30)]
    lanes = [("a", "b", "c")[i % 3] for i in range(30)]
    ran: list[str] = []
    lock = threading.Lock()

    def run_family(keys: list[DeliveryKey]) -> None:
        with lock:
            ran.append(keys[0].ref)

    _run_groups(groups, lanes, run_family, concurrency, check=check)
    assert sorted(ran) == sorted(g[0].ref for g in groups)
    if check or concurrency == 1:
        assert ran[0] == "S-0"


def test_credentials_accepted_lately_skip_the_lone_check_and_a_refusal_still_stops(
    db_url: str,
) -> None:
    """A process whose client had a 2xx in the last minute sends a chunk's first families on
    all lanes at once, without one request alone first; if SkyHub now refuses the
    credentials, the claim still stops: a request per thread at most, every row back
    untouched."""
    with Sandbox(sandbox_config(**CLIENT_CREDENTIALS)) as sb, relay_for(db_url, sb) as relay:
        assert not relay.client.accepted_within(60)
        create_product(db_url, relay, "L-0", price=1.0)
        assert relay.client.accepted_within(60)
        sb.configure(api_key="revoked")
        before = len(sb.request_log())
        ids = [insert(db_url, "price", f"L-{i}", {"price": 2.0 + i}) for i in range(30)]
        summary = relay.run_batch()
        assert summary.delivery is not None and summary.delivery.auth_failed
        refused = sb.request_log()[before:]
        assert 1 <= len(refused) <= relay.concurrency, refused
        assert {e["status"] for e in refused} == {401}
        got = rows(db_url)
        assert all((got[i].state, got[i].attempts) == ("pending", 0) for i in ids)
