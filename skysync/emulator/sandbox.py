"""`Sandbox`: the emulator's facade, as tests, benchmarks and ``skysync sandbox`` use it.

It wires the accounts (:mod:`~skysync.emulator.accounts`: each its own
:class:`~skysync.emulator.state.EmulatorState`, rooms and SkyHub pipeline) to the listener
(:mod:`~skysync.emulator.server`) and the admin API.  Every method that reads or changes what
SkyHub holds takes ``account=`` (``"default"`` unless told); an unknown name raises
:class:`~skysync.emulator.accounts.UnknownAccountError`.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any

from skysync.emulator.accounts import Account, Accounts
from skysync.emulator.admin import answer_admin
from skysync.emulator.config import (
    DEFAULT_ACCOUNT,
    SandboxAccount,
    SandboxConfig,
    check_setting_names,
    validate_config_changes,
)
from skysync.emulator.faults import check_scripted_fault
from skysync.emulator.replies import ApiError, Reply
from skysync.emulator.routes import split_target
from skysync.emulator.server import Listener


class Sandbox:
    """The emulator: SkyHub accounts, their rate limits and faults behind a ThreadingHTTPServer.

    One lock (shared by every account's state) guards every piece of state; it is never held
    while sleeping (latency, hangs), so a slow request never stalls the others.  ValueError
    when ``config.accounts`` repeats a name or an email.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = copy.copy(config) if config is not None else SandboxConfig()
        self.config.accounts = list(self.config.accounts)
        self._accounts = Accounts(self.config, threading.Lock(), threading.Event())
        self._state = self._accounts.default.state
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

    # ----------------------------------------------------------------- accounts

    def add_account(self, name: str, email: str, api_key: str) -> dict[str, Any]:
        """Serve a new, empty account; ValueError naming a bad field, AccountExistsError (a
        ValueError) when the name or email is taken. Answers its name and email."""
        spec = SandboxAccount.from_mapping({"name": name, "email": email, "api_key": api_key})
        return self._accounts.add(spec).describe()

    def accounts(self) -> list[dict[str, Any]]:
        """Every account's name, email and whether it is revoked (never a key)."""
        return [account.describe() for account in self._accounts.all()]

    def revoke_account(self, name: str) -> None:
        """The account's key is refused (401) from now on; the other accounts are untouched."""
        self._accounts.set_revoked(name, True)

    def restore_account(self, name: str) -> None:
        """The account's key is accepted again."""
        self._accounts.set_revoked(name, False)

    def _account(self, name: str) -> Account:
        return self._accounts.get(name)

    # ----------------------------------------------------------------- direct helpers

    def seed_order(
        self, order: Mapping[str, Any], raw: bool = False, *, account: str = DEFAULT_ACCOUNT
    ) -> dict[str, Any]:
        """Store an order as the marketplace would and put it in the account's queue.

        Missing fields get realistic defaults.  Seeding an existing code merges the given fields
        over the stored order (a marketplace-side change such as a cancellation; no transition
        check).  With raw=True the dict is stored exactly as given, so tests can queue
        malformed orders; ValueError for an unusable order.
        """
        orders = self._account(account).orders
        if not isinstance(order, Mapping):
            raise ValueError("an order must be a JSON object")
        with self._state.lock:
            stored = orders.store_locked(order, raw=raw, allow_existing=True)
            return copy.deepcopy(stored)

    def move_order_dates(
        self, code: str, dates: Mapping[str, Any], *, account: str = DEFAULT_ACCOUNT
    ) -> dict[str, Any]:
        """Move some of an order's dates (``expedition_limit_date``, ``estimated_delivery``,
        ``approved_date``, ``placed_at``: ISO-8601, or None), as the marketplace reschedules
        an order, so that a test can make it late: its ``updated_at`` moves and it is queued
        again. Answers the order; KeyError for an unknown code, ValueError naming a bad
        field (nothing changes then)."""
        orders = self._account(account).orders
        if not isinstance(dates, Mapping):
            raise ValueError("the dates must be a JSON object")
        with self._state.lock:
            return copy.deepcopy(orders.move_dates_locked(code, dates))

    def seed_products(self, products: list[Any], *, account: str = DEFAULT_ACCOUNT) -> int:
        """Store products (and the variations they carry) as if created through the API, with
        no requests: set-up for large catalogues. All or nothing; ValueError names the bad one."""
        catalog = self._account(account).catalog
        try:
            return catalog.seed(products)
        except ApiError as exc:
            raise ValueError(exc.message) from None

    def link_product(self, sku: str, *, account: str = DEFAULT_ACCOUNT) -> None:
        """Make a product (or a variation's parent) linked now; KeyError when unknown."""
        self._account(account).catalog.link(sku)

    def seed_product(
        self, product: Mapping[str, Any], linked: bool = False, *, account: str = DEFAULT_ACCOUNT
    ) -> None:
        """Store a product (with the variations it lists) as if SkyHub had it all along, made
        outside skysync: no request, no rate limit. ValueError for an unusable one."""
        catalog = self._account(account).catalog
        if not isinstance(product, Mapping):
            raise ValueError("a product must be a JSON object")
        catalog.seed_product(product, linked=linked)

    def change_product(
        self, sku: str, fields: Mapping[str, Any], *, account: str = DEFAULT_ACCOUNT
    ) -> None:
        """Change a product or a variation behind skysync's back (SkyHub's panel, another
        integration); a ``None`` value removes the field. KeyError for an unknown SKU."""
        catalog = self._account(account).catalog
        if not isinstance(fields, Mapping):
            raise ValueError("the fields must be a JSON object")
        catalog.change_behind(sku, fields)

    def remove_product(self, sku: str, *, account: str = DEFAULT_ACCOUNT) -> None:
        """Delete a product (with its variations) or a variation behind skysync's back, linked
        or not. KeyError for an unknown SKU."""
        self._account(account).catalog.remove(sku)

    def add_sync_error(
        self, entity_type: str, error: Mapping[str, Any], *, account: str = DEFAULT_ACCOUNT
    ) -> dict[str, Any]:
        """SkyHub notices an error about an accepted product or order (``entity_type``
        "products" or "orders"; ``entity_id``, ``error_category_code``, ``error_code`` and
        ``message`` required). ValueError for a bad one."""
        return self._account(account).sync_errors.add(entity_type, error)

    def state(self, *, account: str = DEFAULT_ACCOUNT) -> dict[str, Any]:
        """A snapshot of everything the account holds, as plain JSON-ready data.

        `queue` lists the queued order codes in delivery order; `queue_detail` adds whether each
        is visible now and, if not, in how many seconds it will be.
        """
        held = self._account(account)
        with self._state.lock:
            now = time.monotonic()
            catalog = held.catalog.snapshot_locked(now)
            orders = held.orders.snapshot_locked(now)
            sync_errors = copy.deepcopy(held.state.sync_errors)
        return {
            "products": catalog["products"],
            "variations": catalog["variations"],
            "orders": orders["orders"],
            "queue": orders["queue"],
            "frozen_writes": catalog["frozen_writes"],
            "sync_errors": sync_errors,
            "queue_detail": orders["queue_detail"],
        }

    def request_counts(self, *, account: str = DEFAULT_ACCOUNT) -> dict[str, int]:
        """Requests seen per "METHOD /route STATUS" (STATUS is None when no answer was sent)."""
        held = self._account(account).state
        with self._state.lock:
            return dict(held.counts)

    def request_log(self, *, account: str = DEFAULT_ACCOUNT) -> list[dict[str, Any]]:
        """Every SkyHub request in arrival order (admin calls excluded); see the module doc."""
        held = self._account(account).state
        with self._state.lock:
            return copy.deepcopy(list(held.log))

    def reset(self, *, account: str | None = None) -> None:
        """Forget all state, counters, rate-limit windows and scripted faults (config stays),
        and restore revoked keys: of every account (accounts added since construction are
        dropped), or only of the named one."""
        self._accounts.reset(account)

    def configure(self, **changes: Any) -> None:
        """Change SandboxConfig fields at runtime (for every account); ValueError for unknown
        or invalid values."""
        check_setting_names(changes)
        if self._listener.serving and ({"host", "port"} & set(changes)):
            raise ValueError("host and port cannot change while serving")
        validate_config_changes(changes)
        held = self._accounts.all()
        with self._state.lock:
            for name, value in changes.items():
                setattr(self.config, name, value)
            if "seed" in changes:
                for account in held:
                    account.state.rng = random.Random(self.config.seed)

    def script_fault(
        self,
        method: str,
        path_prefix: str,
        fault: str,
        count: int = 1,
        *,
        account: str = DEFAULT_ACCOUNT,
    ) -> None:
        """Give `fault` to the account's next `count` requests matching method ("*" = any) and
        path prefix.

        The prefix is compared with the percent-decoded path, so order codes are written as
        they are (with spaces).
        """
        held = self._account(account).state
        check_scripted_fault(method, path_prefix, fault, count)
        with self._state.lock:
            held.scripted.append([method.upper(), path_prefix, fault, count])

    def clear_faults(self, *, account: str = DEFAULT_ACCOUNT) -> None:
        """Drop every scripted fault not used up yet (products, orders and config stay)."""
        held = self._account(account).state
        with self._state.lock:
            held.scripted.clear()

    # ----------------------------------------------------------------- HTTP entry

    def _handle_http(self, method: str, raw_path: str, headers: Message, body: bytes) -> Reply:
        """Admin calls go to the admin API, everything else through the SkyHub pipeline of the
        account the X-User-Email names (``default`` when none does)."""
        target = split_target(raw_path)
        if target.segments and target.segments[0] == "_sandbox":
            return answer_admin(self, method, target.segments[1:], target.query, body)
        account = self._accounts.for_email(headers.get("X-User-Email"))
        return account.dispatcher.answer(method, raw_path, target, headers, body)


def main_sandbox(config: SandboxConfig) -> None:
    """Run the emulator in the foreground until Ctrl-C (the `skysync sandbox` command)."""
    sandbox = Sandbox(config)

    def announce(url: str) -> None:
        print(f"SkyHub emulator listening on {url}", flush=True)
        for account in sandbox.accounts()[1:]:
            print(f"account {account['name']}: {account['email']}", flush=True)

    try:
        sandbox.serve_forever(ready=announce)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
