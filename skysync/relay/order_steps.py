"""Order steps (invoice, shipment, delivery, cancel, shipment exception): sent one by one in id
order, never overtaking an earlier step of the same order that has not gone yet; a repeat that
SkyHub answers 422 is read back to tell "already done" from a real refusal."""

from __future__ import annotations

from collections.abc import Callable

from skysync.domain.order_flow import TARGET_STATUS, check_step
from skysync.domain.planner import Row
from skysync.relay import unit_of_work as unit
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import DeliveryState, Outcome, failure_outcome
from skysync.relay.record import record_outcome
from skysync.skyhub.errors import (
    AuthenticationError,
    PermanentError,
    RateLimited,
    RetryableError,
    SkyHubError,
    Unprocessable,
)
from skysync.store import orders as order_store


def deliver_order(deps: RelayDeps, token: str, rows: list[Row]) -> Outcome:
    """Order steps go out one by one in id order and never overtake an earlier step of the
    same order that has not gone yet (pending, refused by SkyHub, or dead), unless they are
    a newer row of that same kind: the fix. A step held back goes in the same batch as soon
    as the fix went out. Returns the last outcome recorded; on ``auth`` the steps not sent
    are recorded with it and nothing more is sent."""
    code = rows[0].ref
    with deps.db.scope() as session:
        open_steps = order_store.unresolved_steps(session, code, exclude={r.id for r in rows})
        current = order_store.current_status(session, code)
    sequence = _Sequence(deps, token, open_steps, current)
    remaining = list(rows)
    while remaining:
        remaining = sequence.pass_over(remaining)
        if sequence.stopped is not None:
            return sequence.stopped
        if not sequence.progress:
            break
    for row in remaining:
        blocker = sequence.held[row.id]
        reason = f"waiting for row {blocker.id} ({blocker.kind}, {blocker.state}) to go first"
        sequence.last = Outcome(state=DeliveryState.WAIT, delay=5.0, reason=reason)
        record_outcome(deps, token, [row], sequence.last)
    return sequence.last


class _Sequence:
    """One order's steps as they go out: which earlier steps are still open, the order's
    status as far as we know, and which rows wait behind which open step."""

    def __init__(
        self, deps: RelayDeps, token: str, open_steps: list[order_store.Step], current: str | None
    ):
        self.deps = deps
        self.token = token
        self.open_steps = open_steps
        self.current = current
        self.held: dict[int, order_store.Step] = {}
        self.last = Outcome(state=DeliveryState.SENT)
        self.progress = False
        self.stopped: Outcome | None = None

    def pass_over(self, remaining: list[Row]) -> list[Row]:
        """Send every row no open step holds back, in id order; returns the rows still held.
        ``progress`` says whether a sent step resolved an open one (another pass may help)."""
        self.progress = False
        still: list[Row] = []
        for row in remaining:
            blocker = next(
                (b for b in self.open_steps if b.id < row.id and b.kind != row.kind), None
            )
            if blocker is not None:
                self.held[row.id] = blocker
                still.append(row)
                continue
            self.held.pop(row.id, None)
            outcome = push_order_step(self.deps, row, self.current)
            record_outcome(self.deps, self.token, [row], outcome)
            self.last = outcome
            if outcome.state == DeliveryState.AUTH:
                # every step would fail the same way: the rest wait for the credentials
                rest = [r for r in remaining if r.id > row.id] + still
                if rest:
                    record_outcome(
                        self.deps,
                        self.token,
                        rest,
                        Outcome(state=DeliveryState.AUTH, reason=outcome.reason),
                    )
                self.stopped = outcome
                return []
            self._after(row, outcome)
        return still

    def _after(self, row: Row, outcome: Outcome) -> None:
        """A sent step moves the order on and resolves open steps of its kind that it is newer
        than (it is their fix); a step that did not go holds later steps back."""
        if outcome.state == DeliveryState.SENT:
            self.current = outcome.order_status[1] if outcome.order_status else self.current
            before = len(self.open_steps)
            self.open_steps = [b for b in self.open_steps if b.kind != row.kind or b.id > row.id]
            self.progress = self.progress or len(self.open_steps) < before
        elif outcome.blocks_later or outcome.state in (DeliveryState.WAIT, DeliveryState.RETRY):
            self.open_steps.append(order_store.Step(row.id, row.kind, outcome.state))


def push_order_step(deps: RelayDeps, row: Row, current: str | None) -> Outcome:
    """One step, unless the order's known status makes it a repeat (``sent``, no request) or
    impossible (``rejected`` locally, no request spent; it does not hold later steps back)."""
    code, payload = row.ref, row.payload
    target = TARGET_STATUS[row.kind]
    check = check_step(row.kind, current)
    if check.verdict == "done":
        return Outcome(state=DeliveryState.SENT, reason=check.reason, order_status=(code, target))
    if check.verdict == "refuse":
        return Outcome(state=DeliveryState.REJECTED, reason=f"refused locally: {check.reason}")
    client = deps.client
    actions: dict[str, Callable[[], None]] = {
        "order_invoice": lambda: client.invoice_order(
            code, payload["key"], payload.get("issue_date")
        ),
        "order_shipment": lambda: client.ship_order(code, payload),
        "order_delivery": lambda: client.deliver_order(code, payload["delivered_date"]),
        "order_cancel": lambda: client.cancel_order(code),
        "order_shipment_exception": lambda: client.shipment_exception(
            code, payload["occurrence_date"], payload["observation"]
        ),
    }
    try:
        unit.call(deps, actions[row.kind])
    except Unprocessable as exc:
        return _after_422(deps, code, target, exc)
    except SkyHubError as exc:
        return failure_outcome(exc)
    return Outcome(state=DeliveryState.SENT, order_status=(code, target))


def _after_422(deps: RelayDeps, code: str, target: str, exc: Unprocessable) -> Outcome:
    """After a lost answer our own repeat gets a 422: read the order to tell "already done"
    from a real refusal. A read that fails says nothing: try again later."""
    try:
        already = _order_has_status(deps, code, target)
    except AuthenticationError as read_exc:
        return failure_outcome(read_exc)
    except (RateLimited, RetryableError) as read_exc:
        outcome = failure_outcome(read_exc)
        outcome.reason = (
            f"SkyHub answered {exc}; reading the order to see whether the step already "
            f"took effect failed ({read_exc}), so it is tried again later"
        )
        return outcome
    except PermanentError:
        already = False
    if already:
        return Outcome(
            state=DeliveryState.SENT,
            reason=f"order was already {target} in SkyHub ({exc.message})",
            order_status=(code, target),
        )
    return failure_outcome(exc)


def _order_has_status(deps: RelayDeps, code: str, status: str) -> bool:
    """After a 422: is the order already in the status we asked for (a repeat)? Raises the
    read's SkyHubError when the order could not be read."""
    order = unit.call(deps, lambda: deps.client.get_order(code))
    current = order.get("status") if isinstance(order, dict) else None
    if isinstance(current, dict):
        current = current.get("code")
    return current == status
