"""``aiopt serve`` in its own process group for the tests: started on a free 127.0.0.1 port,
waited for until ``/health`` answers, stopped with SIGTERM and then SIGKILL to its group."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from aiopt_lib.core.net import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command (it stops its workers), then SIGKILL to whatever of its
    process group is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@contextlib.contextmanager
def serve_process(arguments: Sequence[str], log: Path, *, timeout: float = 90) -> Iterator[Server]:
    """``python -m aiopt_lib.serve ARGUMENTS --port <free>``, healthy, stopped at the end."""
    port = free_port()
    command = [sys.executable, "-m", "aiopt_lib.serve", *arguments, "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}): {log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not become healthy: {log.read_text()}")
            time.sleep(0.3)
        yield Server(url, process, log)
    finally:
        stop_group(process)
