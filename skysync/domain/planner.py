"""The relay's decisions, as pure functions over plain data: no database, no network, no clock
(the caller passes ``now`` and the random source).

* :func:`coalesce` folds the valid rows of one SKU into one request: later rows win field by
  field, ``null``/``""`` mean "no value" and never erase a value, and each field remembers the
  row it came from.
* :func:`decide` compares that request with what SkyHub last acknowledged for the SKU: it drops
  unchanged fields and fields a newer row already set (no stale overwrite), and withholds the
  attributes of a product the marketplace froze, saying which and why.
* :func:`backoff_delay` spaces out retries (exponential, with jitter).
* :func:`families` orders keys so a parent product goes out before its variations, where
  :func:`ordering_parents` says that order matters.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from skysync.domain.kinds import ORDER_KINDS, SKU_KINDS, Kind
from skysync.domain.validation import is_blank

# Fields that keep flowing after the marketplace froze a product (seed rule 2).
FLOWING_FIELDS = frozenset({"price", "promotional_price", "qty"})


@dataclass(frozen=True)
class Row:
    """An outbox row as the planner sees it."""

    id: int
    kind: str
    ref: str
    payload: Any
    attempts: int = 0
    released: bool = False  # an operator released it from the price guard (outbox release)
    # the first claim that put it in flight (see :func:`newness`); 0 in pure tests
    epoch: int = 0
    # when the database wrote it (the stock reservation counts from it: domain/reservation.py)
    written_at: datetime | None = None
    # who wrote it: the ERP, or skysync (a correction or a reservation row: origin)
    origin: str = "erp"

    @property
    def order(self) -> tuple[int, int]:
        """Where the row stands among its key's rows: :func:`newness`."""
        return newness(self.epoch, self.id)


def newness(epoch: int | None, row_id: int) -> tuple[int, int]:
    """Which of two rows of one key is newer: the one a later claim read first, and among
    rows a claim read together, the higher id (docs/erp-contract.md, "Which row is newer").

    Ids come from a sequence at INSERT time, but a row becomes visible at COMMIT: a row that
    the claim putting another row in flight could not see committed after that claim read the
    key, so it is newer whatever its id. A claim stamps its number (``epoch``) on the rows it
    puts in flight; a row no claim has read yet (``None``) is newer than all of them."""
    return (NOT_YET_CLAIMED if epoch is None else epoch, row_id)


NOT_YET_CLAIMED = 2**63 - 1  # newer than any claim's number


def newness_in(epochs: Mapping[int, int], row_id: int) -> tuple[int, int]:
    """:func:`newness` of a row whose claim epoch ``epochs`` holds (0 when it holds none)."""
    return newness(epochs.get(row_id, 0), row_id)


@dataclass(frozen=True)
class ItemView:
    """What skysync knows of one SKU in SkyHub (a ``skysync_item`` row, or nothing yet)."""

    sku: str
    in_skyhub: bool = False
    parent_sku: str | None = None
    acknowledged: Mapping[str, Any] = field(default_factory=dict)
    frozen: bool = False
    frozen_since: datetime | None = None
    unfrozen: bool = False  # an operator let attribute changes through (`skysync item unfreeze`)
    last_applied: Mapping[str, int] = field(default_factory=dict)
    applied_epochs: Mapping[str, int] = field(default_factory=dict)  # of last_applied's rows

    def applied_order(self, name: str) -> tuple[int, int] | None:
        """:func:`newness` of the row whose value of ``name`` was applied last, if any."""
        row_id = self.last_applied.get(name)
        return None if row_id is None else newness(self.applied_epochs.get(name, 0), row_id)

    @property
    def is_variation(self) -> bool:
        return self.parent_sku is not None


@dataclass
class SkuRequest:
    """All valid rows of one SKU folded into one request."""

    sku: str
    row_ids: list[int]
    fields: dict[str, Any]
    sources: dict[str, int]
    has_product_row: bool
    variations: dict[str, dict[str, Any]] = field(default_factory=dict)
    variation_sources: dict[str, dict[str, int]] = field(default_factory=dict)
    released: frozenset[int] = frozenset()  # rows the price guard lets through (released)
    epochs: dict[int, int] = field(default_factory=dict)  # row id -> its claim epoch
    written_at: dict[int, datetime] = field(default_factory=dict)  # row id -> written when
    made_by_skysync: frozenset[int] = frozenset()  # rows not the ERP's (Row.origin)

    def order_of(self, row_id: int) -> tuple[int, int]:
        """:func:`newness` of one of the request's rows."""
        return newness_in(self.epochs, row_id)

    @property
    def winner_id(self) -> int:
        """The newest row: it carries the request; the older ones are superseded by it."""
        return max(self.row_ids, key=self.order_of)


def coalesce(rows: Sequence[Row], sku: str | None = None) -> SkuRequest:
    """Fold the product, price and stock rows of ONE SKU (already validated), oldest first
    (:func:`newness`: claim epoch, then id).

    With ``sku``, rows of other refs are price/stock rows of that product's variations (see
    :func:`carried_variations`): they fold into the product's variation entries, so that a
    variation gets one request with the latest of each field."""
    if not rows:
        raise ValueError("coalesce needs at least one row")
    ordered = sorted(rows, key=lambda r: r.order)
    sku = sku or ordered[0].ref
    request = SkuRequest(
        sku=sku,
        row_ids=[r.id for r in ordered],
        fields={},
        sources={},
        has_product_row=any(r.kind == "product" and r.ref == sku for r in ordered),
        released=frozenset(r.id for r in ordered if r.released),
        epochs={r.id: r.epoch for r in ordered},
        written_at={r.id: r.written_at for r in ordered if r.written_at is not None},
        made_by_skysync=frozenset(r.id for r in ordered if r.origin != "erp"),
    )
    for row in ordered:
        if row.ref != sku:
            _fold_variations(request, row.id, [{**row.payload, "sku": row.ref}])
            continue
        for name, value in row.payload.items():
            if name == "variations":
                _fold_variations(request, row.id, value or [])
            elif name == "sku":
                continue  # validation made sure it is the row's ref
            elif not is_blank(value):
                request.fields[name] = _wire_value(name, value)
                request.sources[name] = row.id
    return request


class Folding:
    """Which of a claim's rows its requests need, fed one valid row at a time, each SKU's rows
    newest first.

    :func:`coalesce` keeps, for each field, the value of the newest row that has one. So of a
    SKU's rows only these matter: the newest row of each kind, and the newest row carrying
    each field (a variation's field within a product row counted apart). Folding those gives
    the same request, the same sources and the same newest row as folding all the rows. Fed
    newest first, a row is needed exactly when it brings a mark (a kind or a field) that no
    newer row brought; every other row is folded into the SKU's newest valid row, its winner,
    there and then. The memory kept is bounded by keys and fields, not rows. Order steps are
    all kept (each is its own request).
    """

    def __init__(self) -> None:
        self._marks: dict[str, set[tuple[Any, ...]]] = {}
        self._kept: dict[str, list[int]] = {}

    def keep(
        self,
        row_id: int,
        kind: str,
        ref: str,
        payload: Any,
        marks: Sequence[tuple[Any, ...]] | None = None,
    ) -> bool:
        """Is this row needed? (False: it is folded into :meth:`winner` of its SKU.)
        ``marks``: the row's, when the caller knows them (:data:`QTY_MARKS`)."""
        kept = self._kept.setdefault(ref, [])
        if kind not in SKU_KINDS:
            kept.append(row_id)
            return True
        seen = self._marks.setdefault(ref, set())
        new = [mark for mark in marks or _marks(kind, payload) if mark not in seen]
        if not new:
            return False
        seen.update(new)
        kept.append(row_id)
        return True

    def winner(self, ref: str) -> int:
        """The SKU's newest valid row (the first one kept, rows being fed newest first)."""
        return self._kept[ref][0]

    def ids_by_ref(self) -> dict[str, list[int]]:
        """The rows to load, per ref, in id order (refs in the order they were first seen)."""
        return {ref: sorted(ids) for ref, ids in self._kept.items()}


def _marks(kind: str, payload: Any) -> list[tuple[Any, ...]]:
    """What a SKU row brings to its request: its kind, and each field it carries a value of."""
    marks: list[tuple[Any, ...]] = [("kind", kind)]
    for name, value in (payload or {}).items():
        if name == "variations":
            for variation in value or []:
                marks += [
                    ("variation", variation.get("sku"), field)
                    for field, v in variation.items()
                    if field != "sku" and not is_blank(v)
                ]
        elif name != "sku" and not is_blank(value):
            marks.append(("field", name))
    return marks


# The marks of a stock row {"qty": n}: most rows of a stock backlog
QTY_MARKS = tuple(_marks("stock", {"qty": 0}))

INTEGER_FIELDS = frozenset({"qty", "crossdocking"})


def _wire_value(name: str, value: Any) -> Any:
    """SkyHub's quantities are integers: a validated 5.0 goes out as 5."""
    if name in INTEGER_FIELDS and isinstance(value, float):
        return int(value)
    return value


def _fold_variations(request: SkuRequest, row_id: int, variations: list[dict[str, Any]]) -> None:
    for variation in variations:
        sku = variation["sku"]
        merged = request.variations.setdefault(sku, {"sku": sku})
        sources = request.variation_sources.setdefault(sku, {})
        for name, value in variation.items():
            if not is_blank(value) and name != "sku":
                merged[name] = _wire_value(name, value)
                sources[name] = row_id


@dataclass
class Decision:
    """What to send for one SKU, and what not to send with the reason for each field."""

    send: dict[str, Any]
    withheld: dict[str, str]
    # fields withheld because SkyHub already has the value, with the row that asked for it:
    # that row counts as applied, so an older row still waiting can never overwrite it later
    unchanged: dict[str, int] = field(default_factory=dict)
    # what was sent otherwise than the rows asked, and why (a promotion capped at the price:
    # skysync/domain/promotions.py); the row's reason carries them
    notes: list[str] = field(default_factory=list)

    @property
    def nothing_to_send(self) -> bool:
        return not self.send

    def reason(self) -> str:
        """One line naming every withheld field, grouped by reason."""
        if not self.withheld:
            return 'nothing to send: every field was empty (null or "" mean no value)'
        by_reason: dict[str, list[str]] = {}
        for name, why in self.withheld.items():
            by_reason.setdefault(why, []).append(name)
        return "; ".join(f"{', '.join(sorted(names))}: {why}" for why, names in by_reason.items())


def frozen_reason(item: ItemView) -> str:
    since = item.frozen_since.isoformat(timespec="seconds") if item.frozen_since else "unknown"
    return f"frozen: product linked to the marketplace since {since}"


def decide(request: SkuRequest, item: ItemView, *, frozen: bool | None = None) -> Decision:
    """Drop frozen attributes, unchanged values and values older than what was applied."""
    is_frozen = item.frozen if frozen is None else frozen
    send: dict[str, Any] = {}
    withheld: dict[str, str] = {}
    unchanged: dict[str, int] = {}
    for name, value in request.fields.items():
        source = request.sources[name]
        applied = item.applied_order(name)
        if applied is not None and applied > request.order_of(source):
            withheld[name] = f"row {applied[1]} already applied a newer value"
        elif is_frozen and name not in FLOWING_FIELDS:
            withheld[name] = frozen_reason(item)
        elif item.in_skyhub and name in item.acknowledged and item.acknowledged[name] == value:
            withheld[name] = "unchanged: SkyHub already has this value"
            unchanged[name] = source
        else:
            send[name] = value
    if request.variations:
        if is_frozen:
            # A variation's attributes freeze with its product; its price and stock keep flowing
            # (each variation is then diffed against what SkyHub acknowledged for it).
            flowing = []
            for vsku, variation in request.variations.items():
                for name in variation:
                    if name != "sku" and name not in FLOWING_FIELDS:
                        withheld[f"variations[{vsku}].{name}"] = frozen_reason(item)
                values = {k: v for k, v in variation.items() if k in FLOWING_FIELDS}
                if values:
                    flowing.append({"sku": vsku, **values})
            if flowing:
                send["variations"] = flowing
        else:
            send["variations"] = list(request.variations.values())
    return Decision(send=send, withheld=withheld, unchanged=unchanged)


def variation_request(parent: SkuRequest, variation: Mapping[str, Any]) -> SkuRequest:
    """One variation carried by a product row (as :func:`decide` let it through), as a request
    of its own, so that it is diffed against that variation's own acknowledged values and
    applied rows."""
    variation_sku = variation["sku"]
    fields = {k: v for k, v in variation.items() if k != "sku"}
    sources = parent.variation_sources.get(variation_sku, {})
    return SkuRequest(
        sku=variation_sku,
        row_ids=sorted(set(sources.values()), key=parent.order_of) or list(parent.row_ids),
        fields=fields,
        sources={k: sources.get(k, parent.winner_id) for k in fields},
        has_product_row=True,
        released=parent.released,
        epochs=parent.epochs,
        written_at=parent.written_at,
        made_by_skysync=parent.made_by_skysync,
    )


def backoff_delay(
    attempts: int, *, base: float = 30.0, cap: float = 3600.0, rng: random.Random | None = None
) -> float:
    """Seconds before retry number ``attempts`` (1-based): base * 2^(n-1), capped, with jitter
    drawn from [50 %, 100 %] so that rows failed together do not come back together."""
    ceiling: float = min(cap, base * (2 ** min(max(0, attempts - 1), 60)))  # int ** int: Any
    return ceiling * (0.5 + 0.5 * (rng or random).random())


class KeyKind(StrEnum):
    """What a delivery key's ref names: a SKU (its rows fold into one request) or an order
    code (its steps go one by one)."""

    SKU = "sku"
    ORDER = "order"


class DeliveryKey(NamedTuple):
    """The rows delivered together and in order. A tuple, so it hashes and compares as
    ``(kind, ref)`` does."""

    kind: KeyKind
    ref: str


def key_of(row: Row) -> DeliveryKey:
    """Rows of one key are delivered together and in order: a SKU, or an order code."""
    return DeliveryKey(KeyKind.ORDER if row.kind in ORDER_KINDS else KeyKind.SKU, row.ref)


def carried_variations(
    rows_by_ref: Mapping[str, Sequence[Row]], parent_of: Mapping[str, str | None]
) -> dict[str, str]:
    """Variation SKUs (-> their parent) whose own rows in this batch fold into their parent's
    request: the parent's product rows in the same batch carry that variation too. One request
    per variation then carries the latest value of each field, and all those rows settle
    together (a failure retries them together: none is finished while a value is still out)."""
    carried: dict[str, str] = {}
    for ref in rows_by_ref:
        parent = parent_of.get(ref)
        if parent is None or parent not in rows_by_ref:
            continue
        listed = {
            v.get("sku")
            for r in rows_by_ref[parent]
            if r.kind == "product"
            for v in (r.payload.get("variations") or [])
            if isinstance(v, dict)
        }
        if ref in listed:
            carried[ref] = parent
    return carried


def ordering_parents(
    parent_of: Mapping[str, str | None],
    kinds: Mapping[str, Collection[str]],
    in_skyhub: Collection[str],
) -> dict[str, str | None]:
    """Of ``parent_of`` (SKU -> its parent, None for a product), the links that order a family
    (for :func:`families`): a variation follows its parent unless both already exist on SkyHub
    (``in_skyhub``: what SkyHub acknowledged) and neither's rows in this batch (``kinds``: the
    kinds of each SKU's rows) need the other first. Updates to a parent and a variation that
    SkyHub both has are then independent requests to different buckets, and go out at the same
    time. Only creation needs the parent first; and the two stay in order when:

    * either has a ``product`` row: it may create the parent or carry the variation (the
      variation's own rows then fold into its parent's request), and its read of the parent
      may find it linked (frozen) before the variation's attributes go;
    * both have a ``price`` row: a variation inherits the price it does not set from its
      parent, so their prices (and promotional prices) go in the order they were decided.

    Price and stock on the parent beside stock on its variation (or the other way round) are
    free: a fashion catalogue whose stock lives on variations and prices on products."""
    product, price = Kind.PRODUCT, Kind.PRICE

    def apart(ref: str, parent: str) -> bool:
        mine, theirs = kinds.get(ref, ()), kinds.get(parent, ())
        return (
            ref in in_skyhub
            and parent in in_skyhub
            and product not in mine
            and product not in theirs
            and not (price in mine and price in theirs)
        )

    return {
        ref: None if parent is not None and apart(ref, parent) else parent
        for ref, parent in parent_of.items()
    }


def families(refs: Iterable[str], parent_of: Mapping[str, str | None]) -> list[list[str]]:
    """Group keys into families that must go out in sequence: a parent SKU first, then its
    variations. Keys without a parent in the set form a family of one."""
    refs = list(dict.fromkeys(refs))
    present = set(refs)
    groups: dict[str, list[str]] = {}
    for ref in refs:
        parent = parent_of.get(ref)
        head = parent if parent in present else ref
        groups.setdefault(head, [])
    for ref in refs:
        parent = parent_of.get(ref)
        head = parent if parent in present else ref
        if ref == head:
            groups[head].insert(0, ref)
        else:
            groups[head].append(ref)
    return list(groups.values())
