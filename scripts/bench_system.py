"""Host readings for the benchmark: machine facts, memory, CPU time, disk use.

Also starts a throwaway PostgreSQL cluster for ``bench.py --postgres``.
Linux only: it reads ``/proc``.
"""

from __future__ import annotations

import glob
import os
import platform
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "score-webhooks",
    "aiohttp",
    "aiosqlite",
    "asyncpg",
    "cryptography",
    "marshmallow",
    "standardwebhooks",
)
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def machine_facts() -> dict[str, Any]:
    """Return the CPU, memory, OS, Python and package versions of this host."""
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": versions,
    }


def _meminfo_kib(field: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float | None:
    """Return the resident set size (VmRSS) of a process in MiB, or None if gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _busy_cpu_s() -> float:
    """Return the CPU time all cores spent outside idle and iowait since boot."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS_PER_S


def _process_table() -> dict[int, tuple[int, float]]:
    """Map each pid to its parent pid and the CPU seconds it has used."""
    table = {}
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path) as stat:
                text = stat.read()
        except OSError:
            continue
        # The command name is in brackets and may hold spaces.
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(path.split("/")[2])
        table[pid] = (
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S,
        )
    return table


class CpuAccount:
    """Splits the host's busy CPU time into this benchmark's and everyone else's.

    The benchmark's share is the CPU time of the process trees under
    ``roots``: this process and, with ``--postgres``, the cluster's server.
    Everything else busy on the host is other load, such as other people's
    tests. A process that ended between two readings
    is counted as other load, so the split errs towards reporting a
    disturbance.
    """

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self._start_busy = 0.0
        self._start_ours: dict[int, float] = {}

    def _ours(self) -> dict[int, float]:
        table = _process_table()
        children: dict[int, list[int]] = {}
        for pid, (parent, _) in table.items():
            children.setdefault(parent, []).append(pid)
        found: dict[int, float] = {}
        stack = [root for root in self.roots if root in table]
        while stack:
            pid = stack.pop()
            found[pid] = table[pid][1]
            stack.extend(children.get(pid, []))
        return found

    def start(self) -> None:
        self._start_busy = _busy_cpu_s()
        self._start_ours = self._ours()

    def stop(self, elapsed_s: float) -> dict[str, float]:
        """Return the CPU seconds used since ``start`` by us and by others."""
        busy = _busy_cpu_s() - self._start_busy
        ours = sum(
            cpu_s - self._start_ours.get(pid, 0.0)
            for pid, cpu_s in self._ours().items()
        )
        other = max(0.0, busy - ours)
        cores = os.cpu_count() or 1
        return {
            "bench_cpu_s": round(ours, 2),
            "other_cpu_s": round(other, 2),
            "other_cores": round(other / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "load_average_1m": round(os.getloadavg()[0], 2),
            "cores": cores,
        }


def sqlite_bytes(path: Path) -> int:
    """Return the size on disk of a SQLite database with its WAL and shared memory."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            total += candidate.stat().st_size
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_postgres_binaries() -> Path | None:
    """Return the folder holding initdb and pg_ctl, or None."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(folder, "initdb")):
            return Path(folder)
    return None


class PostgresCluster:
    """A PostgreSQL cluster in a temp folder, listening on 127.0.0.1 only.

    Unlike the test suite's cluster it keeps ``fsync`` and synchronous
    commits on, so a commit is durable as in production and the figures
    include that cost. PostgreSQL does not run as root, so under root the
    server runs as ``postgres`` (or ``nobody`` if that user is missing).
    """

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="webhooks-bench-pg-"))
        self.data = self.folder / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                self.user = "nobody"
            account = pwd.getpwnam(self.user)
            os.chown(self.folder, account.pw_uid, account.pw_gid)

    def _run(self, *args: str) -> None:
        command = [str(self.binaries / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder)

    def start(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.folder} -c max_connections=100 "
            "-c shared_buffers=256MB"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "start",
        )

    def server_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
