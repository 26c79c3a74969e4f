"""Faults: which request gets one (scripted first, then random draws), and what each one does.

======================  ==========================================================  =========
fault                   what the client sees                                        applied?
======================  ==========================================================  =========
``500`` / ``503``       a JSON error                                                no
``502``                 nginx's HTML "Bad Gateway" page                             no
``429``                 a rate-limit answer                                         no
``timeout``             nothing for ``hang_seconds``, then the socket closes        no
``drop``                the socket closes at once                                   no
``lost``                the socket closes without a byte (random: writes only)      yes
``applied_hang``        nothing for ``hang_seconds``, then the socket closes        yes
======================  ==========================================================  =========

Random faults are drawn from ``Random(seed)`` only for the rates in use, so a seed reproduces
the same faults for the same traffic.
"""

from __future__ import annotations

from collections.abc import Callable

from skysync.emulator.config import SandboxConfig
from skysync.emulator.limits import too_many_requests
from skysync.emulator.replies import Reply, error_reply
from skysync.emulator.state import EmulatorState

FAULTS = frozenset({"500", "502", "503", "timeout", "lost", "429", "drop", "applied_hang"})

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_BAD_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def check_scripted_fault(method: str, path_prefix: str, fault: str, count: int) -> None:
    """ValueError for an unknown fault, a count that is not a positive integer, or non-strings."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; use one of {sorted(FAULTS)}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError("count must be a positive integer")
    if not isinstance(method, str) or not isinstance(path_prefix, str):
        raise ValueError("method and path_prefix must be strings")


def pick_fault_locked(state: EmulatorState, method: str, decoded_path: str) -> str | None:
    """The fault for this request: the first matching scripted one (used up), else a draw."""
    for entry in state.scripted:
        wanted_method, prefix, fault, _count = entry
        if wanted_method in ("*", method) and decoded_path.startswith(prefix):
            entry[3] -= 1
            if entry[3] <= 0:
                state.scripted.remove(entry)
            found: str = fault
            return found
    cfg = state.config
    rng = state.rng
    # Draw only for rates in use, so a seed reproduces the same faults for the same traffic.
    if cfg.fail_rate > 0 and rng.random() < cfg.fail_rate:
        return rng.choice(("500", "502", "503"))
    if cfg.timeout_rate > 0 and rng.random() < cfg.timeout_rate:
        return "timeout"
    if (
        method in _WRITE_METHODS
        and cfg.lost_answer_rate > 0
        and rng.random() < cfg.lost_answer_rate
    ):
        return "lost"
    return None


def _hang(config: SandboxConfig) -> Reply:
    return Reply(0, action="hang", hang_seconds=config.hang_seconds)


def with_fault(fault: str | None, config: SandboxConfig, handle: Callable[[], Reply]) -> Reply:
    """The reply under `fault`: instead of handling (not applied), or after it (applied)."""
    if fault in ("500", "503"):
        return error_reply(
            int(fault), "Internal Server Error" if fault == "500" else "Service Unavailable"
        )
    if fault == "502":
        return Reply(502, _BAD_GATEWAY_PAGE, "text/html")
    if fault == "429":
        return too_many_requests(config)
    if fault == "timeout":
        return _hang(config)
    if fault == "drop":
        return Reply(0, action="drop")
    reply = handle()
    if fault == "lost":
        return Reply(0, action="drop")
    if fault == "applied_hang":
        return _hang(config)
    return reply
