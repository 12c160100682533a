"""A PostgreSQL server of one's own on 127.0.0.1: a throwaway cluster (``initdb`` into a temporary
folder), ``postgres`` started on a free port, stopped by its process id, the folder removed.

What the tests and ``benchmarks/bench_search.py`` run Optuna's shared storage against, and a quick
way to try ``aiopt search --storage postgresql://...`` on a laptop (:func:`local_postgres`). A
team's server is set up once by its administrator instead (``docs/scale.md``).

The binaries are Debian's (package ``postgresql``: ``/usr/lib/postgresql/<version>/bin``) or any
``initdb``/``postgres`` on ``PATH``. PostgreSQL refuses to run as root, so as root the cluster
belongs to the ``postgres`` system user (which the Debian package creates) and the server runs as
that user."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from aiopt_lib.core.net import free_port

__all__ = ["PostgresServer", "find_postgres_bin", "local_postgres"]


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (the newest Debian version first, then
    ``PATH``), or None when PostgreSQL is not installed."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).resolve().parent
    return None


class PostgresServer:
    """One throwaway PostgreSQL cluster on 127.0.0.1:``port``; ``url(database)`` connects as the
    superuser ``aiopt`` (trust authentication, loopback only, no Unix socket).

    ``durable=False`` (the tests) turns off ``fsync`` and ``synchronous_commit``; the benchmark
    keeps the server's defaults so its figures are a real server's."""

    user = "aiopt"

    def __init__(
        self, bindir: Path, workdir: Path, port: int | None = None, *, durable: bool = True
    ) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.port = port or free_port()
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None
        self._owner = _cluster_owner()

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """A SQLAlchemy URL of ``database`` on this server."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self) -> dict[str, object]:
        if self._owner is None:
            return {}
        uid, gid = self._owner
        return {"user": uid, "group": gid, "extra_groups": []}

    def init(self) -> None:
        """``initdb`` the cluster (once; an existing cluster in ``workdir`` is kept)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._owner is not None:
            os.chown(self.workdir, *self._owner)
        if (self.datadir / "PG_VERSION").exists():
            return
        argv = [
            str(self.bindir / "initdb"),
            "-D", str(self.datadir),
            "-U", self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False, **self._as_owner())
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {(done.stderr or done.stdout)[-2000:]}")

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (initialising the cluster first) and wait until it accepts a login."""
        self.init()
        argv = [
            str(self.bindir / "postgres"),
            "-D", str(self.datadir),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-k", "",  # no Unix socket: nothing outside the loopback port
            "-c", "max_connections=200",
        ]  # fmt: skip
        if not self.durable:
            argv += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        log_path = self.workdir / "postgres.log"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_owner(),  # type: ignore[arg-type]
            )
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"postgres did not start on port {self.port}: {tail}")
            time.sleep(0.1)

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.port,
                user=self.user,
                dbname="postgres",
                connect_timeout=2,
            ):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if missing) and return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists is None:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        """Stop the server by its process id: SIGINT is PostgreSQL's fast shutdown (open
        connections are closed, not waited for); SIGKILL if it has not gone after 15 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _cluster_owner() -> tuple[int, int] | None:
    """``(uid, gid)`` the cluster must belong to: None when we are not root; else the ``postgres``
    system user's."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "PostgreSQL does not run as root and there is no 'postgres' user: install Debian's "
            "postgresql package (it creates the user) or run as an ordinary user"
        ) from None
    return entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def local_postgres(database: str = "aiopt", *, durable: bool = True) -> Iterator[str]:
    """The URL of ``database`` on a throwaway local PostgreSQL server, for the block's duration
    (the server is stopped and its cluster deleted afterwards)."""
    bindir = find_postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    # not under a root-only temporary folder: the server runs as the postgres user
    folder = Path(tempfile.mkdtemp(prefix="aiopt-pg-"))
    server = PostgresServer(bindir, folder, durable=durable)
    try:
        server.start()
        yield server.create_database(database)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
