"""A throwaway PostgreSQL server on 127.0.0.1, for the tests of the production instance config and for a
developer who wants `dagster dev` on PostgreSQL storage.

    python -m ai_assets_tests.postgres start [--dir .data/postgres] [--port 55432]  # prints `export ...`
    python -m ai_assets_tests.postgres stop  [--dir .data/postgres]

It runs the Debian package's own binaries (`bash .ci/system-packages` installs them) from a data folder
of our own, never as a system service. Connections over TCP need a password (scram-sha-256), as a
production server does, so a wrong DAGSTER_PG_PASSWORD is refused here too; the administrator connects
over the Unix socket in the data folder, which trusts local users. initdb refuses to run as root: as
root every server command runs as the `postgres` user of the package, which then owns the folder.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path("/usr/lib/postgresql")
ADMIN = "postgres"
DAGSTER_USER = "dagster"


class PostgresNotInstalled(AssertionError):
    """No server binaries; an AssertionError so that a test using the server fails rather than skips."""


def bin_dir(root: Path = PACKAGE_ROOT) -> Path:
    """The newest installed server's binaries (Debian keeps one folder per major version)."""
    found = sorted(root.glob("*/bin/pg_ctl"), key=lambda p: _major(p.parent.parent.name))
    if not found:
        raise PostgresNotInstalled(
            f"PostgreSQL server binaries not found (no {root}/*/bin/pg_ctl): run `bash .ci/system-packages`"
        )
    return found[-1].parent


def _major(name: str) -> int:
    return int(name) if name.isdigit() else -1


def _as_server_user() -> list[str]:
    """The prefix that runs a server command: ourselves, or the package's `postgres` user when root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class PostgresServer:
    """One data folder and the server on `port`; the password of DAGSTER_USER is kept in the folder."""

    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @property
    def password(self) -> str:
        return (self.folder / "dagster_password").read_text().strip()

    def _run(self, args: list[str], what: str, timeout_s: float = 120) -> str:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()}\n{self.log_tail()}")
        return result.stdout

    def log_tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log yet)"
        return f"--- PostgreSQL log tail ({self.log}) ---\n{text[-chars:]}"

    def init(self) -> None:
        """initdb the data folder (once) and choose the dagster user's password."""
        if (self.data / "PG_VERSION").exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "dagster_password").write_text(secrets.token_hex(12))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(
            [*_as_server_user(), str(bin_dir() / "initdb"), "-D", str(self.data), "-U", ADMIN, "-E", "UTF8",
             "--auth-local=trust", "--auth-host=scram-sha-256"],
            "initdb",
        )  # fmt: skip

    def start(self, timeout_s: float = 60) -> None:
        """Start the server on 127.0.0.1:`port`, its Unix socket in the folder; returns once it accepts."""
        options = f"-p {self.port} -k {shlex.quote(str(self.folder))} -c listen_addresses=127.0.0.1"
        self._run(
            [*_as_server_user(), str(bin_dir() / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
             "-w", "-t", str(int(timeout_s)), "start"],
            f"starting PostgreSQL on port {self.port}", timeout_s + 30,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: sessions are cut, as when a database server goes away)."""
        if self.running():
            self._run([*_as_server_user(), str(bin_dir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                      "stopping PostgreSQL")  # fmt: skip

    def running(self) -> bool:
        status = subprocess.run([*_as_server_user(), str(bin_dir() / "pg_ctl"), "-D", str(self.data), "status"],
                                capture_output=True, timeout=30)  # fmt: skip
        return status.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the administrator over the Unix socket; rows as `a|b` lines."""
        return self._run(
            [str(bin_dir() / "psql"), "-h", str(self.folder), "-p", str(self.port), "-U", ADMIN, "-d", database,
             "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql],
            f"psql {sql!r}",
        )  # fmt: skip

    def create_database(self, name: str) -> None:
        """A database owned by DAGSTER_USER (the role is created once, with the folder's password)."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        if not self.psql(f"select 1 from pg_roles where rolname = '{DAGSTER_USER}'").strip():
            self.psql(f"create role {DAGSTER_USER} login password '{self.password}'")
        if not self.psql(f"select 1 from pg_database where datname = '{name}'").strip():
            self.psql(f"create database {name} owner {DAGSTER_USER}")

    def env(self, database: str) -> dict[str, str]:
        """The variables deploy/dagster.postgres.yaml reads, for `database` on this server."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": DAGSTER_USER,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": database,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ai_assets_tests.postgres", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=Path(".data/postgres"), help="data folder (default: %(default)s)")
    parser.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (default: the folder's last, else 55432)")
    parser.add_argument("--db", default="dagster", help="database for Dagster (default: %(default)s)")
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    port_file = folder / "port"
    try:
        if args.command == "stop":
            if port_file.exists():
                PostgresServer(folder, int(port_file.read_text())).stop()
            print(f"# PostgreSQL in {folder} stopped", file=sys.stderr)
            return 0
        last_port = int(port_file.read_text()) if port_file.exists() else None
        server = PostgresServer(folder, args.port or last_port or 55432)
        server.init()
        if server.running():
            # Already up: on the port it was started with, whatever --port says.
            server = PostgresServer(folder, last_port or server.port)
        else:
            server.start()
            port_file.write_text(str(server.port))
        server.create_database(args.db)
    except (PostgresNotInstalled, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 1
    stop = f"{parser.prog} stop --dir {args.dir}"
    print(f"# PostgreSQL on 127.0.0.1:{server.port}, data in {folder}; stop it with: {stop}", file=sys.stderr)
    for name, value in server.env(args.db).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
