"""The catalogue: products, their variations, linking to the marketplace, and listing pages.

What SkyHub accepts in a product or variation (:func:`validate_item_fields`), which writes it
refuses (a refused category, deleting a linked item) and which it accepts but the marketplace
ignores (``frozen_writes``: an attribute other than price, promotional price or stock of a
linked product or of its variations).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from skysync.emulator.config import is_number
from skysync.emulator.paging import check_depth, decode_cursor, encode_cursor, first, page_window
from skysync.emulator.replies import ApiError
from skysync.emulator.routes import Request
from skysync.emulator.state import EmulatorState

#: SkyHub's answer to deleting an associated item (skyhub-api.md section 6), word for word.
LINKED_DELETE_ERROR = "Variação possui alguma associação. Remova as associações e tente novamente."

#: Fields SkyHub takes as integers (a whole-number float such as 7.0 is one).
INTEGER_FIELDS = ("qty",)

#: Fields a linked item may still change; a write to any other is a frozen write.
FLOWING = frozenset({"sku", "qty", "price", "promotional_price"})

_NAMES = {"product": "Produto", "variation": "Variação"}
_SKU_IS_FIXED = {
    "product": "O SKU de um produto não pode ser alterado",
    "variation": "O SKU de uma variação não pode ser alterado",
}

Answer = tuple[int, Any]


def validate_item_fields(item: MutableMapping[str, Any], what: str) -> None:
    """Business checks SkyHub applies to product and variation fields that are present.

    Since March 2025 SkyHub refuses a zero or null price; stock must be a whole number. A
    whole number written as a float (``7.0``) is one: published SkyHub clients send every
    quantity so, and SkyHub takes them; it is stored as the integer (7), as SkyHub shows it.
    """
    for key in ("price", "promotional_price"):
        if key in item:
            value = item[key]
            if not is_number(value) or value <= 0:
                raise ApiError(
                    422,
                    f"{what}.{key} inválido: deve ser um número maior que zero "
                    "(preço zero ou nulo não é aceito)",
                )
    for key in INTEGER_FIELDS:
        if key in item:
            value = whole_number(item[key])
            if value is None or value < 0:
                raise ApiError(
                    422, f"{what}.{key} inválido: deve ser um inteiro maior ou igual a zero"
                )
            item[key] = value
    if "status" in item and item["status"] not in ("enabled", "disabled"):
        raise ApiError(422, f"{what}.status inválido: use 'enabled' ou 'disabled'")


def whole_number(value: Any) -> int | None:
    """``value`` as the integer it is (7, or 7.0 as published clients write it); None when it
    is not a whole number (7.5, a string, a bool, infinity)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def require_sku(item: Mapping[str, Any], what: str) -> str:
    """The item's SKU; 422 when it is missing or blank."""
    sku = item.get("sku")
    if not isinstance(sku, str) or not sku.strip():
        raise ApiError(422, f"{what}.sku é obrigatório")
    return sku


def product_matches(product: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    """Whether a product passes ``filters[status|name|qty_from|qty_to]``; 400 for a bad bound."""
    if "status" in filters and product.get("status") != filters["status"]:
        return False
    name_filter = filters.get("name", "").lower()
    if name_filter and name_filter not in str(product.get("name", "")).lower():
        return False
    qty = product.get("qty")
    bounds: tuple[tuple[str, Callable[[Any, int], bool]], ...] = (
        ("qty_from", lambda q, b: q >= b),
        ("qty_to", lambda q, b: q <= b),
    )
    for name, keep in bounds:
        if name in filters:
            try:
                bound = int(filters[name])
            except ValueError:
                raise ApiError(400, f"Filtro '{name}' inválido") from None
            if not is_number(qty) or not keep(qty, bound):
                return False
    return True


def is_linked_locked(state: EmulatorState, sku: str, now: float) -> bool:
    """Whether the product is linked to the marketplace at `now`."""
    linked_at = state.linked_at.get(sku)
    return linked_at is not None and now >= linked_at


def check_write_locked(
    state: EmulatorState, sku: str, changes: Mapping[str, Any], now: float
) -> None:
    """422 for a refused category; remember attribute writes to a linked product."""
    refused = set(state.config.refused_categories)
    for category in changes.get("categories") or []:
        if isinstance(category, dict):
            names = {category.get("code"), category.get("name")}
        else:
            names = {category}
        for name in sorted(n for n in names & refused if isinstance(n, str)):
            raise ApiError(422, f"Categoria não encontrada: {name}")
    parent = state.variation_parent.get(sku, sku)
    attributes = sorted(set(changes) - FLOWING)
    if attributes and is_linked_locked(state, parent, now):
        state.frozen_writes.append({"sku": sku, "fields": attributes})


def check_update_locked(
    state: EmulatorState, sku: str, changes: MutableMapping[str, Any], what: str, now: float
) -> None:
    """Checks on a partial update (`what` is "product" or "variation"): the SKU stays,
    the fields are valid, then the write checks."""
    if "sku" in changes and changes["sku"] != sku:
        raise ApiError(422, _SKU_IS_FIXED[what])
    validate_item_fields(changes, what)
    check_write_locked(state, sku, changes, now)


def check_new_item_locked(
    state: EmulatorState, item: MutableMapping[str, Any], what: str, parent: str | None, now: float
) -> str:
    """The SKU of a new product or variation (`what`) once it is free, its fields are valid
    and the write checks pass (on the `parent` product for a variation)."""
    sku = require_sku(item, what)
    if sku_taken_locked(state, sku):
        raise ApiError(422, f"{_NAMES[what]} com SKU '{sku}' já existe")
    validate_item_fields(item, what)
    check_write_locked(state, sku if parent is None else parent, item, now)
    return sku


def sku_taken_locked(state: EmulatorState, sku: str) -> bool:
    """Whether a product or a variation already uses `sku`."""
    return sku in state.products or sku in state.variations


def check_new_variations_locked(
    state: EmulatorState, parent: str, variations: Any
) -> list[dict[str, Any]]:
    """Validate variations sent inside a product before anything is stored (all or none)."""
    if variations is None:
        return []
    if not isinstance(variations, list):
        raise ApiError(422, "product.variations deve ser uma lista")
    result = []
    seen: set[str] = set()
    for variation in variations:
        if not isinstance(variation, dict):
            raise ApiError(422, "Cada variação deve ser um objeto JSON")
        vsku = require_sku(variation, "variation")
        if vsku == parent or vsku in seen or sku_taken_locked(state, vsku):
            raise ApiError(422, f"Variação com SKU '{vsku}' já existe")
        validate_item_fields(variation, "variation")
        seen.add(vsku)
        result.append(copy.deepcopy(variation))
    return result


class CatalogState:
    """Products and variations on the shared state: storing, viewing, and the changes made
    without a request (seeding, linking, changes behind skysync's back)."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # ----------------------------------------------------------------- direct helpers

    def store_product_locked(self, sku: str, product: dict[str, Any]) -> None:
        """Keep a new product, last in the listing order."""
        st = self.state
        st.products[sku] = product
        st.next_serial += 1
        st.product_serial[sku] = st.next_serial

    def _serial_locked(self, sku: str) -> int:
        """The product's listing serial (one is given to a product stored without one)."""
        st = self.state
        serial = st.product_serial.get(sku)
        if serial is None:
            st.next_serial += 1
            serial = st.product_serial[sku] = st.next_serial
        return serial

    def seed_product(self, product: Mapping[str, Any], linked: bool = False) -> None:
        """Store a product (and the variations it lists) as if SkyHub had it all along: no
        request, no rate limit, no frozen-write check. An existing SKU is replaced.
        ValueError when the product or a variation has no SKU or uses one of another product."""
        st = self.state
        with st.lock:
            sku = product.get("sku")
            if not isinstance(sku, str) or not sku:
                raise ValueError("a product needs a non-empty sku")
            variations = product.get("variations") or []
            for variation in variations:
                vsku = variation.get("sku") if isinstance(variation, dict) else None
                if not isinstance(vsku, str) or not vsku:
                    raise ValueError(f"every variation of {sku!r} needs a non-empty sku")
                if vsku in st.products or st.variation_parent.get(vsku, sku) != sku:
                    raise ValueError(f"variation SKU {vsku!r} belongs to another product")
            if sku in st.variations:
                raise ValueError(f"{sku!r} is a variation SKU")
            self._remove_locked(sku)
            stored = {k: copy.deepcopy(v) for k, v in product.items() if k != "variations"}
            self.store_product_locked(sku, stored)
            st.linked_at[sku] = time.monotonic() if linked else None
            for variation in variations:
                st.variations[variation["sku"]] = copy.deepcopy(variation)
                st.variation_parent[variation["sku"]] = sku

    def change_behind(self, sku: str, fields: Mapping[str, Any]) -> None:
        """Change a product or variation as SkyHub's panel or another integration would, behind
        skysync's back (any field, linked or not; never a frozen write). ``None`` removes a
        field. KeyError for an unknown SKU."""
        st = self.state
        with st.lock:
            target = st.products.get(sku)
            if target is None:
                target = st.variations.get(sku)
            if target is None:
                raise KeyError(sku)
            for name, value in fields.items():
                if name in ("sku", "variations", "associations"):
                    continue
                if value is None:
                    target.pop(name, None)
                else:
                    target[name] = copy.deepcopy(value)

    def remove(self, sku: str) -> None:
        """Delete a product (with its variations) or a variation, linked or not, as someone
        working in SkyHub's panel could. KeyError for an unknown SKU."""
        st = self.state
        with st.lock:
            if sku in st.variations:
                del st.variations[sku]
                del st.variation_parent[sku]
            elif sku in st.products:
                self._remove_locked(sku)
            else:
                raise KeyError(sku)

    def _remove_locked(self, sku: str) -> None:
        st = self.state
        if sku not in st.products:
            return
        del st.products[sku]
        st.product_serial.pop(sku, None)
        st.linked_at.pop(sku, None)
        for vsku in [v for v, parent in st.variation_parent.items() if parent == sku]:
            del st.variations[vsku]
            del st.variation_parent[vsku]

    def link(self, sku: str) -> None:
        """Make a product (or a variation's parent) linked now; KeyError when unknown."""
        st = self.state
        with st.lock:
            parent = st.variation_parent.get(sku, sku)
            if parent not in st.products:
                raise KeyError(sku)
            st.linked_at[parent] = time.monotonic()

    def snapshot_locked(self, now: float) -> dict[str, Any]:
        """Products (as GET shows them), variations with their parent, and frozen writes."""
        st = self.state
        variations = {}
        for sku, variation in st.variations.items():
            view = copy.deepcopy(variation)
            view["parent_sku"] = st.variation_parent[sku]
            variations[sku] = view
        return {
            "products": {sku: self.product_view_locked(sku, now) for sku in st.products},
            "variations": variations,
            "frozen_writes": copy.deepcopy(st.frozen_writes),
        }

    def product_view_locked(self, sku: str, now: float) -> dict[str, Any]:
        """A product as SkyHub shows it: defaults, ``associations`` and ``variations``."""
        st = self.state
        view = copy.deepcopy(st.products[sku])
        view.setdefault("removed", False)
        view.setdefault("condition_type", "new")
        status = "linked" if is_linked_locked(self.state, sku, now) else "pending"
        view["associations"] = [{"platform": "B2W", "status": status}]
        view["variations"] = [
            copy.deepcopy(variation)
            for vsku, variation in st.variations.items()
            if st.variation_parent[vsku] == sku
        ]
        return view

    def _get_product_locked(self, sku: str) -> dict[str, Any]:
        """The stored product; 404 when unknown."""
        product = self.state.products.get(sku)
        if product is None:
            raise ApiError(404, f"Produto com SKU '{sku}' não encontrado")
        return product

    def _get_variation_locked(self, sku: str) -> dict[str, Any]:
        """The stored variation; 404 when unknown."""
        variation = self.state.variations.get(sku)
        if variation is None:
            raise ApiError(404, f"Variação com SKU '{sku}' não encontrada")
        return variation

    def seed(self, products: list[Any]) -> int:
        """Store products (with their variations) as if each had been created through the API
        (the same checks; link delay applies), without a request: set-up for tests and
        benchmarks with large catalogues. All or nothing: ApiError names the first bad one."""
        st = self.state
        with st.lock:
            now = time.monotonic()
            saved = (dict(st.products), dict(st.linked_at), dict(st.variations))
            saved_parents, saved_serials = dict(st.variation_parent), dict(st.product_serial)
            saved_next = st.next_serial
            for index, product in enumerate(products):
                try:
                    if not isinstance(product, dict):
                        raise ApiError(422, "deve ser um objeto")
                    self._store_new_product_locked(product, now)
                except ApiError as exc:
                    st.products, st.linked_at, st.variations = saved
                    st.variation_parent, st.product_serial = saved_parents, saved_serials
                    st.next_serial = saved_next
                    raise ApiError(exc.status, f"products[{index}]: {exc.message}") from None
        return len(products)

    def _store_new_product_locked(self, product: dict[str, Any], now: float) -> None:
        st = self.state
        sku = check_new_item_locked(st, product, "product", None, now)
        new_variations = check_new_variations_locked(st, sku, product.get("variations", []))
        stored = {
            k: copy.deepcopy(v)
            for k, v in product.items()
            if k not in ("variations", "associations")
        }
        self.store_product_locked(sku, stored)
        delay = st.config.link_delay
        st.linked_at[sku] = None if delay is None else now + delay
        for variation in new_variations:
            st.variations[variation["sku"]] = variation
            st.variation_parent[variation["sku"]] = sku


class Catalog(CatalogState):
    """The product and variation endpoints, on the shared state; handlers run with the state's
    lock held."""

    # ----------------------------------------------------------------- products

    def list_products(self, req: Request) -> Answer:
        """GET /products: a page by ``page``/``per_page`` (at most 10,000 entries deep) or by
        ``cursor`` (any depth: the cursor is how SkyHub pages past 10,000), filters kept.

        A cursor says "after product serial N", so products created or deleted while a client
        pages never make it skip or repeat one; ``next`` is given while more products match."""
        cursor = first(req.query, "cursor")
        products = self.state.products
        serial = {sku: self._serial_locked(sku) for sku in products}
        if cursor:
            state = decode_cursor(cursor)
            after, per_page, filters = state["a"], state["n"], state["f"]
            matching = sorted(
                (
                    sku
                    for sku in products
                    if serial[sku] > after and product_matches(products[sku], filters)
                ),
                key=serial.__getitem__,
            )
            total = sum(1 for sku in products if product_matches(products[sku], filters))
            page_skus = matching[:per_page]
            more = len(matching) > per_page
        else:
            offset, per_page = page_window(req.query, 25)
            filters = {}
            for name in ("status", "name", "qty_from", "qty_to"):
                value = first(req.query, f"filters[{name}]")
                if value:
                    filters[name] = value
            check_depth(offset)
            matching = sorted(
                (sku for sku in products if product_matches(products[sku], filters)),
                key=serial.__getitem__,
            )
            total = len(matching)
            page_skus = matching[offset : offset + per_page]
            more = offset + per_page < len(matching)
        next_url = None
        if more and page_skus:
            next_url = "/products?cursor=" + encode_cursor(
                {"a": serial[page_skus[-1]], "n": per_page, "f": filters}
            )
        return 200, {
            "products": [self.product_view_locked(sku, req.now) for sku in page_skus],
            "total": total,
            "next": next_url,
        }

    def create_product(self, req: Request) -> Answer:
        """POST /products: the product and any variations it carries, all or nothing."""
        self._store_new_product_locked(req.data, req.now)
        return 201, None

    def get_product(self, req: Request) -> Answer:
        """GET /products/{sku}."""
        self._get_product_locked(req.params["sku"])
        return 200, self.product_view_locked(req.params["sku"], req.now)

    def update_product(self, req: Request) -> Answer:
        """PUT /products/{sku}: partial update; listed variations are updated or created."""
        st = self.state
        sku = req.params["sku"]
        product = self._get_product_locked(sku)
        changes: dict[str, Any] = req.data
        check_update_locked(self.state, sku, changes, "product", req.now)
        creates: list[dict[str, Any]] = []
        updates: list[tuple[str, dict[str, Any]]] = []
        if "variations" in changes:
            variations = changes["variations"]
            if not isinstance(variations, list):
                raise ApiError(422, "product.variations deve ser uma lista")
            for variation in variations:
                if not isinstance(variation, dict):
                    raise ApiError(422, "Cada variação deve ser um objeto JSON")
                vsku = require_sku(variation, "variation")
                validate_item_fields(variation, "variation")
                check_write_locked(self.state, sku, variation, req.now)
                if st.variation_parent.get(vsku) == sku:
                    updates.append((vsku, variation))
                elif sku_taken_locked(self.state, vsku):
                    raise ApiError(422, f"Variação com SKU '{vsku}' pertence a outro produto")
                else:
                    creates.append(copy.deepcopy(variation))
        for key, value in changes.items():
            if key not in ("sku", "variations", "associations"):
                product[key] = copy.deepcopy(value)
        for vsku, variation in updates:
            st.variations[vsku].update(copy.deepcopy(variation))
        for variation in creates:
            st.variations[variation["sku"]] = variation
            st.variation_parent[variation["sku"]] = sku
        return 204, None

    def delete_product(self, req: Request) -> Answer:
        """DELETE /products/{sku}: with its variations; 422 when linked."""
        sku = req.params["sku"]
        self._get_product_locked(sku)
        if is_linked_locked(self.state, sku, req.now):
            raise ApiError(422, LINKED_DELETE_ERROR)
        self._remove_locked(sku)
        return 204, None

    # ----------------------------------------------------------------- variations

    def create_variation(self, req: Request) -> Answer:
        """POST /products/{sku}/variations."""
        st = self.state
        parent = req.params["sku"]
        self._get_product_locked(parent)
        variation: dict[str, Any] = req.data
        vsku = check_new_item_locked(st, variation, "variation", parent, req.now)
        st.variations[vsku] = copy.deepcopy(variation)
        st.variation_parent[vsku] = parent
        return 201, None

    def get_variation(self, req: Request) -> Answer:
        """GET /variations/{sku}."""
        return 200, copy.deepcopy(self._get_variation_locked(req.params["sku"]))

    def update_variation(self, req: Request) -> Answer:
        """PUT /variations/{sku}: partial update; the SKU cannot change."""
        sku = req.params["sku"]
        variation = self._get_variation_locked(sku)
        changes: dict[str, Any] = req.data
        check_update_locked(self.state, sku, changes, "variation", req.now)
        for key, value in changes.items():
            if key != "sku":
                variation[key] = copy.deepcopy(value)
        return 204, None

    def delete_variation(self, req: Request) -> Answer:
        """DELETE /variations/{sku}: 422 when the parent is linked."""
        st = self.state
        sku = req.params["sku"]
        self._get_variation_locked(sku)
        if is_linked_locked(self.state, st.variation_parent[sku], req.now):
            raise ApiError(422, LINKED_DELETE_ERROR)
        del st.variations[sku]
        del st.variation_parent[sku]
        return 204, None
