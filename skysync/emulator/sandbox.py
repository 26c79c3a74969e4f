"""`Sandbox`: the emulator's facade, as tests, benchmarks and ``skysync sandbox`` use it.

It wires the rooms together over one :class:`~skysync.emulator.state.EmulatorState`: the
listener (:mod:`~skysync.emulator.server`), the SkyHub pipeline
(:mod:`~skysync.emulator.dispatch`), the catalogue and orders, and the admin API.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any

from skysync.emulator.admin import answer_admin
from skysync.emulator.catalog import Catalog
from skysync.emulator.config import SandboxConfig, check_setting_names, validate_config_changes
from skysync.emulator.dispatch import Dispatcher
from skysync.emulator.faults import check_scripted_fault
from skysync.emulator.orders import Orders
from skysync.emulator.replies import ApiError, Reply
from skysync.emulator.routes import split_target
from skysync.emulator.server import Listener
from skysync.emulator.state import EmulatorState
from skysync.emulator.sync_errors import SyncErrors


class Sandbox:
    """The emulator: SkyHub state, rate limits and faults behind a ThreadingHTTPServer.

    One lock (the state's) guards every piece of state; it is never held while sleeping
    (latency, hangs), so a slow request never stalls the others.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = copy.copy(config) if config is not None else SandboxConfig()
        self._state = EmulatorState(self.config)
        self._catalog = Catalog(self._state)
        self._orders = Orders(self._state)
        self._sync_errors = SyncErrors(self._state)
        self._dispatcher = Dispatcher(
            self._state,
            {"catalog": self._catalog, "orders": self._orders, "sync_errors": self._sync_errors},
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

    def seed_products(self, products: list[Any]) -> int:
        """Store products (and the variations they carry) as if created through the API, with
        no requests: set-up for large catalogues. All or nothing; ValueError names the bad one."""
        try:
            return self._catalog.seed(products)
        except ApiError as exc:
            raise ValueError(exc.message) from None

    def link_product(self, sku: str) -> None:
        """Make a product (or a variation's parent) linked now; KeyError when unknown."""
        self._catalog.link(sku)

    def seed_product(self, product: Mapping[str, Any], linked: bool = False) -> None:
        """Store a product (with the variations it lists) as if SkyHub had it all along, made
        outside skysync: no request, no rate limit. ValueError for an unusable one."""
        if not isinstance(product, Mapping):
            raise ValueError("a product must be a JSON object")
        self._catalog.seed_product(product, linked=linked)

    def change_product(self, sku: str, fields: Mapping[str, Any]) -> None:
        """Change a product or a variation behind skysync's back (SkyHub's panel, another
        integration); a ``None`` value removes the field. KeyError for an unknown SKU."""
        if not isinstance(fields, Mapping):
            raise ValueError("the fields must be a JSON object")
        self._catalog.change_behind(sku, fields)

    def remove_product(self, sku: str) -> None:
        """Delete a product (with its variations) or a variation behind skysync's back, linked
        or not. KeyError for an unknown SKU."""
        self._catalog.remove(sku)

    def add_sync_error(self, entity_type: str, error: Mapping[str, Any]) -> dict[str, Any]:
        """SkyHub notices an error about an accepted product or order (``entity_type``
        "products" or "orders"; ``entity_id``, ``error_category_code``, ``error_code`` and
        ``message`` required). ValueError for a bad one."""
        return self._sync_errors.add(entity_type, error)

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
            "sync_errors": copy.deepcopy(self._state.sync_errors),
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

    def clear_faults(self) -> None:
        """Drop every scripted fault not used up yet (products, orders and config stay)."""
        with self._state.lock:
            self._state.scripted.clear()

    # ----------------------------------------------------------------- HTTP entry

    def _handle_http(self, method: str, raw_path: str, headers: Message, body: bytes) -> Reply:
        """Admin calls go to the admin API, everything else through the SkyHub pipeline."""
        target = split_target(raw_path)
        if target.segments and target.segments[0] == "_sandbox":
            return answer_admin(self, method, target.segments[1:], body)
        return self._dispatcher.answer(method, raw_path, target, headers, body)


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
