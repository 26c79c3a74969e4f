"""The SQL on ``skysync_item``: what SkyHub last acknowledged per SKU, and its frozen state.
Every function keeps to the items of the session's account (db.account_of)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.planner import ItemView, newness, newness_in
from skysync.domain.reconcile import ItemFacts as ReconcileFacts
from skysync.store.db import account_of
from skysync.store.models import Item
from skysync.store.slices import in_slices


def view(item: Item | sa.Row[Any] | None, sku: str) -> ItemView:
    """What the relay decides from: ``item`` is the ORM row or a Core row of the table."""
    if item is None:
        return ItemView(sku=sku)
    unknown = set(item.attempt or {})  # sent, answer never recorded: SkyHub may hold either
    return ItemView(
        sku=item.sku,
        in_skyhub=item.in_skyhub,
        parent_sku=item.parent_sku,
        acknowledged={k: v for k, v in (item.acknowledged or {}).items() if k not in unknown},
        frozen=item.frozen,
        frozen_since=item.frozen_since,
        unfrozen=item.unfrozen_at is not None and not item.frozen,
        last_applied={k: int(v) for k, v in (item.last_applied or {}).items()},
        applied_epochs={k: int(v) for k, v in (item.applied_epochs or {}).items()},
    )


def _apply_newer(
    applied: dict[str, Any],
    applied_epochs: dict[str, Any],
    sources: Mapping[str, int],
    epochs: Mapping[int, int],
) -> bool:
    """Note, per field, the row of ``sources`` as applied where it is newer (planner.newness)
    than the row applied so far; True if any was."""
    changed = False
    for name, source in sources.items():
        before = applied.get(name)
        if before is None or newness_in(epochs, source) > newness(
            int(applied_epochs.get(name, 0)), int(before)
        ):
            applied[name] = source
            applied_epochs[name] = epochs.get(source, 0)
            changed = True
    return changed


# The relay's hot path (one read, one attempt record and one acknowledgement per request)
# writes with Core statements on the table, built once: the ORM's unit of work took more Python
# time than PostgreSQL took to run them. Every other writer uses the ORM (get_or_create); a Core
# write expires the ORM's copy of the row, so the two never disagree within a transaction.
_ITEM = cast(sa.Table, Item.__table__)  # a mapped class's table, typed FromClause
_THIS = sa.and_(_ITEM.c.account == sa.bindparam("b_account"), _ITEM.c.sku == sa.bindparam("b_sku"))
_SELECT = sa.select(_ITEM).where(_THIS)
_SELECT_FOR_UPDATE = _SELECT.with_for_update()
_UPDATE = sa.update(_ITEM).where(_THIS)
_INSERT = sa.insert(_ITEM)
LOCKED = "skysync_locked_items"  # Session.info: {sku: row or None} locked by this transaction


def _key(session: Session, sku: str) -> dict[str, str]:
    """The bound parameters of :data:`_THIS`: ``sku`` of the session's account."""
    return {"b_account": account_of(session), "b_sku": sku}


def lock(session: Session, sku: str) -> sa.Row[Any] | None:
    """``sku``'s row, locked until the transaction ends (PostgreSQL; SQLite's transactions
    hold the write lock from BEGIN): what is decided from it stays true until the transaction
    commits. The next :func:`begin_attempt` or :func:`record_ack` on it in the same transaction
    starts from this row without reading it again."""
    locked: dict[str, sa.Row[Any] | None] = session.info.setdefault(LOCKED, {})
    if sku not in locked:
        pg = session.get_bind().dialect.name == "postgresql"
        query = _SELECT_FOR_UPDATE if pg else _SELECT
        locked[sku] = session.execute(query, _key(session, sku)).first()
    return locked[sku]


def _write(session: Session, sku: str, row: sa.Row[Any] | None, values: dict[str, Any]) -> None:
    """Update ``sku``'s locked ``row`` with ``values``, or insert it with them when missing."""
    if row is None:
        defaults = {
            "acknowledged": {},
            "last_applied": {},
            "applied_epochs": {},
            "attempt": {},
            "in_skyhub": False,
        }
        session.execute(_INSERT, {**defaults, **values, "account": account_of(session), "sku": sku})
    else:
        session.execute(_UPDATE, {**values, **_key(session, sku)})
    # still locked, but the row changed: the next reader reads it again, ORM or not
    _unlock_cache(session, sku)
    cached = session.identity_map.get(session.identity_key(Item, (account_of(session), sku)))
    if cached is not None:
        session.expire(cached)


def _unlock_cache(session: Session, sku: str) -> None:
    """The ORM is about to change ``sku``'s row: a row :func:`lock` kept is no longer current."""
    session.info.get(LOCKED, {}).pop(sku, None)


def _orm_get(session: Session, sku: str) -> Item | None:
    _unlock_cache(session, sku)
    return session.get(Item, (account_of(session), sku))


def read(session: Session, sku: str) -> ItemView:
    """What skysync knows of ``sku``, read without a lock (an operator's or the order pull's
    look; the relay's own reads lock: :func:`lock`)."""
    return view(_orm_get(session, sku), sku)


def get_or_create(session: Session, sku: str, *, for_update: bool = False) -> Item:
    """``sku``'s row (locked with ``for_update``), created when missing. A new row is not flushed
    here: it goes with the transaction's other writes (a query in between flushes it first)."""
    _unlock_cache(session, sku)
    account = account_of(session)
    query = sa.select(Item).where(Item.account == account, Item.sku == sku)
    if for_update and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    item = session.scalars(query).first()
    if item is None:
        item = Item(
            account=account,
            sku=sku,
            acknowledged={},
            last_applied={},
            applied_epochs={},
            attempt={},
            in_skyhub=False,
            linked=False,
            frozen=False,
        )
        session.add(item)
    return item


def family_links(session: Session, skus: Iterable[str]) -> tuple[dict[str, str | None], set[str]]:
    """Of the SKUs skysync knows among ``skus``: the parent of each (None for a product), and
    those SkyHub has (``in_skyhub``, as it acknowledged them)."""
    skus = list(skus)
    parents: dict[str, str | None] = {}
    in_skyhub: set[str] = set()
    query = sa.select(Item.sku, Item.parent_sku, Item.in_skyhub).where(
        Item.account == account_of(session)
    )
    for part in in_slices(skus):
        for sku, parent, present in session.execute(query.where(Item.sku.in_(part))):
            parents[sku] = parent
            if present:
                in_skyhub.add(sku)
    return parents, in_skyhub


def learn_listed(
    session: Session,
    listed: Mapping[str, str | None],
    absent: Iterable[str],
    now: datetime,
) -> None:
    """What SkyHub's listing showed (relay/catalogue.py): each SKU of ``listed`` exists there,
    a variation of its parent (None: a product); ``absent``: SKUs the whole listing did not
    show. SKUs skysync already knows keep what it knows, except that a variation it took for
    a product learns its parent."""
    absent = [sku for sku in absent if sku not in listed]
    skus = [*listed, *absent]
    known, _ = family_links(session, skus)
    new_rows = [
        {"sku": sku, "parent_sku": listed[sku], "in_skyhub": True, "checked_at": now}
        for sku in listed
        if sku not in known
    ]
    new_rows += [
        {"sku": sku, "parent_sku": None, "in_skyhub": False, "checked_at": now}
        for sku in absent
        if sku not in known
    ]
    defaults: dict[str, Any] = {
        "account": account_of(session),
        "acknowledged": {},
        "last_applied": {},
        "applied_epochs": {},
        "attempt": {},
    }
    for start in range(0, len(new_rows), 500):
        session.execute(
            _INSERT, [{**defaults, **r, "updated_at": now} for r in new_rows[start : start + 500]]
        )
    for sku, parent in listed.items():
        if parent is not None and sku in known and known[sku] is None:
            session.execute(
                _UPDATE, {**_key(session, sku), "parent_sku": parent, "updated_at": now}
            )
            _unlock_cache(session, sku)


def register_variations(
    session: Session, parent_sku: str, variation_skus: Iterable[str], now: datetime
) -> None:
    """Remember that these SKUs are variations of ``parent_sku`` (learned from a product row),
    so their price and stock go to /variations and wait for the parent."""
    for sku in variation_skus:
        item = get_or_create(session, sku)
        if item.parent_sku != parent_sku:
            item.parent_sku = parent_sku
            item.updated_at = now


def begin_attempt(session: Session, sku: str, fields: Mapping[str, Any], now: datetime) -> None:
    """A write of ``fields`` is about to leave: until its answer is recorded (record_ack), what
    SkyHub holds for them is unknown. The caller commits this before sending."""
    row = lock(session, sku)
    attempt = dict(row.attempt or {}) if row is not None else {}
    attempt.update({k: v for k, v in fields.items() if k != "variations"})
    _write(session, sku, row, {"attempt": attempt, "updated_at": now})


def record_ack(
    session: Session,
    sku: str,
    sent: Mapping[str, Any],
    sources: Mapping[str, int],
    now: datetime,
    *,
    epochs: Mapping[int, int] | None = None,
    parent_sku: str | None = None,
) -> None:
    """SkyHub accepted ``sent`` for ``sku``: remember the values and the row each came from
    (``epochs``: the claim epoch of each of those rows, 0 when not given)."""
    row = lock(session, sku)
    acknowledged = dict(row.acknowledged or {}) if row is not None else {}
    applied = dict(row.last_applied or {}) if row is not None else {}
    applied_epochs = dict(row.applied_epochs or {}) if row is not None else {}
    attempt = dict(row.attempt or {}) if row is not None else {}
    named: dict[str, int] = {}
    for name, value in sent.items():
        if name == "variations":
            continue
        acknowledged[name] = value
        source = sources.get(name)
        if source is not None:
            named[name] = source
    _apply_newer(applied, applied_epochs, named, epochs or {})
    values: dict[str, Any] = {
        "acknowledged": acknowledged,
        "last_applied": applied,
        "applied_epochs": applied_epochs,
        "attempt": {k: v for k, v in attempt.items() if k not in sent},
        "in_skyhub": True,
        "updated_at": now,
    }
    if parent_sku is not None:
        values["parent_sku"] = parent_sku
    _write(session, sku, row, values)


def mark_exists(session: Session, sku: str, exists: bool, now: datetime) -> None:
    item = get_or_create(session, sku)
    item.in_skyhub = exists
    item.checked_at = now
    item.updated_at = now


def mark_linked(session: Session, sku: str, now: datetime) -> Item:
    """SkyHub shows the product linked: freeze its attributes (unless an operator unfroze it
    after it was linked)."""
    item = get_or_create(session, sku)
    if not item.linked:
        item.linked = True
        item.linked_since = now
    if not item.frozen and item.unfrozen_at is None:
        item.frozen = True
        item.frozen_since = item.linked_since or now
    item.in_skyhub = True
    item.checked_at = now
    item.updated_at = now
    return item


def unfreeze(session: Session, sku: str, now: datetime) -> bool:
    """An operator lets attribute changes through again. Returns False for an unknown SKU."""
    item = _orm_get(session, sku)
    if item is None:
        return False
    item.frozen = False
    item.unfrozen_at = now
    item.updated_at = now
    return True


def forget(session: Session, sku: str, names: Iterable[str], now: datetime) -> None:
    """Drop the acknowledged values of ``names``: SkyHub may hold something else now."""
    item = _orm_get(session, sku)
    if item is None:
        return
    acknowledged = {k: v for k, v in (item.acknowledged or {}).items() if k not in set(names)}
    if acknowledged != item.acknowledged:
        item.acknowledged = acknowledged
        item.updated_at = now


def mark_applied(
    session: Session,
    sku: str,
    sources: Mapping[str, int],
    now: datetime,
    *,
    epochs: Mapping[int, int] | None = None,
) -> None:
    """These fields were asked for by these rows and SkyHub already had the values: count the
    rows as applied, so an older row still waiting cannot overwrite them later."""
    item = _orm_get(session, sku)
    if item is None:
        return
    applied = dict(item.last_applied or {})
    applied_epochs = dict(item.applied_epochs or {})
    if _apply_newer(applied, applied_epochs, sources, epochs or {}):
        item.last_applied = applied
        item.applied_epochs = applied_epochs
        item.updated_at = now


# -- reconciliation ---------------------------------------------------------------------------
def reconcile_facts(session: Session, skus: Iterable[str]) -> dict[str, ReconcileFacts]:
    """What the item table says of these SKUs for a reconciliation, a variation with its
    parent's freeze (the marketplace freezes a product with its variations)."""
    items: dict[str, Item] = {}
    wanted = list(dict.fromkeys(skus))
    mine = sa.select(Item).where(Item.account == account_of(session))
    for part in in_slices(wanted):
        items.update({i.sku: i for i in session.scalars(mine.where(Item.sku.in_(part)))})
    parents = sorted({i.parent_sku for i in items.values() if i.parent_sku} - set(items))
    for part in in_slices(parents):
        items.update({i.sku: i for i in session.scalars(mine.where(Item.sku.in_(part)))})
    facts = {}
    for sku in wanted:
        item = items.get(sku)
        if item is None:
            continue
        parent = items.get(item.parent_sku) if item.parent_sku else None
        owner = parent if parent is not None else item  # a product freezes with its variations
        frozen_by = owner if owner.frozen else item
        facts[sku] = ReconcileFacts(
            sku=sku,
            parent_sku=item.parent_sku,
            acknowledged=dict(item.acknowledged or {}),
            last_applied={k: int(v) for k, v in (item.last_applied or {}).items()},
            attempt=dict(item.attempt or {}),
            frozen=frozen_by.frozen,
            frozen_since=frozen_by.frozen_since,
            unfrozen=owner.unfrozen_at is not None and not frozen_by.frozen,
        )
    return facts


def believed_in_skyhub(session: Session) -> Iterator[tuple[str, str | None]]:
    """(sku, parent_sku) of every SKU skysync believes SkyHub holds, streamed."""
    query = sa.select(Item.sku, Item.parent_sku).where(
        Item.account == account_of(session), Item.in_skyhub.is_(True)
    )
    rows = session.execute(query.order_by(Item.sku).execution_options(yield_per=2000))
    yield from ((sku, parent) for sku, parent in rows)


def mark_gone(session: Session, skus: Iterable[str], now: datetime) -> None:
    """SkyHub does not hold these SKUs (a reconciliation found them missing): forget what it
    acknowledged, so the relay creates them again instead of diffing against a ghost."""
    for sku in skus:
        item = _orm_get(session, sku)
        if item is not None:
            item.in_skyhub = False
            item.acknowledged = {}
            item.updated_at = now
