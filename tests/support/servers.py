"""Real Redis and PostgreSQL servers for the tests, started on free loopback ports in
temporary directories and stopped at the end. The test command (scripts/test.sh)
installs the OS packages; here we only find and run the binaries."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Return once `proc` listens on `port` on 127.0.0.1; RuntimeError if it exits first
    or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout}s")


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    pid: int = 0


@contextmanager
def redis_server(*settings: str, port: int | None = None,
                 directory: str | None = None) -> Iterator[Server]:
    """A throwaway Redis without persistence; `settings` (e.g. "--appendonly", "yes")
    come last and win. With `port` and `directory` a test can start it again where it
    was (its files kept) after killing it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: run scripts/test.sh, which installs it")
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="tg-redis-") as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory or tmp, "--protected-mode", "yes",
             *settings],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, proc)
            yield Server(url=f"redis://127.0.0.1:{port}/0", port=port, pid=proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"{name} not found: run scripts/test.sh, which installs PostgreSQL")
    return candidates[-1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run it as Debian's `postgres` system user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class Postgres:
    """A throwaway PostgreSQL cluster on a free port; `restart()` stops it (fast) and
    starts it again on the same files and port, as an operator's restart does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="tg-pg-")
        self.data = os.path.join(self.tmp, "data")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            shutil.chown(self.tmp, user="postgres", group="postgres")
        subprocess.run(
            _as_postgres([_pg_bin("initdb"), "-D", self.data, "-U", "postgres", "-A",
                          "trust", "--no-sync", "-E", "UTF8"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            _as_postgres([_pg_bin("postgres"), "-D", self.data, "-p", str(self.port), "-h",
                          "127.0.0.1", "-k", self.tmp, "-c", "fsync=off", "-c",
                          "synchronous_commit=off", "-c", "full_page_writes=off"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)
        # Accepting TCP is not the same as accepting logins: wait for readiness.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ok = subprocess.run(
                [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            ).returncode == 0
            if ok:
                break
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            _fast_shutdown(self.proc, self.data)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    cluster = Postgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.tmp, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[Server]:
    with postgres_cluster() as cluster:
        yield Server(url=cluster.url, port=cluster.port)


def _fast_shutdown(proc: subprocess.Popen[bytes], data: str) -> None:
    """SIGINT to the postmaster itself: PostgreSQL's fast shutdown (clients disconnected, a
    clean stop in milliseconds). SIGTERM asks for a smart one that waits for every client,
    and `runuser` forwards only SIGTERM, killing its child two seconds later."""
    try:
        with open(os.path.join(data, "postmaster.pid")) as pid_file:
            os.kill(int(pid_file.readline()), signal.SIGINT)
        proc.wait(timeout=20)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait(timeout=20)
