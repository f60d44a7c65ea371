"""A throwaway PostgreSQL cluster for the state-backend tests: `initdb` and `pg_ctl` (Debian's
postgresql package, installed by scripts/test.sh when missing) in a temporary directory, on a
free port, run as the `postgres` user when the tests run as root."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: scripts/test.sh installs Debian's postgresql")
    return Path(found[-1]).parent


class PostgresCluster:
    """`fsync=False` (the tests' default) skips PostgreSQL's fsyncs; benchmarks keep them."""

    def __init__(self, fsync: bool = False):
        self.fsync = fsync
        self.bin = postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="laser-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_owner = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "laser", "--no-sync",
                  "--no-instructions", "-E", "UTF8")
        self.url = f"postgres://laser:unused@127.0.0.1:{self.port}/postgres"
        self.start()

    def _run(self, *args) -> str:
        return subprocess.run([*self.as_owner, *map(str, args)], check=True, capture_output=True,
                              text=True).stdout

    def start(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.dir / "postgres.log", "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync={'on' if self.fsync else 'off'}",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def sql(self, statement: str) -> str:
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "laser", "-d", "postgres",
                               "-Atc", statement], check=True, capture_output=True, text=True).stdout.strip()

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
