"""Reconciliation's decisions, as pure functions over plain data: does SkyHub hold what the ERP
last said, field by field, and which outbox rows would put it right.

* :func:`listed_skus` flattens one product of SkyHub's listing into its SKUs (the product and
  its variations, which share its linked state).
* :func:`compare` holds one SKU as SkyHub lists it against what skysync expects it to hold
  (:class:`Expected`: the ERP's latest accepted value per field, the newest ``sent`` or
  ``withheld`` one). A difference in price, promotional price or stock is drift; so is one in
  an attribute of a product that is not frozen. A different attribute of a frozen (linked)
  product is reported apart: the marketplace ignores writes to it, so it is never repaired.
* :func:`corrections` turns drift and missing SKUs into outbox rows (always ``product`` rows:
  a variation's fields go in its parent's row), the same path as the ERP's changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from skysync.domain.planner import FLOWING_FIELDS
from skysync.domain.promotions import PRICE, PROMO, capped
from skysync.domain.reservation import Reservation
from skysync.domain.validation import is_number

# What SkyHub shows that the ERP never writes: never compared.
REMOTE_ONLY = frozenset({"sku", "variations", "associations", "removed", "condition_type"})


@dataclass(frozen=True)
class Believed:
    """The ERP's latest accepted value of one field, and the row that carried it."""

    value: Any
    row_id: int
    since: datetime | None  # when skysync recorded that row: since then it believed this


@dataclass(frozen=True)
class Expected:
    """What skysync expects SkyHub to hold for one SKU."""

    sku: str
    parent_sku: str | None = None
    fields: Mapping[str, Believed] = field(default_factory=dict)
    frozen: bool = False  # skysync withholds its attributes (linked to the marketplace)
    unfrozen: bool = False  # an operator let attribute changes through again
    busy: frozenset[str] = frozenset()  # a write for these fields is on its way: not compared


@dataclass(frozen=True)
class Listed:
    """One SKU as SkyHub's listing shows it."""

    sku: str
    parent_sku: str | None
    fields: Mapping[str, Any]
    linked: bool


@dataclass(frozen=True)
class Difference:
    """One field where SkyHub holds something other than the ERP's latest accepted value."""

    sku: str
    field: str
    erp: Any
    skyhub: Any  # None: SkyHub shows no value
    since: datetime | None
    row_id: int
    frozen: bool = False  # an attribute of a linked product: reported, never repaired
    note: str | None = None  # why SkyHub should hold ``erp`` (a promotion capped at the price)
    # what the corrective row carries, when not ``{field: erp}`` (see :func:`compare`)
    repair: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "field": self.field,
            "erp": self.erp,
            "skyhub": self.skyhub,
            "believed_since": self.since.isoformat() if self.since else None,
            "row_id": self.row_id,
            "frozen": self.frozen,
            "note": self.note,
        }


@dataclass(frozen=True)
class Correction:
    """One outbox row that puts SkyHub right: ``fields`` names what it repairs per SKU."""

    kind: str
    ref: str
    payload: dict[str, Any]
    fields: Mapping[str, tuple[str, ...]]


def _linked(product: Mapping[str, Any]) -> bool:
    associations = product.get("associations") or []
    return any(isinstance(a, dict) and a.get("status") == "linked" for a in associations)


def listed_skus(product: Mapping[str, Any]) -> list[Listed]:
    """A listed product and its variations, each as a :class:`Listed` (variations share the
    product's linked state). Entries without a SKU are skipped."""
    sku = product.get("sku")
    if not isinstance(sku, str) or not sku:
        return []
    linked = _linked(product)
    found = [Listed(sku, None, dict(product), linked)]
    for variation in product.get("variations") or []:
        vsku = variation.get("sku") if isinstance(variation, dict) else None
        if isinstance(vsku, str) and vsku:
            found.append(Listed(vsku, sku, dict(variation), linked))
    return found


def same(a: Any, b: Any) -> bool:
    """JSON values equal as SkyHub means them: 10 and 10.0 are one price; true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if is_number(a) and is_number(b):
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def compare(
    expected: Expected,
    listed: Listed,
    *,
    stock_buffer: int = 0,
    reservation: Reservation | None = None,
) -> list[Difference]:
    """Every field of ``expected`` whose value SkyHub does not hold, busy fields left out.
    Attributes of a frozen product (skysync froze it, or SkyHub shows it linked and no operator
    unfroze it) come back marked ``frozen``. With a stock buffer (SKYSYNC_STOCK_BUFFER) SkyHub
    should hold the ERP's quantity less the buffer; the difference still names the ERP's own
    value (a repair row carries it, and the relay takes the buffer off again). So with the
    units of open orders the ERP has not consumed (``reservation``, SKYSYNC_RESERVE_OPEN_ORDERS:
    skysync/domain/reservation.py), taken off before the buffer.

    Never a promotional price above the price (skysync/domain/promotions.py): SkyHub should
    hold the ERP's promotional price capped at its price, so a promotion the ERP's newer price
    made impossible is expected equal to the price; its repair resends the price, with which
    the relay caps the promotion again from the ERP's own value. And a promotional price above
    the price on SkyHub is drift even where each field matches what the ERP wrote (or the ERP
    never wrote a promotion): its repair sends it equal to the price."""
    frozen = expected.frozen or (listed.linked and not expected.unfrozen)
    fields = dict(expected.fields)
    busy = set(expected.busy)
    price, promo = fields.get(PRICE), fields.get(PROMO)
    capped_note = None
    if price is not None and promo is not None and capped(promo.value, price.value) != promo.value:
        newer = max(price, promo, key=lambda b: b.row_id)
        fields[PROMO] = Believed(price.value, newer.row_id, newer.since)
        capped_note = (
            f"the ERP's promotional_price {promo.value} is above its newer price "
            f"{price.value}: SkyHub should hold it equal to the price"
        )
        if PRICE in busy:
            busy.add(PROMO)  # capped at a price that is on its way
    found = []
    for name, believed in sorted(fields.items()):
        if name in REMOTE_ONLY or name in busy:
            continue
        remote = listed.fields.get(name)
        wanted = believed.value
        reserved_note = None
        if name == "qty" and is_number(wanted):
            units = reservation.units if reservation is not None else 0
            wanted = max(int(wanted) - units - stock_buffer, 0)
            if units and reservation is not None:
                reserved_note = f"SkyHub should hold {wanted}: {reservation.explain()}"
        if same(wanted, remote):
            continue
        is_capped = name == PROMO and capped_note is not None
        found.append(
            Difference(
                sku=expected.sku,
                field=name,
                erp=believed.value,
                skyhub=remote,
                since=believed.since,
                row_id=believed.row_id,
                frozen=frozen and name not in FLOWING_FIELDS,
                note=capped_note if is_capped else reserved_note,
                repair={PRICE: believed.value} if is_capped else None,
            )
        )
    above = _promotion_above_price(expected, listed, busy, found)
    return [*found, above] if above is not None else found


def _promotion_above_price(
    expected: Expected, listed: Listed, busy: set[str], found: Sequence[Difference]
) -> Difference | None:
    """SkyHub holds a promotional price above its price while neither field drifted from what
    skysync expects (the ERP never wrote a promotion, or not the price): drift all the same,
    repaired by sending the promotion equal to the price."""
    remote_price, remote_promo = listed.fields.get(PRICE), listed.fields.get(PROMO)
    pair = {PRICE, PROMO}
    if pair & busy or pair & {d.field for d in found}:
        return None
    if capped(remote_promo, remote_price) == remote_promo:
        return None
    price, promo = expected.fields.get(PRICE), expected.fields.get(PROMO)
    target = price.value if price is not None else remote_price
    basis = price or promo
    return Difference(
        sku=expected.sku,
        field=PROMO,
        erp=target,
        skyhub=remote_promo,
        since=basis.since if basis is not None else None,
        row_id=basis.row_id if basis is not None else 0,
        note=(
            f"SkyHub holds promotional_price {remote_promo} above the price {remote_price}: "
            f"it should be at most the price"
        ),
        repair={PROMO: target},
    )


@dataclass(frozen=True)
class Missing:
    """A SKU skysync believes SkyHub holds, that SkyHub does not list."""

    sku: str
    parent_sku: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "parent_sku": self.parent_sku}


def corrections(
    drift: Iterable[Difference],
    missing: Iterable[Missing],
    expected: Mapping[str, Expected],
) -> list[Correction]:
    """The product rows that repair ``drift`` (frozen attributes never) and recreate
    ``missing`` SKUs from their expected values, one row per product: a variation's fields go
    in its parent's row under ``variations``. A missing product takes its variations with it."""
    per_product: dict[str, dict[str, Any]] = {}
    repairs: dict[str, dict[str, tuple[str, ...]]] = {}

    def put(sku: str, values: Mapping[str, Any]) -> None:
        if not values:
            return
        known = expected.get(sku)
        parent = known.parent_sku if known is not None else None
        row = per_product.setdefault(parent or sku, {})
        if parent is None:
            row.update(values)
        else:
            entries = row.setdefault("variations", [])
            entry = next((e for e in entries if e["sku"] == sku), None)
            if entry is None:
                entry = {"sku": sku}
                entries.append(entry)
            entry.update(values)
        names = repairs.setdefault(parent or sku, {})
        names[sku] = tuple(sorted(set(names.get(sku, ())) | set(values)))

    gone = {m.sku for m in missing}
    for difference in drift:
        if difference.frozen or difference.sku in gone:
            continue
        repair = difference.repair
        put(
            difference.sku,
            dict(repair) if repair is not None else {difference.field: difference.erp},
        )
    for m in missing:
        known = expected.get(m.sku)
        if known is None or (m.parent_sku is not None and m.parent_sku in gone):
            continue  # nothing to rebuild it from, or its parent's row carries it
        put(m.sku, {k: b.value for k, b in known.fields.items() if k not in REMOTE_ONLY})
        if m.parent_sku is None:
            for vsku, child in expected.items():
                if child.parent_sku == m.sku and vsku in gone:
                    values = {k: b.value for k, b in child.fields.items() if k not in REMOTE_ONLY}
                    put(vsku, values)
    return [
        Correction("product", ref, payload, repairs[ref]) for ref, payload in per_product.items()
    ]


@dataclass
class ReconcileReport:
    """What one reconciliation found, and what it enqueued."""

    started_at: datetime
    finished_at: datetime | None = None
    sku: str | None = None  # a run limited to one SKU
    pages: int = 0
    skus_compared: int = 0
    drift: list[Difference] = field(default_factory=list)
    frozen: list[Difference] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    busy_fields: int = 0
    repair: bool = False
    repaired: list[dict[str, Any]] = field(default_factory=list)
    not_repaired: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def add(self, differences: Sequence[Difference]) -> None:
        for difference in differences:
            (self.frozen if difference.frozen else self.drift).append(difference)

    @property
    def has_drift(self) -> bool:
        """Drift, an orphan or a missing SKU: what makes ``skysync reconcile`` exit 1. Frozen
        attributes alone do not (nothing can or should repair them)."""
        return bool(self.drift or self.orphans or self.missing)

    def drift_by_field(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for difference in self.drift:
            counts[difference.field] = counts.get(difference.field, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self, sample: int = 50) -> dict[str, Any]:
        """Counts (and the first few of each list) for the run log, status and metrics."""
        return {
            "sku": self.sku,
            "pages": self.pages,
            "skus_compared": self.skus_compared,
            "drift": len(self.drift),
            "drift_fields": self.drift_by_field(),
            "frozen": len(self.frozen),
            "orphans": len(self.orphans),
            "missing": len(self.missing),
            "busy_fields": self.busy_fields,
            "repair": self.repair,
            "repaired_rows": len(self.repaired),
            "not_repaired": len(self.not_repaired),
            "drift_sample": [d.as_dict() for d in self.drift[:sample]],
            "orphan_sample": self.orphans[:sample],
            "missing_sample": [m.as_dict() for m in self.missing[:sample]],
        }

    def as_dict(self) -> dict[str, Any]:
        """The whole report (``skysync reconcile --json``)."""
        return {
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "sku": self.sku,
            "pages": self.pages,
            "skus_compared": self.skus_compared,
            "has_drift": self.has_drift,
            "drift": [d.as_dict() for d in self.drift],
            "frozen": [d.as_dict() for d in self.frozen],
            "orphans": list(self.orphans),
            "missing": [m.as_dict() for m in self.missing],
            "busy_fields": self.busy_fields,
            "repair": self.repair,
            "repaired": list(self.repaired),
            "not_repaired": list(self.not_repaired),
            "error": self.error,
        }


@dataclass(frozen=True)
class ReconcileProgress:
    """How a reconciliation is going, after each page: what a terminal shows."""

    pages: int
    pages_total: int | None  # from SkyHub's ``total``, when it gives one
    skus: int
    drift: int
    elapsed: float

    def line(self) -> str:
        if self.pages_total is None:
            eta = "unknown"
        elif self.pages >= self.pages_total:
            eta = "0 s"
        else:
            per_page = self.elapsed / self.pages if self.pages else 0.0
            eta = f"{(self.pages_total - self.pages) * per_page:.0f} s"
        total = f"/{self.pages_total}" if self.pages_total is not None else ""
        return (
            f"reconcile: {self.pages}{total} pages read, {self.skus} SKUs compared, "
            f"{self.drift} drift so far, ETA {eta}"
        )


@dataclass(frozen=True)
class AcceptedRow:
    """An outbox row that got through (sent, superseded into a sent row, or withheld)."""

    id: int
    ref: str
    payload: Any
    finished_at: datetime | None


@dataclass(frozen=True)
class ItemFacts:
    """What the ``skysync_item`` row of a SKU says (and its parent's freeze, for a variation)."""

    sku: str
    parent_sku: str | None
    acknowledged: Mapping[str, Any]
    last_applied: Mapping[str, int]  # field -> newest row applied (sent, or withheld unchanged)
    attempt: Mapping[str, Any]  # fields of a write whose answer was never recorded
    frozen: bool
    frozen_since: datetime | None
    unfrozen: bool


def value_in(row: AcceptedRow, sku: str, name: str) -> tuple[bool, Any]:
    """The value ``row`` gave ``name`` of ``sku`` (in a product row's ``variations`` when the row
    is its parent's); (False, None) when it gave none."""
    payload = row.payload if isinstance(row.payload, dict) else {}
    if row.ref != sku:
        payload = next(
            (
                v
                for v in payload.get("variations") or []
                if isinstance(v, dict) and v.get("sku") == sku
            ),
            {},
        )
    value = payload.get(name)
    if value is None or value == "":
        return False, None
    return True, value


# Which fields an open row of each kind may still change.
_OPEN_KIND_FIELDS = {"price": {"price", "promotional_price"}, "stock": {"qty"}}


def build_expected(
    facts: ItemFacts,
    rows: Mapping[int, AcceptedRow],
    later_product_rows: Sequence[AcceptedRow],
    open_kinds: Iterable[str],
    *,
    read_at: datetime,
) -> Expected:
    """The ERP's latest accepted value per field of one SKU.

    ``last_applied`` names, per field, the newest row SkyHub took (or already had) the value
    from: its payload holds the value, and its ``finished_at`` says since when. Attributes the
    relay withheld because the product is frozen never reach ``last_applied``: the newest of
    ``later_product_rows`` (product rows that got through after the freeze) gives those.

    A field is busy (not compared) while a write for it is on its way: an open (pending or
    in-flight) row of a kind that carries it (a product row: every field), a write whose
    answer was never recorded, or a row recorded after SkyHub's page was read."""
    values: dict[str, Believed] = {}
    for name, row_id in facts.last_applied.items():
        row = rows.get(int(row_id))
        if row is None:
            if name in facts.acknowledged:  # the row is gone: trust what SkyHub acknowledged
                values[name] = Believed(facts.acknowledged[name], int(row_id), None)
            continue
        found, value = value_in(row, facts.sku, name)
        if not found and name in facts.acknowledged:
            found, value = True, facts.acknowledged[name]
        if found:
            values[name] = Believed(value, row.id, row.finished_at)
    if facts.frozen:
        for row in sorted(later_product_rows, key=lambda r: r.id):
            if facts.frozen_since is not None and (
                row.finished_at is None or row.finished_at < facts.frozen_since
            ):
                continue
            payload = row.payload if isinstance(row.payload, dict) else {}
            names = set(payload)
            for v in payload.get("variations") or []:
                if isinstance(v, dict) and v.get("sku") == facts.sku:
                    names |= set(v)
            for name in names - FLOWING_FIELDS - REMOTE_ONLY:
                found, value = value_in(row, facts.sku, name)
                current = values.get(name)
                if found and (current is None or current.row_id < row.id):
                    values[name] = Believed(value, row.id, row.finished_at)
    busy = set(facts.attempt)
    for kind in open_kinds:
        busy |= _OPEN_KIND_FIELDS.get(kind, set(values) | FLOWING_FIELDS)
    busy |= {n for n, b in values.items() if b.since is not None and b.since >= read_at}
    return Expected(
        sku=facts.sku,
        parent_sku=facts.parent_sku,
        fields=values,
        frozen=facts.frozen,
        unfrozen=facts.unfrozen,
        busy=frozenset(busy),
    )
