"""Loopback networking helpers shared by the local servers aiopt starts (Redis, PostgreSQL, the
model server, the distributed launcher's rendezvous)."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the operating system's choice; another process may take
    it before it is used, so a server that fails to bind should be started on a new one)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
