"""A throw-away PostgreSQL server for the tests: initdb and pg_ctl in a temporary folder,
listening on a unix socket only, with fsync off (it holds nothing worth keeping).

PostgreSQL refuses to run as root, so under root the server runs as ``nobody`` (through
``setpriv``); the folder is made in /tmp directly, since pytest's own temporary folders
are private to root.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

SERVER_OPTIONS = (
    "-c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=300 -c shared_buffers=64MB"
)


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's versioned folder."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(Path(folder) / "initdb", os.X_OK):
            return Path(folder)
    return None


class PgServer:
    """``start()`` a server, ``database()`` for a fresh, empty database's URL, ``stop()``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="sched-pg-"))
        self.data = self.root / "data"
        self.socket = self.root  # the socket file lives here
        self.log = self.root / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            os.chown(self.root, 65534, 65534)
            self._as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

    def _run(self, *args: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin"), "LC_ALL": "C"}
        done = subprocess.run(
            [*self._as_user, *args], env=env, capture_output=True, text=True, timeout=60
        )
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> PgServer:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "sched",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-o", f"{SERVER_OPTIONS} -c unix_socket_directories={self.socket}", "start",
        )  # fmt: skip
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://sched@/{database}?host={self.socket}"

    def database(self, prefix: str = "t") -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Partition:
    """A TCP port on 127.0.0.1 that forwards to the server's unix socket, for one host's
    processes. ``cut()`` stops moving bytes either way and holds what is in flight, as
    a network partition does (no error reaches either side: calls just wait); ``heal()``
    delivers it and goes on."""

    def __init__(self, server: PgServer) -> None:
        import socket
        import threading

        self._socket, self._threading = socket, threading
        [self.target] = glob.glob(str(server.socket / ".s.PGSQL.*[0-9]"))
        self.open = threading.Event()
        self.open.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.links: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        """``database_url`` (one of ``PgServer.database``'s) through this port."""
        name = database_url.split("/", 3)[3].split("?")[0]
        return f"postgresql://sched@127.0.0.1:{self.port}/{name}"

    def cut(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        self.open.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = self._socket.socket(self._socket.AF_UNIX)
            upstream.connect(self.target)
            self.links += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst) -> None:
        try:
            while True:
                self.open.wait()
                data = src.recv(65536)
                if not data:
                    break
                self.open.wait()  # read during a cut: held until it heals
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                try:
                    end.shutdown(self._socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.open.set()
        self.listener.close()
        for link in self.links:
            link.close()
