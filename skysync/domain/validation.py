"""Validation of outbox rows: pure functions, no I/O.

The same functions judge a row given to ``skysync enqueue`` and a row the ERP inserted with
plain SQL, so a payload that the CLI refuses is exactly one that the relay would reject. Every
problem names its field (``payload.price``) and says what is wrong, and every problem of a row is
reported at once so the ERP team can fix a row in one go.

Rules (docs/erp-contract.md, and the seed article):

* an absent key means "no change"; ``null`` or ``""`` mean "no value" and are not sent;
  ``0`` is a value (stock 0 is a normal out-of-stock);
* a price must be a JSON number > 0 (SkyHub refuses 0 since 2025), finite, never a string;
* ``promotional_price`` may not exceed ``price``;
* ``qty`` is an absolute integer >= 0, never a delta.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from skysync.domain.kinds import Kind, UnreadableJSON

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_REF_LENGTH = 255
MAX_DEPTH = 32  # a product payload is 4 levels deep; anything far deeper is an accident
MAX_QTY = 2_147_483_647  # SkyHub stores quantities as 32-bit integers

PRODUCT_FIELDS = frozenset(
    {
        "name", "description", "status", "qty", "price", "promotional_price", "cost",
        "weight", "height", "width", "length", "brand", "ean", "nbm", "categories",
        "images", "specifications", "variations", "variation_attributes", "crossdocking",
        "sku",
    }
)  # fmt: skip
PRODUCT_TEXT_FIELDS = ("name", "description", "brand", "ean", "nbm")
PRODUCT_MEASURES = ("cost", "weight", "height", "width", "length")
VARIATION_FIELDS = frozenset(
    {
        "sku", "qty", "ean", "images", "specifications", "price", "promotional_price",
        "weight", "height", "width", "length", "crossdocking",
    }
)  # fmt: skip
INVOICE_KEY = re.compile(r"[0-9]{44}")  # ASCII digits only: \d would admit other scripts


class ValidationFailed(ValueError):
    """A row cannot be sent. ``problems`` holds one "field: what is wrong" line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class _Check:
    """Collects problems while a payload is walked, so all of them are reported together."""

    problems: list[str] = field(default_factory=list)

    def fail(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")


class WrittenInt(int):
    """An integer read from JSON text that remembers how the text wrote it (``written``)."""

    written: str


class WrittenFloat(float):
    """A JSON number with a fraction or an exponent that remembers how the text wrote it."""

    written: str


def _written_int(text: str) -> WrittenInt:
    number = WrittenInt(text)
    number.written = text
    return number


def _written_float(text: str) -> WrittenFloat:
    number = WrittenFloat(text)
    number.written = text
    return number


def parse_written(text: str) -> Any:
    """JSON ``text`` read with every number remembering its literal, so that a problem quotes
    the number as the ERP wrote it (``1e20``, never ``1e+20`` or a digit string cut short).
    Equal to ``json.loads`` otherwise; raises as it does."""
    return json.loads(text, parse_int=_written_int, parse_float=_written_float)


def number_text(value: object) -> str:
    """A number for a message: as written (:func:`parse_written`) when known, else its repr;
    a long one shortened with its length said, never cut into a different number."""
    text = getattr(value, "written", None) or repr(value)
    if len(text) <= 40:
        return text
    return f"{text[:20]}...({len(text)} characters)"


def describe(value: Any) -> str:
    """A short description of a bad value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, int | float):
        return number_text(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def is_number(value: Any) -> bool:
    """A JSON number: an int or a float, never a boolean (Python's True is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_blank(value: Any) -> bool:
    """``null`` and ``""`` mean "no value": such a field is not sent (design rule 3)."""
    return value is None or (isinstance(value, str) and value.strip() == "")


def _number(check: _Check, where: str, value: Any) -> float | None:
    if not is_number(value):
        hint = " (use a JSON number with a dot, e.g. 12.5)" if isinstance(value, str) else ""
        check.fail(where, f"must be a JSON number, got {describe(value)}{hint}")
        return None
    try:
        number = float(value)
    except OverflowError:
        check.fail(where, f"is too large, got {number_text(value)}")
        return None
    if not math.isfinite(number):
        check.fail(where, f"must be a finite number, got {number_text(value)}")
        return None
    return number


def _price(check: _Check, where: str, value: Any) -> float | None:
    number = _number(check, where, value)
    if number is not None and number <= 0:
        shown = number_text(value)
        check.fail(where, f"must be greater than 0 (SkyHub refuses a zero price), got {shown}")
        return None
    return number


def _qty(check: _Check, where: str, value: Any, *, minimum: int = 0) -> None:
    if not is_number(value):
        check.fail(where, f"must be a whole number, got {describe(value)}")
    elif isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        check.fail(where, f"must be a whole number, got {number_text(value)}")
    elif value < minimum:
        shown = number_text(value)
        check.fail(where, f"must be >= {minimum} (an absolute quantity, not a delta), got {shown}")
    elif value > MAX_QTY:
        check.fail(where, f"must be at most {MAX_QTY}, got {number_text(value)}")


def _text(check: _Check, where: str, value: Any, *, required: bool = False) -> None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            check.fail(where, "is required and may not be empty")
    elif not isinstance(value, str):
        check.fail(where, f"must be a string, got {describe(value)}")


def _date(check: _Check, where: str, value: Any, *, required: bool = False) -> None:
    if value is None or value == "":
        if required:
            check.fail(where, "is required (an ISO-8601 date, e.g. 2026-11-28T14:30:00-03:00)")
        return
    if not isinstance(value, str):
        check.fail(where, f"must be an ISO-8601 date string, got {describe(value)}")
        return
    try:
        datetime.fromisoformat(value)
    except ValueError:
        check.fail(
            where,
            f"must be an ISO-8601 date (e.g. 2026-11-28T14:30:00-03:00), got {describe(value)}",
        )


def _unknown_keys(check: _Check, where: str, obj: dict[str, Any], allowed: frozenset[str]) -> None:
    for key in sorted(set(obj) - allowed):
        check.fail(f"{where}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _list_of(check: _Check, where: str, value: Any, kind: type) -> list[Any] | None:
    if is_blank(value):
        return None
    if not isinstance(value, list):
        check.fail(where, f"must be a list, got {describe(value)}")
        return None
    for i, element in enumerate(value):
        if not isinstance(element, kind):
            expected = "string" if kind is str else "object"
            check.fail(f"{where}[{i}]", f"must be a {expected}, got {describe(element)}")
    return value


def _prices(check: _Check, where: str, payload: dict[str, Any], *, price_required: bool) -> None:
    price = payload.get("price")
    promo = payload.get("promotional_price")
    p = None
    if is_blank(price):
        if price_required:
            check.fail(f"{where}.price", "is required (a JSON number > 0)")
    else:
        p = _price(check, f"{where}.price", price)
    q = None if is_blank(promo) else _price(check, f"{where}.promotional_price", promo)
    if p is not None and q is not None and q > p:
        check.fail(
            f"{where}.promotional_price",
            f"must not exceed price ({number_text(promo)} > {number_text(price)})",
        )


def _product(check: _Check, payload: dict[str, Any]) -> None:
    w = "payload"
    _unknown_keys(check, w, payload, PRODUCT_FIELDS)
    for name in PRODUCT_TEXT_FIELDS:
        _text(check, f"{w}.{name}", payload.get(name))
    status = payload.get("status")
    if not is_blank(status) and status not in ("enabled", "disabled"):
        check.fail(f"{w}.status", f'must be "enabled" or "disabled", got {describe(status)}')
    if not is_blank(payload.get("qty")):
        _qty(check, f"{w}.qty", payload["qty"])
    _prices(check, w, payload, price_required=False)
    for name in PRODUCT_MEASURES:
        value = payload.get(name)
        if not is_blank(value):
            number = _number(check, f"{w}.{name}", value)
            if number is not None and number < 0:
                check.fail(f"{w}.{name}", f"must be >= 0, got {number_text(value)}")
    if not is_blank(payload.get("crossdocking")):
        _qty(check, f"{w}.crossdocking", payload["crossdocking"])
    for i, url in enumerate(_list_of(check, f"{w}.images", payload.get("images"), str) or []):
        if isinstance(url, str) and not url.startswith(("http://", "https://")):
            check.fail(f"{w}.images[{i}]", f"must be an http(s) URL, got {describe(url)}")
    categories = _list_of(check, f"{w}.categories", payload.get("categories"), dict) or []
    for i, category in enumerate(categories):
        if isinstance(category, dict):
            _text(check, f"{w}.categories[{i}].code", category.get("code"), required=True)
            _text(check, f"{w}.categories[{i}].name", category.get("name"), required=True)
    _specifications(check, f"{w}.specifications", payload.get("specifications"))
    _list_of(check, f"{w}.variation_attributes", payload.get("variation_attributes"), str)
    variations = _list_of(check, f"{w}.variations", payload.get("variations"), dict) or []
    seen: set[str] = set()
    for i, variation in enumerate(variations):
        if not isinstance(variation, dict):
            continue
        vw = f"{w}.variations[{i}]"
        _unknown_keys(check, vw, variation, VARIATION_FIELDS)
        _text(check, f"{vw}.sku", variation.get("sku"), required=True)
        sku = variation.get("sku")
        if isinstance(sku, str) and sku in seen:
            check.fail(f"{vw}.sku", f"duplicates another variation's SKU {sku!r}")
        if isinstance(sku, str):
            seen.add(sku)
        if not is_blank(variation.get("qty")):
            _qty(check, f"{vw}.qty", variation["qty"])
        _text(check, f"{vw}.ean", variation.get("ean"))
        _prices(check, vw, variation, price_required=False)
        _list_of(check, f"{vw}.images", variation.get("images"), str)
        _specifications(check, f"{vw}.specifications", variation.get("specifications"))


def _specifications(check: _Check, where: str, value: Any) -> None:
    for i, spec in enumerate(_list_of(check, where, value, dict) or []):
        if isinstance(spec, dict):
            _text(check, f"{where}[{i}].key", spec.get("key"), required=True)
            if is_blank(spec.get("value")):
                check.fail(f"{where}[{i}].value", "is required and may not be empty")


def _exact_keys(check: _Check, payload: dict[str, Any], allowed: set[str]) -> None:
    _unknown_keys(check, "payload", payload, frozenset(allowed))


def _price_row(check: _Check, payload: dict[str, Any]) -> None:
    _exact_keys(check, payload, {"price", "promotional_price"})
    _prices(check, "payload", payload, price_required=True)


def _stock_row(check: _Check, payload: dict[str, Any]) -> None:
    _exact_keys(check, payload, {"qty"})
    if "qty" not in payload or payload["qty"] is None:
        check.fail("payload.qty", "is required (a whole number >= 0)")
    else:
        _qty(check, "payload.qty", payload["qty"])


def _invoice(check: _Check, payload: dict[str, Any]) -> None:
    _exact_keys(check, payload, {"key", "issue_date"})
    key = payload.get("key")
    if is_blank(key):
        check.fail("payload.key", "is required (the 44-digit NF-e access key)")
    elif not isinstance(key, str):
        check.fail("payload.key", f"must be a string of 44 digits, got {describe(key)}")
    elif not INVOICE_KEY.fullmatch(key):
        check.fail("payload.key", f"must be exactly 44 digits, got {len(key)} characters")
    _date(check, "payload.issue_date", payload.get("issue_date"))


def _shipment(check: _Check, payload: dict[str, Any]) -> None:
    _exact_keys(check, payload, {"code", "items", "track", "delivered_carrier_date"})
    _text(check, "payload.code", payload.get("code"), required=True)
    items = payload.get("items")
    if not isinstance(items, list) or not items:
        check.fail(
            "payload.items", f"must be a non-empty list of {{sku, qty}}, got {describe(items)}"
        )
    else:
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                check.fail(f"payload.items[{i}]", f"must be an object, got {describe(item)}")
                continue
            _text(check, f"payload.items[{i}].sku", item.get("sku"), required=True)
            if item.get("qty") is None:
                check.fail(f"payload.items[{i}].qty", "is required (a whole number >= 1)")
            else:
                _qty(check, f"payload.items[{i}].qty", item["qty"], minimum=1)
    track = payload.get("track")
    if not isinstance(track, dict):
        check.fail(
            "payload.track", f"must be an object with the tracking code, got {describe(track)}"
        )
    else:
        _unknown_keys(
            check, "payload.track", track, frozenset({"code", "carrier", "method", "url"})
        )
        _text(check, "payload.track.code", track.get("code"), required=True)
        _text(check, "payload.track.carrier", track.get("carrier"), required=True)
        _text(check, "payload.track.method", track.get("method"))
        _text(check, "payload.track.url", track.get("url"))
    _date(check, "payload.delivered_carrier_date", payload.get("delivered_carrier_date"))


def _delivery(check: _Check, payload: dict[str, Any]) -> None:
    _exact_keys(check, payload, {"delivered_date"})
    _date(check, "payload.delivered_date", payload.get("delivered_date"), required=True)


def _cancel(check: _Check, payload: dict[str, Any]) -> None:
    _exact_keys(check, payload, set())


def _shipment_exception(check: _Check, payload: dict[str, Any]) -> None:
    _exact_keys(check, payload, {"occurrence_date", "observation"})
    _date(check, "payload.occurrence_date", payload.get("occurrence_date"), required=True)
    _text(check, "payload.observation", payload.get("observation"), required=True)


_BY_KIND = {
    Kind.PRODUCT: _product,
    Kind.PRICE: _price_row,
    Kind.STOCK: _stock_row,
    Kind.ORDER_INVOICE: _invoice,
    Kind.ORDER_SHIPMENT: _shipment,
    Kind.ORDER_DELIVERY: _delivery,
    Kind.ORDER_CANCEL: _cancel,
    Kind.ORDER_SHIPMENT_EXCEPTION: _shipment_exception,
}
assert set(_BY_KIND) == set(Kind)


def nesting_depth(value: Any, limit: int = MAX_DEPTH + 1) -> int:
    """How deep lists and objects nest (iteratively: a hostile payload cannot blow the stack);
    counting stops past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _flat_and_small(payload: dict[str, Any]) -> bool:
    """True when no value nests and an upper bound of the payload's JSON size is under the
    limit: then neither the depth nor the size needs measuring (a claim checks every row of a
    backlog, and most are flat price and stock rows). The bound counts 6 bytes a character
    (JSON's longest escape) and 32 for a number of at most 64 bits, a bool or null."""
    budget = MAX_PAYLOAD_BYTES
    for name, value in payload.items():
        if isinstance(value, str):
            budget -= 6 * len(value) + 2
        elif isinstance(value, dict | list) or (isinstance(value, int) and value.bit_length() > 64):
            return False  # nested, or a number of more digits than 32 bytes hold
        else:
            budget -= 32  # a float, a bool (an int of 1 bit), null
        budget -= 6 * len(name) + 4
    return budget >= 0


def _ref(check: _Check, ref: Any) -> None:
    if not isinstance(ref, str) or not ref.strip():
        check.fail("ref", "is required: the SKU, or the order code for order_* kinds")
    elif len(ref) > MAX_REF_LENGTH:
        check.fail("ref", f"is {len(ref)} characters long (at most {MAX_REF_LENGTH})")
    elif ref != ref.strip():
        check.fail("ref", f"has leading or trailing spaces: {describe(ref)}")


def ref_problems(ref: Any) -> list[str]:
    """The problems of a row's ref alone (the same for every row of a SKU)."""
    check = _Check()
    _ref(check, ref)
    return check.problems


# A stock row's JSON text as an ERP usually writes it, and as PostgreSQL prints every jsonb
# {"qty": n}: one key, an integer without sign, fraction or exponent. JSON's own whitespace
# only (Python's \s would admit spaces that json.loads refuses).
_PLAIN_STOCK = re.compile(r'\{[ \t\n\r]*"qty"[ \t\n\r]*:[ \t\n\r]*(0|[1-9][0-9]{0,9})[ \t\n\r]*\}')


def plain_stock(kind: Any, text: Any) -> dict[str, int] | None:
    """The payload of a ``stock`` row whose JSON text is a bare ``{"qty": n}`` with ``n`` a
    quantity SkyHub takes: such a payload has no problem (only the row's ref is left to check,
    :func:`ref_problems`), so a claim judges most rows of a stock backlog without parsing or
    walking them. None when the text is anything else: parse it and check it in full.
    (Property-tested against :func:`problems`.)"""
    if kind != "stock" or not isinstance(text, str):
        return None
    match = _PLAIN_STOCK.fullmatch(text)
    if match is None:
        return None
    qty = int(match[1])
    return {"qty": qty} if qty <= MAX_QTY else None


def problems(kind: Any, ref: Any, payload: Any) -> list[str]:
    """Every problem of one outbox row, each as "field: what is wrong"; empty when it is good."""
    check = _Check()
    if kind not in _BY_KIND:
        check.fail("kind", f"unknown kind {describe(kind)} (expected one of: {', '.join(Kind)})")
    _ref(check, ref)
    if isinstance(payload, UnreadableJSON):
        check.fail("payload", f"{payload.problem}: {payload.raw[:60]!r}")
        return check.problems
    if not isinstance(payload, dict):
        check.fail("payload", f"must be a JSON object, got {describe(payload)}")
        return check.problems
    if not _flat_and_small(payload):  # a price or stock row is: no need to measure it
        depth = nesting_depth(payload)
        if depth > MAX_DEPTH:
            check.fail("payload", f"is nested {depth}+ levels deep (at most {MAX_DEPTH})")
            return check.problems
        size = len(json.dumps(payload, ensure_ascii=False).encode())
        if size > MAX_PAYLOAD_BYTES:
            check.fail("payload", f"is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
            return check.problems
    if kind in _BY_KIND:
        _BY_KIND[kind](check, payload)
    if kind == "product" and not is_blank(payload.get("sku")) and payload["sku"] != ref:
        # SkyHub's own product JSON carries the SKU: welcome when it is the row's, else a typo
        # that would update one product with another's data.
        check.fail(
            "payload.sku",
            f"is {describe(payload['sku'])} but the row's ref is {describe(ref)}: "
            "they must be the same SKU",
        )
    return check.problems


def validate(kind: Any, ref: Any, payload: Any) -> dict[str, Any]:
    """Return the payload unchanged when the row is good; raise ValidationFailed otherwise."""
    found = problems(kind, ref, payload)
    if found:
        raise ValidationFailed(found)
    good: dict[str, Any] = payload  # no problems: a JSON object
    return good


def text_nesting_depth(text: str, limit: int = MAX_DEPTH + 1) -> int:
    """How deep brackets nest in JSON ``text``, outside strings, without parsing it (so no
    recursion: a payload nested 20,000 deep is measured, not a RecursionError); counting
    stops past ``limit``."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def parse_payload_text(text: str) -> Any:
    """Parse a payload given on the command line; invalid JSON, or JSON nested deeper than
    the outbox check allows (which the parser could not even read), becomes UnreadableJSON
    with the same problem the outbox check names."""
    depth = text_nesting_depth(text)
    if depth > MAX_DEPTH:
        return UnreadableJSON(text[:200], f"is nested {depth}+ levels deep (at most {MAX_DEPTH})")
    try:
        return parse_written(text)
    except RecursionError:  # not reached past the depth check; kept as the last guard
        return UnreadableJSON(text[:200], "is nested too deeply to read")
    except ValueError:
        return UnreadableJSON(text[:200])
