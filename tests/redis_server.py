"""A real Redis server for the tests: Debian's ``redis-server``, installed with ``apt-get`` when it
is missing (as root, as the browser is); the server itself is the library's
:class:`~aiopt_lib.live.localredis.RedisServer` (a free 127.0.0.1 port, nothing persisted,
stopped by its process id, restartable on the same port)."""

from __future__ import annotations

import shutil
from pathlib import Path

from browser_check import apt_install

from aiopt_lib.live.localredis import RedisServer, free_port

__all__ = ["RedisServer", "ensure_redis_server", "free_port"]


def ensure_redis_server(*, timeout: float = 600) -> Path | None:
    """The ``redis-server`` executable, installing Debian's ``redis-server`` package first when
    there is none and we run as root with ``apt-get`` (``apt-get update`` tried once if the
    package lists are stale). None when it is still missing afterwards."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    apt_install("redis-server", timeout=timeout)
    found = shutil.which("redis-server")
    return Path(found) if found else None
