"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package, installed with
``apt-get`` when it is missing (as root, as the browser and Redis are); the server itself is the
library's :class:`~aiopt_lib.strategy.localpg.PostgresServer` (a throwaway cluster on a free
127.0.0.1 port, stopped by its process id)."""

from __future__ import annotations

from pathlib import Path

from browser_check import apt_install

from aiopt_lib.strategy.localpg import PostgresServer, find_postgres_bin

__all__ = ["PostgresServer", "ensure_postgres_bin"]


def ensure_postgres_bin(*, timeout: float = 900) -> Path | None:
    """The folder of ``initdb`` and ``postgres``, installing Debian's ``postgresql`` package
    first when there is none and we run as root with ``apt-get``. None when still missing."""
    found = find_postgres_bin()
    if found is not None:
        return found
    apt_install("postgresql", timeout=timeout)
    return find_postgres_bin()
