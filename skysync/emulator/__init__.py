"""SkyHub emulator: a real HTTP server that behaves like SkyHub for the endpoints skysync uses.

Tests, benchmarks and demos (``skysync sandbox``) talk to it over real sockets, so the client's
retry, rate-limit and error handling meet the same wire-level surprises SkyHub produces: wrapped
bodies, 401/404/415/422/429 answers, 5xx pages, hung requests, and answers lost after the change
was applied.  The facts it follows are in ``skyhub-api.md`` (sections 2-6); where SkyHub's
documentation is silent it follows that file's section 9.

It is standard library only (``ThreadingHTTPServer``) on purpose: the "lost answer" fault must
close the socket without writing a single byte, which a framework would not let us do.

It serves several SkyHub accounts, as SkyHub does: a request goes to the registered account
whose email its ``X-User-Email`` carries, else to ``default`` (the single account it always
was); each account has its own catalogue, order queue, sync errors, request log, rate-limit
windows and scripted faults (:mod:`~skysync.emulator.accounts`).

Where things are (one :class:`~skysync.emulator.state.EmulatorState` per account, one lock):

=====================  ==========================================================================
``sandbox.py``         :class:`Sandbox`, the facade: lifecycle, accounts, seeding, state,
                       configure, faults
``accounts.py``        accounts: who a request belongs to, its credentials, revoking, reset
``server.py``          the wire: connections, body reading, answer / drop / hang
``dispatch.py``        the steps a SkyHub request goes through (fault model below), the request log
``routes.py``          the route table, path matching, body unwrapping
``limits.py``          per (bucket, method) rate windows and the 429 answer
``faults.py``          scripted and random faults and what each one does
``catalog.py``         products, variations, linking, frozen writes, product pages and cursors
``sync_errors.py``     SkyHub's own errors about accepted products and orders, and ignoring them
``orders.py``          orders, status actions, the queue and its redelivery
``order_statuses.py``  the status codes and the transition table
``admin.py``           the ``/_sandbox`` admin API (``?account=NAME``)
``admin_accounts.py``  ``/_sandbox/accounts``: register, list, revoke and restore accounts
``fixtures.py``        realistic default order data
``config.py``          :class:`SandboxConfig` and which values it refuses, :class:`SandboxAccount`
``paging.py``          page numbers, the 10,000-entry depth limit, cursor encoding
``replies.py``         :class:`~skysync.emulator.replies.ApiError` and the reply the socket acts on
``state.py``           everything one account holds, behind the emulator's one lock
=====================  ==========================================================================

SkyHub endpoints (headers ``X-User-Email``, ``X-Api-Key``, ``X-Accountmanager-Key`` required;
SKUs and order codes are percent-decoded path segments, order codes may hold spaces):

=======  ===================================  =====================================================
POST     /products                            ``{"product":{...}}`` -> 201; 422 duplicate/invalid
GET      /products                            ``page``, ``per_page`` (25, max 100), ``cursor``,
                                              ``filters[status|name|qty_from|qty_to]``
                                              -> ``{"products","total","next"}``; products
                                              carry their ``variations``; a ``page`` beyond
                                              10,000 entries is a 400, the ``next`` cursor
                                              goes any depth
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
GET      /sync_errors/{products,orders}       ``page``, ``per_page`` (100), ``error_category_code``
                                              -> ``{"error_qty","errors"}``
PATCH    /sync_errors/{products,orders}       ``{"errors":[{"entity_id","error_category_code",
                                              "error_code"}]}`` -> 204: ignored, not listed again
=======  ===================================  =====================================================

Order actions answer 201 with no body, move the order along the transition table (anything else,
including a repeat of the current status, is 422) and re-enqueue the order.

Admin endpoints (no auth, never rate-limited, never faulted, not in the request log; each
takes ``?account=NAME``, ``default`` when absent):
``POST /_sandbox/orders`` (an order, or ``{"raw": {...}}`` stored unvalidated),
``POST /_sandbox/orders/{code}/dates`` (move its expedition limit, estimated delivery, approval
or placing date, and queue it again: a test makes an order late),
``POST /_sandbox/products/{sku}/link``, ``POST /_sandbox/products`` (a product SkyHub has that
skysync never sent), ``PATCH|DELETE /_sandbox/products/{sku}`` (a change behind skysync's back,
for reconciliation tests), ``POST /_sandbox/sync_errors`` (an error SkyHub noticed),
``GET /_sandbox/state``, ``GET /_sandbox/requests``,
``POST /_sandbox/reset``, ``GET|POST /_sandbox/config``, ``POST /_sandbox/faults``;
``GET|POST /_sandbox/accounts``, ``POST /_sandbox/accounts/{name}/revoke|restore``.

Fault model, applied to SkyHub endpoints in this order:

1. ``latency_ms`` is slept before anything else.
2. Auth (401: the account's credentials; a revoked key is a wrong one), then routing (404), then
   the account's per (bucket, method) sliding one-second rate limit (429; a refused request
   does not use up the window).
3. A scripted fault (:meth:`Sandbox.script_fault`), else random ones drawn from ``Random(seed)``:
   ``fail_rate`` (500, 502 with an HTML page, or 503; not applied), ``timeout_rate`` (hang
   ``hang_seconds`` then close without answering; not applied), ``lost_answer_rate`` (writes only:
   applied, then the connection is closed without a byte).  Scripted faults also offer ``429``,
   ``drop`` (close at once, not applied) and ``applied_hang`` (applied, then hang
   ``hang_seconds`` and close: the answer never comes, as when the caller is killed meanwhile).
   ``refused_categories`` makes a product write naming one of those category codes or names
   a 422 "Categoria não encontrada" (nothing applied).
4. The body is checked (415 not UTF-8, 400 empty/invalid/unwrapped) and the request is handled.

``state()["frozen_writes"]`` lists every accepted write that changed an attribute other than
price, promotional price or stock of a linked product or of its variations (SkyHub accepts it
and the marketplace ignores it: skysync must never send one).

The credential header values are never logged, stored or echoed, nor is an account's api_key.
"""

from skysync.emulator.accounts import AccountExistsError, UnknownAccountError
from skysync.emulator.catalog import LINKED_DELETE_ERROR
from skysync.emulator.config import DEFAULT_ACCOUNT, SandboxAccount, SandboxConfig
from skysync.emulator.sandbox import Sandbox, main_sandbox

__all__ = [
    "DEFAULT_ACCOUNT",
    "LINKED_DELETE_ERROR",
    "AccountExistsError",
    "Sandbox",
    "SandboxAccount",
    "SandboxConfig",
    "UnknownAccountError",
    "main_sandbox",
]
