"""Realistic default order data: what a seeded or sandbox-created order looks like on SkyHub.

The shape follows skyhub-api.md section 4; the values are a plausible Lojas Americanas order
from a test customer in Rio de Janeiro.  Every call builds fresh dicts, so callers may mutate.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from skysync.emulator.config import is_number

BRT = timezone(timedelta(hours=-3))  # SkyHub dates are Brasília time


def now_iso() -> str:
    """The current time as SkyHub stamps it (Brasília time, whole seconds)."""
    return datetime.now(BRT).isoformat(timespec="seconds")


def demo_items() -> list[dict[str, Any]]:
    """The one item an order gets when none is given."""
    return [
        {
            "id": "SKYSYNC-DEMO-1",
            "product_id": "SKYSYNC-DEMO-1",
            "name": "Produto de demonstração",
            "qty": 1,
            "original_price": 100.0,
            "special_price": 100.0,
            "promotions": [],
        }
    ]


def items_total(items: Any) -> float:
    """Sum of special (else original) price times qty over well-formed items; others count 0."""
    total = 0.0
    if isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping):
                price = item.get("special_price", item.get("original_price", 0))
                qty = item.get("qty", 1)
                if is_number(price) and is_number(qty):
                    total += float(price) * float(qty)
    return total


def demo_customer() -> dict[str, Any]:
    """The test customer every default order belongs to."""
    return {
        "name": "Cliente Teste",
        "email": "cliente.teste@example.com",
        "date_of_birth": "1990-01-01",
        "gender": "female",
        "vat_number": "00000000191",
        "phones": ["21999999999"],
    }


def demo_address() -> dict[str, str]:
    """The test customer's address (used for shipping and billing alike)."""
    return {
        "full_name": "Cliente Teste",
        "street": "Rua Sacadura Cabral",
        "number": "102",
        "detail": "",
        "complement": "",
        "reference": "",
        "neighborhood": "Saúde",
        "city": "Rio de Janeiro",
        "region": "RJ",
        "country": "BR",
        "postcode": "20081262",
        "phone": "21999999999",
    }


def demo_order(given: dict[str, Any], code: str, status: dict[str, str]) -> dict[str, Any]:
    """A complete order in SkyHub's shape for `code` and `status`; fields in `given` win.

    Without items it holds one demo product; the total and the payment follow the items.
    The channel is read from the code ("Lojas Americanas-1700000000001-01").
    """
    now = datetime.now(BRT)
    stamp = now.isoformat(timespec="seconds")
    channel = code.rsplit("-", 2)[0] if code.count("-") >= 2 else "Lojas Americanas"
    items = given.get("items")
    if items is None:
        items = demo_items()
    total = round(items_total(items), 2)
    address = demo_address()
    approved = status["code"] not in ("book_product",)
    result: dict[str, Any] = {
        "code": code,
        "channel": channel,
        "placed_at": stamp,
        "updated_at": stamp,
        "approved_date": stamp if approved else None,
        "shipped_date": None,
        "delivered_date": None,
        "total_ordered": total,
        "interest": 0.0,
        "discount": 0.0,
        "shipping_cost": 0.0,
        "shipping_method": "Normal",
        "shipping_carrier": None,
        "calculation_type": None,
        "estimated_delivery": (now + timedelta(days=7)).date().isoformat(),
        "expedition_limit_date": (now + timedelta(days=2)).isoformat(timespec="seconds"),
        "sync_status": "NOT_SYNCED",
        "available_to_sync": True,
        "tags": [],
        "status": status,
        "customer": demo_customer(),
        "shipping_address": address,
        "billing_address": copy.deepcopy(address),
        "items": items,
        "payments": [
            {
                "method": "CREDIT_CARD",
                "description": "Cartão de crédito",
                "parcels": 1,
                "value": total,
                "status": "APPROVED" if approved else "PENDING",
            }
        ],
        "invoices": [],
        "shipments": [],
    }
    result.update(given)
    result["code"] = code
    result["status"] = status
    return result
