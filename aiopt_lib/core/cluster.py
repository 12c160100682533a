"""Ray, the one way aiopt runs work on more than one machine (``aiopt batch --ray``, ``aiopt search
--ray``): :func:`ray_session` connects to a cluster or starts Ray on this machine.

Without an address Ray starts locally for the duration of the command (all cores, or
``num_cpus``) and stops afterwards; with one (``auto`` for the cluster that ``ray start --head``
began on this machine, or ``ray://HOST:10001`` for Ray Client, or ``HOST:6379``) the tasks go to
that cluster, whose nodes must have aiopt installed and see the same storage paths
(``docs/scale.md``). A process that already called ``ray.init`` keeps its session.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from types import ModuleType

from aiopt_lib.core.errors import ConfigError

__all__ = ["LOCAL", "ray_session"]

# the --ray value that means "start Ray on this machine"
LOCAL = "local"


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[ModuleType]:
    """The ``ray`` module, initialised for the block: joined to the cluster at ``address``, or a
    Ray started here when ``address`` is None, empty or ``"local"`` (``num_cpus`` caps it). A
    session this process already has is used and left running."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    # the tasks import aiopt_lib from this environment; Ray's own log lines stay in its log files
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    options: dict[str, object] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    local = not address or address == LOCAL
    try:
        if local:
            ray.init(num_cpus=num_cpus, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = "a local Ray" if local else f"the Ray cluster at {address!r}"
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(f"cannot start {where}: {reason}") from None
    try:
        yield ray
    finally:
        ray.shutdown()
