"""A throwaway PostgreSQL server for the tests: a fresh cluster from the installed server binaries (initdb, pg_ctl),
on a free loopback port, trust authentication and no fsync, removed when the session ends.

`PostgresServer.start()` finds the binaries (`FINRAG_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`) and
skips the tests that need it when there are none, or fails them when FINRAG_REQUIRE_POSTGRES=1 (CI). As root the
server runs as the `postgres` OS user: initdb refuses root. `create_database()` gives each test its own database.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa

REQUIRE = "FINRAG_REQUIRE_POSTGRES"
OS_USER = "postgres"
SETTINGS = {  # durability is not wanted from a throwaway cluster: speed is
    "listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    "max_connections": "200",
}


def server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    if os.environ.get("FINRAG_PG_BIN"):
        return Path(os.environ["FINRAG_PG_BIN"])
    versions = {p.parent: int(p.parts[-3]) for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
                if p.parts[-3].isdigit()}
    return max(versions, key=versions.__getitem__) if versions else None


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it where PostgreSQL is required."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason}, and {REQUIRE}=1 requires PostgreSQL: install it (`make postgres`, or "
                    "apt-get install postgresql) or point FINRAG_PG_BIN at its bin folder", pytrace=False)
    pytest.skip(f"{reason} (install postgresql to run the PostgreSQL tests)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self, bin_dir: Path, root: Path, as_user: list[str]) -> None:
        self.bin_dir, self.root, self.as_user = bin_dir, root, as_user
        self.data, self.log = root / "data", root / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._admin: sa.Engine | None = None

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = server_binaries()
        if bin_dir is None or not (bin_dir / "initdb").exists():
            unavailable(f"no PostgreSQL server binaries ({bin_dir or '/usr/lib/postgresql/*/bin'})")
        as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None or subprocess.run(["id", OS_USER], capture_output=True).returncode:
                unavailable(f"running as root without a {OS_USER!r} OS user to run the server as")
            as_user = ["runuser", "-u", OS_USER, "--"]
        root = Path(tempfile.mkdtemp(prefix="finrag-pg-"))  # not under pytest's tmp: it is private to root
        if as_user:
            shutil.chown(root, OS_USER)
        server = cls(bin_dir, root, as_user)
        try:
            server._init()
            server._run_server()
        except BaseException:
            server.stop()
            raise
        return server

    def _pg(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin_dir / tool), *args], capture_output=True, text=True,
                              timeout=120)
        if done.returncode:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}\n{log}")

    def _init(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale",
                 "--no-sync")

    def _run_server(self) -> None:
        for attempt in range(3):  # another process may take the free port before the server binds it
            self.port = _free_port()
            options = " ".join(f"-c {k}={v}" for k, v in {**SETTINGS, "port": self.port}.items())
            try:
                self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                         "-o", f"{options} -k {self.root}")
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def admin(self) -> sa.Engine:
        if self._admin is None:
            self._admin = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        return self._admin

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"test_{next(self._names)}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = sa.make_url(url).database
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        shutil.rmtree(self.root, ignore_errors=True)
