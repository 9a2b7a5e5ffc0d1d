"""Run ownership: the one rule every store applies to a run's lease.

A run is owned by one engine at a time (``host:pid:token``). Another owner
may take it when nobody holds it, when the holder's lease went stale, or at
once when the holder is a process of this host that no longer exists (or an
engine of this process that ended without releasing).
"""

from __future__ import annotations

import os
import socket
import sys

from asyncbatch._errors import RunOwned

__all__ = ["check_lease", "owner_is_gone", "owning_here"]

_OWNERS_HERE: set[str] = set()
"""Owners of this process whose engine is still running (see `owning_here`)."""


def owning_here(owner: str, running: bool) -> None:
    """Note that an engine of THIS process starts (or stops) running as ``owner``.

    An owner of this process that is not running any more (its engine ended
    without releasing the lease: the store failed, say) is gone, exactly like
    a killed process, and its run is taken over at once.
    """
    if running:
        _OWNERS_HERE.add(owner)
    else:
        _OWNERS_HERE.discard(owner)


def owner_is_gone(owner: str) -> bool:
    """Whether ``owner`` (``host:pid:...``) is of THIS host and no longer runs.

    Such an owner (killed, crashed, even not yet reaped by its parent) is
    taken over at once rather than after its lease expires. An owner on
    another host, or whose pid answers (or belongs to another user), counts
    as alive; one of this very process as long as its engine runs
    (`owning_here`).
    """
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return owner not in _OWNERS_HERE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, someone else's
        return False
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """Whether ``pid`` ended and only waits for its parent to reap it (Linux's /proc):
    a killed owner whose shell or supervisor has not called wait() yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def check_lease(
    run_id: str,
    *,
    holder: str | None,
    since: float | None,
    heartbeat_at: float | None,
    owner: str,
    lease: float,
    now: float,
) -> None:
    """Raise `RunOwned` unless ``owner`` may take the run (the rule every store applies).

    The run may be taken when nobody holds it, ``owner`` already does, the
    holder's last heartbeat is older than ``lease`` seconds, or the holder is
    a process of this host that is gone (`owner_is_gone`).
    """
    if holder is None or holder == owner:
        return
    if heartbeat_at is None or heartbeat_at <= now - lease:
        return
    if owner_is_gone(holder):
        return
    raise RunOwned(run_id, holder, since)


