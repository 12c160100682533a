"""A Redis server of one's own on 127.0.0.1: Debian's ``redis-server`` started on a free port with
nothing persisted, stopped by its process id. What notebook 06 uses when no Redis is configured
(and the tests' fixture): :func:`local_redis` gives the URL of ``AIOPT_REDIS_URL`` when it is
set, else of a server it starts when the ``redis-server`` binary exists, else None (the control
channel then runs in process, and the page says so)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from aiopt_lib.core.net import free_port

__all__ = ["RedisServer", "free_port", "local_redis"]


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port`` (``url``), data in memory only."""

    def __init__(self, executable: Path, workdir: Path, port: int | None = None) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.executable),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--protected-mode", "yes",
        ]  # fmt: skip
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start on {self.port}: {tail}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server by its process id (SIGTERM, then SIGKILL)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def client(self) -> redis.Redis:
        """A client of this server (decoded responses)."""
        return redis.Redis.from_url(self.url, decode_responses=True)


@contextlib.contextmanager
def local_redis(environ: dict[str, str] | None = None) -> Iterator[tuple[str | None, str]]:
    """``(url, how)``: ``AIOPT_REDIS_URL`` when set; else a ``redis-server`` started here for the
    duration of the block (stopped after it); else ``(None, why)``. ``how`` says which, in words
    a page can show."""
    env = os.environ if environ is None else environ
    if env.get("AIOPT_REDIS_URL"):
        yield env["AIOPT_REDIS_URL"], "the Redis server of AIOPT_REDIS_URL"
        return
    executable = shutil.which("redis-server")
    if executable is None:
        yield None, "no redis-server binary here: the control channel runs in process"
        return
    with tempfile.TemporaryDirectory(prefix="aiopt-redis-") as folder:
        server = RedisServer(Path(executable), Path(folder))
        server.start()
        try:
            yield server.url, f"a local redis-server started for this run on port {server.port}"
        finally:
            server.stop()
