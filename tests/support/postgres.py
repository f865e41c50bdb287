"""A real PostgreSQL server for the tests: started once per test session in a temporary
directory, listening on 127.0.0.1 only (its unix socket stays in that directory), and
thrown away at the end. Each test gets a fresh database of its own (``fresh_database``).

Debian's ``postgresql`` packages provide the binaries (``tests/setup.sh`` installs them when
missing). As root, the server runs as the ``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "remixer"


def _bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL is not installed: run tests/setup.sh "
                       "(apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    port: int
    directory: Path
    _names: Iterator[int]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        subprocess.run(
            [str(_bindir() / "psql"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", SUPERUSER, "-d", "postgres", "-c", f"CREATE DATABASE {name}"],
            check=True, capture_output=True, timeout=60)
        return self.url(name)


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    bindir = _bindir()
    directory = Path(tempfile.mkdtemp(prefix="remixer-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER,
                                    "--auth=trust", "-E", "UTF8", "--no-sync"]),
                   check=True, capture_output=True, timeout=180, env=env)
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} "
               f"-c unix_socket_directories={directory} -c fsync=off "
               f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
    subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", options,
                                    "-l", str(directory / "server.log"), "-w", "-t", "120",
                                    "start"]),
                   check=True, capture_output=True, timeout=180, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p",
                                    str(port)], capture_output=True)
            if ready.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        yield PostgresServer(port, directory, itertools.count(1))
    finally:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m",
                                        "immediate", "-w", "stop"]),
                       capture_output=True, timeout=120, env=env)
        shutil.rmtree(directory, ignore_errors=True)
