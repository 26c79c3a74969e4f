"""SkyHub emulator: a real HTTP server that behaves like SkyHub for the endpoints skysync uses.

Tests, benchmarks and demos (``skysync sandbox``) talk to it over real sockets, so the client's
retry, rate-limit and error handling meet the same wire-level surprises SkyHub produces: wrapped
bodies, 401/404/415/422/429 answers, 5xx pages, hung requests, and answers lost after the change
was applied.  The facts it follows are in ``skyhub-api.md`` (sections 2-6); where SkyHub's
documentation is silent it follows that file's section 9.

It is standard library only (``ThreadingHTTPServer``) on purpose: the "lost answer" fault must
close the socket without writing a single byte, which a framework would not let us do.

SkyHub endpoints (headers ``X-User-Email``, ``X-Api-Key``, ``X-Accountmanager-Key`` required;
SKUs and order codes are percent-decoded path segments, order codes may hold spaces):

=======  ===================================  =====================================================
POST     /products                            ``{"product":{...}}`` -> 201; 422 duplicate/invalid
GET      /products                            ``page``, ``per_page`` (25, max 100), ``cursor``,
                                              ``filters[status|name|qty_from|qty_to]``
                                              -> ``{"products","total","next"}``
GET      /products/{sku}                      200 with ``associations`` and ``variations``; 404
PUT      /products/{sku}                      ``{"product":{partial}}`` -> 204; 404
DELETE   /products/{sku}                      204; 422 when linked; 404
POST     /products/{sku}/variations           ``{"variation":{...}}`` -> 201; 404 unknown parent
GET      /variations/{sku}                    200; 404
PUT      /variations/{sku}                    ``{"variation":{partial}}`` -> 204; 404
DELETE   /variations/{sku}                    204; 422 when the parent is linked; 404
GET      /orders                              ``page``, ``per_page`` (100), ``filters[statuses][]``
                                              -> ``{"total","orders"}``
POST     /orders                              sandbox only: ``{"order":{...}}`` -> 201 + order
GET      /orders/{code}                       200; 404
POST     /orders/{code}/approval              sandbox only: ``{"status":"payment_received"}``
POST     /orders/{code}/invoice               ``{"status":"order_invoiced","invoice":{"key"}}``
POST     /orders/{code}/shipments             ``{"status":"order_shipped","shipment":{...}}``
POST     /orders/{code}/delivery              ``{"status":"complete","delivered_date"}``
POST     /orders/{code}/cancel                ``{"status":"order_canceled"}``
POST     /orders/{code}/shipment_exception    ``{"status":"shipment_exception",...}``
GET      /queues/orders                       200 + ONE order, or 204 when nothing is visible
DELETE   /queues/orders/{code}                204; 404 when not queued
GET      /sync_errors/products                ``{"errors": []}``
=======  ===================================  =====================================================

Order actions answer 201 with no body, move the order along the transition table (anything else,
including a repeat of the current status, is 422) and re-enqueue the order.

Admin endpoints (no auth, never rate-limited, never faulted, not in the request log):
``POST /_sandbox/orders`` (an order, or ``{"raw": {...}}`` stored unvalidated),
``POST /_sandbox/products/{sku}/link``, ``GET /_sandbox/state``, ``GET /_sandbox/requests``,
``POST /_sandbox/reset``, ``GET|POST /_sandbox/config``, ``POST /_sandbox/faults``.

Fault model, applied to SkyHub endpoints in this order:

1. ``latency_ms`` is slept before anything else.
2. Auth (401), then routing (404), then the per (bucket, method) sliding one-second rate limit
   (429; a refused request does not use up the window).
3. A scripted fault (:meth:`Sandbox.script_fault`), else random ones drawn from ``Random(seed)``:
   ``fail_rate`` (500, 502 with an HTML page, or 503; not applied), ``timeout_rate`` (hang
   ``hang_seconds`` then close without answering; not applied), ``lost_answer_rate`` (writes only:
   applied, then the connection is closed without a byte).  Scripted faults also offer ``429``,
   ``drop`` (close at once, not applied) and ``applied_hang`` (applied, then hang
   ``hang_seconds`` and close: the answer never comes, as when the caller is killed meanwhile).
   ``refused_categories`` makes a product write naming one of those category codes or names
   a 422 "Categoria não encontrada" (nothing applied).

``state()["frozen_writes"]`` lists every accepted write that changed an attribute other than
price, promotional price or stock of a linked product or of its variations (SkyHub accepts it
and the marketplace ignores it: skysync must never send one).
4. The body is checked (415 not UTF-8, 400 empty/invalid/unwrapped) and the request is handled.

The credential header values are never logged, stored or echoed.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any

from skysync.emulator.catalog import LINKED_DELETE_ERROR, Catalog
from skysync.emulator.config import (
    SandboxConfig,
    check_setting_names,
    masked_config,
    validate_config_changes,
)
from skysync.emulator.dispatch import Dispatcher
from skysync.emulator.faults import check_scripted_fault
from skysync.emulator.orders import Orders
from skysync.emulator.replies import ApiError, Reply, error_reply, json_reply
from skysync.emulator.routes import split_target
from skysync.emulator.server import Listener
from skysync.emulator.state import EmulatorState

__all__ = ["LINKED_DELETE_ERROR", "Sandbox", "SandboxConfig", "main_sandbox"]


class Sandbox:
    """The emulator: SkyHub state, rate limits and faults behind a ThreadingHTTPServer.

    One lock guards every piece of state; it is never held while sleeping (latency, hangs), so
    a slow request never stalls the others.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = copy.copy(config) if config is not None else SandboxConfig()
        self._state = EmulatorState(self.config)
        self._catalog = Catalog(self._state)
        self._orders = Orders(self._state)
        self._dispatcher = Dispatcher(
            self._state, {"catalog": self._catalog, "orders": self._orders}
        )
        self._listener = Listener(self._handle_http, self._state.stopping)

    # ----------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """``http://host:port`` once serving; empty before."""
        return self._listener.base_url

    def start(self) -> str:
        """Serve in a daemon thread and return the base URL."""
        return self._listener.start(self.config.host, self.config.port)

    def serve_forever(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve in the calling thread until interrupted; `ready` receives the base URL."""
        self._listener.serve_forever(self.config.host, self.config.port, ready)

    def stop(self) -> None:
        """Stop serving, cut open connections and hung requests, and join the thread."""
        self._listener.stop()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- direct helpers

    def seed_order(self, order: Mapping[str, Any], raw: bool = False) -> dict[str, Any]:
        """Store an order as the marketplace would and put it in the queue.

        Missing fields get realistic defaults.  Seeding an existing code merges the given fields
        over the stored order (a marketplace-side change such as a cancellation; no transition
        check).  With raw=True the dict is stored exactly as given, so tests can queue
        malformed orders; ValueError for an unusable order.
        """
        if not isinstance(order, Mapping):
            raise ValueError("an order must be a JSON object")
        with self._state.lock:
            stored = self._orders.store_locked(order, raw=raw, allow_existing=True)
            return copy.deepcopy(stored)

    def link_product(self, sku: str) -> None:
        """Make a product (or a variation's parent) linked now; KeyError when unknown."""
        self._catalog.link(sku)

    def state(self) -> dict[str, Any]:
        """A snapshot of everything the emulator holds, as plain JSON-ready data.

        `queue` lists the queued order codes in delivery order; `queue_detail` adds whether each
        is visible now and, if not, in how many seconds it will be.
        """
        with self._state.lock:
            now = time.monotonic()
            catalog = self._catalog.snapshot_locked(now)
            orders = self._orders.snapshot_locked(now)
        return {
            "products": catalog["products"],
            "variations": catalog["variations"],
            "orders": orders["orders"],
            "queue": orders["queue"],
            "frozen_writes": catalog["frozen_writes"],
            "queue_detail": orders["queue_detail"],
        }

    def request_counts(self) -> dict[str, int]:
        """Requests seen per "METHOD /route STATUS" (STATUS is None when no answer was sent)."""
        with self._state.lock:
            return dict(self._state.counts)

    def request_log(self) -> list[dict[str, Any]]:
        """Every SkyHub request in arrival order (admin calls excluded); see the module doc."""
        with self._state.lock:
            return copy.deepcopy(list(self._state.log))

    def reset(self) -> None:
        """Forget all state, counters, rate-limit windows and scripted faults (config stays)."""
        with self._state.lock:
            self._state.clear()

    def configure(self, **changes: Any) -> None:
        """Change SandboxConfig fields at runtime; ValueError for unknown or invalid values."""
        check_setting_names(changes)
        if self._listener.serving and ({"host", "port"} & set(changes)):
            raise ValueError("host and port cannot change while serving")
        validate_config_changes(changes)
        with self._state.lock:
            for name, value in changes.items():
                setattr(self.config, name, value)
            if "seed" in changes:
                self._state.rng = random.Random(self.config.seed)

    def script_fault(self, method: str, path_prefix: str, fault: str, count: int = 1) -> None:
        """Give `fault` to the next `count` requests matching method ("*" = any) and path prefix.

        The prefix is compared with the percent-decoded path, so order codes are written as
        they are (with spaces).
        """
        check_scripted_fault(method, path_prefix, fault, count)
        with self._state.lock:
            self._state.scripted.append([method.upper(), path_prefix, fault, count])

    # ----------------------------------------------------------------- HTTP entry

    def _handle_http(self, method: str, raw_path: str, headers: Message, body: bytes) -> Reply:
        """Admin calls go to the admin API, everything else through the SkyHub pipeline."""
        target = split_target(raw_path)
        if target.segments and target.segments[0] == "_sandbox":
            return self._handle_admin(method, target.segments[1:], body)
        return self._dispatcher.answer(method, raw_path, target, headers, body)

    # ----------------------------------------------------------------- admin

    def _handle_admin(self, method: str, segments: list[str], body: bytes) -> Reply:
        """Test and demo controls: no auth, no limits, no faults, not in the request log."""
        try:
            data: Any = None
            if body:
                try:
                    data = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise ApiError(400, "O corpo deve ser JSON em UTF-8") from None
            route = (method, *segments)
            if route == ("POST", "orders"):
                if not isinstance(data, dict):
                    raise ApiError(400, 'Envie um pedido ou {"raw": {...}}')
                try:
                    if set(data) == {"raw"} and isinstance(data["raw"], dict):
                        order = self.seed_order(data["raw"], raw=True)
                    else:
                        order = self.seed_order(data)
                except ValueError as exc:
                    raise ApiError(422, str(exc)) from None
                return json_reply(201, order)
            if len(route) == 4 and route[:2] == ("POST", "products") and route[3] == "link":
                try:
                    self.link_product(route[2])
                except KeyError:
                    raise ApiError(404, f"Produto com SKU '{route[2]}' não encontrado") from None
                return Reply(204)
            if route == ("GET", "state"):
                return json_reply(200, self.state())
            if route == ("GET", "requests"):
                return json_reply(200, {"counts": self.request_counts(), "log": self.request_log()})
            if route == ("POST", "reset"):
                self.reset()
                return Reply(204)
            if route == ("GET", "config"):
                return json_reply(200, masked_config(self.config))
            if route == ("POST", "config"):
                if not isinstance(data, dict):
                    raise ApiError(400, "Envie um objeto com os campos a alterar")
                try:
                    self.configure(**data)
                except ValueError as exc:
                    raise ApiError(400, str(exc)) from None
                return json_reply(200, masked_config(self.config))
            if route == ("POST", "faults"):
                if not isinstance(data, dict):
                    raise ApiError(400, 'Envie {"method", "path_prefix", "fault", "count"}')
                try:
                    self.script_fault(
                        data.get("method", "*"),
                        data.get("path_prefix", "/"),
                        data.get("fault", ""),
                        data.get("count", 1),
                    )
                except ValueError as exc:
                    raise ApiError(400, str(exc)) from None
                return Reply(204)
            raise ApiError(
                404,
                f"Endpoint de administração desconhecido: {method} /_sandbox/{'/'.join(segments)}",
            )
        except ApiError as exc:
            return error_reply(exc.status, exc.message)


def main_sandbox(config: SandboxConfig) -> None:
    """Run the emulator in the foreground until Ctrl-C (the `skysync sandbox` command)."""
    sandbox = Sandbox(config)

    def announce(url: str) -> None:
        print(f"SkyHub emulator listening on {url}", flush=True)

    try:
        sandbox.serve_forever(ready=announce)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
