"""dagster-postgres storages that say which setting to fix when the database refuses them at start.

dagster-postgres retries a failed connection a few times and then raises "too many retries for DB
connection", the server's own words buried in the traceback above it: a user starting `dagster dev` or
`dagster-daemon` learns neither which server was tried nor which environment variable is wrong. These
subclasses change nothing but that message. `deploy/dagster.postgres.yaml` names them; a process that
loads that instance therefore needs `ai_assets` installed (every process of this project does: one image).
A connection lost later, while the daemon runs, is retried by Dagster as before and is not touched here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import DagsterPostgresException

# postgres_db fields, in the order a message lists them, with what each one is.
FIELDS = {"hostname": "host", "port": "port", "username": "user", "password": "password", "db_name": "database"}

# Which fields can explain a server's (or libpq's) complaint; first match wins. The server says
# `database "x" does not exist` and `role "x" does not exist`: the quoted name tells the two apart.
CAUSES: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = [
    (("password authentication failed", "no password supplied", "password is required"),
     "the server refused the user name or password", ("username", "password")),
    (('database "',), "the database does not exist", ("db_name",)),
    (('role "',), "the user (role) does not exist", ("username",)),
    (("no pg_hba.conf entry",), "the server does not accept this user from this host",
     ("username", "hostname", "db_name")),
    (("connection refused", "could not translate host name", "name or service not known", "timeout expired",
      "no route to host", "network is unreachable", "could not connect"),
     "the server could not be reached", ("hostname", "port")),
]  # fmt: skip


class PostgresConnectionError(Exception):
    """The instance's PostgreSQL refused a connection at start; the message names the settings to check."""


def setting_sources(inst_data: ConfigurableClassData | None) -> dict[str, str]:
    """Per postgres_db field, where its value comes from as the user wrote it: `env DAGSTER_PG_HOST`,
    or `dagster.yaml` for a literal (whose value the message then shows, except a password)."""
    raw: Mapping[str, Any] = inst_data.config_dict if inst_data else {}
    if "postgres_url" in raw:
        source = raw["postgres_url"]
        where = f"env {source['env']}" if isinstance(source, Mapping) and "env" in source else "dagster.yaml"
        return dict.fromkeys(FIELDS, f"postgres_url ({where})")
    db = raw.get("postgres_db") or {}
    sources = {}
    for field in FIELDS:
        value = db.get(field)
        sources[field] = f"env {value['env']}" if isinstance(value, Mapping) and "env" in value else "dagster.yaml"
    return sources


def explain(error: BaseException, config_value: Mapping[str, Any], inst_data: ConfigurableClassData | None) -> str:
    """The message for a connection that failed at start: server tried, the likely cause, the settings."""
    root: BaseException = error
    while root.__cause__ is not None:
        root = root.__cause__
    said = " ".join(str(getattr(root, "orig", None) or root).split())
    db = config_value.get("postgres_db") or {}
    target = (
        f"{db.get('hostname')}:{db.get('port')}, database {db.get('db_name')!r}, user {db.get('username')!r}"
        if db
        else "the server of postgres_url"
    )
    lowered = said.lower()
    cause, fields = "the connection failed", tuple(FIELDS)
    for needles, text, candidates in CAUSES:
        if any(needle in lowered for needle in needles):
            cause, fields = text, candidates
            break
    sources = setting_sources(inst_data)
    settings = ", ".join(f"{FIELDS[f]} ({sources[f]})" for f in fields)
    return (
        f"Dagster instance storage: cannot connect to PostgreSQL at {target}: {cause}. Check {settings}. "
        f"Server said: {said}"
    )


class _ExplainsConnectionErrors:
    """Mixin: the storage's own `from_config_value`, with a connection failure re-raised as
    PostgresConnectionError (the original stays chained below it)."""

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]) -> Any:
        try:
            return super().from_config_value(inst_data, config_value)  # type: ignore[misc]
        except DagsterPostgresException as exc:
            raise PostgresConnectionError(explain(exc, config_value, inst_data)) from exc


class RunStorage(_ExplainsConnectionErrors, PostgresRunStorage):
    """dagster_postgres.PostgresRunStorage; at start, a connection failure names the settings to fix."""


class EventLogStorage(_ExplainsConnectionErrors, PostgresEventLogStorage):
    """dagster_postgres.PostgresEventLogStorage; at start, a connection failure names the settings to fix."""


class ScheduleStorage(_ExplainsConnectionErrors, PostgresScheduleStorage):
    """dagster_postgres.PostgresScheduleStorage; at start, a connection failure names the settings to fix."""
