"""pytest plugin for walwatch (entry point ``pytest11``: loaded once the wheel is installed).

Fixtures:

* ``walwatch_dsn`` (session): the server to use: ``--walwatch-dsn`` or ``WALWATCH_DSN``, else a
  throwaway cluster (:func:`walwatch.scratch_cluster`) started once for the session, when the
  first test needs it (a suite that uses no walwatch fixture starts nothing). Under pytest-xdist
  the first worker to need it starts it and the others join it (each in its own database). A
  watchdog process stops it and removes its directory once the session's pytest process has
  exited, however it exited (SIGKILL included).
* ``walwatch_schema`` (session, override it): SQL run once into a template database (or a
  callable taking the template's DSN); every worker's database is created from that template.
* ``walwatch_database`` (session, one per xdist worker): the DSN of a database
  ``<prefix>_<run>_<worker id>`` (prefix: ini ``walwatch_database_prefix``, default
  ``walwatch``; run: a token of this pytest session, so two sessions on one server never touch
  each other's databases; worker id ``gw0``, ``gw1``, ... or ``main``) made from the template,
  so parallel workers never see each other's changes; dropped at the end.
* ``wal`` (function): a :func:`walwatch.watch` on ``walwatch_database`` for the test, stopped at
  teardown. Tables from ``@pytest.mark.walwatch(tables=[...])`` (other keyword arguments of the
  marker go to ``walwatch.watch``), else the ini option ``walwatch_tables``, else every table.
  Its marks are named after the test (``<nodeid>::<name>``). When the test also requests
  ``walwatch_proxy``, the watch merges that proxy's events.
* ``walwatch_proxy`` (function): a fault proxy in front of ``walwatch_database``; the
  application under test connects with ``walwatch_proxy.dsn()``.

A failed walwatch assertion is reported as its report (the nearest miss, the last events, why
the event may be missing), not as a traceback into the extension.

Watching every table needs a superuser (a publication FOR ALL TABLES): the throwaway cluster's
role ``walwatch`` is made one; with your own server, give ``tables`` or a superuser DSN.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import walwatch

#: How long dropping a database may keep failing because a slot of a stopping watch still
#: holds it (a walsender exits a moment after its connection is closed).
DROP_DEADLINE_SECONDS = 15.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("walwatch")
    group.addoption(
        "--walwatch-dsn",
        dest="walwatch_dsn",
        default=None,
        help="PostgreSQL server for walwatch's fixtures (wal_level=logical; a role that may "
        "CREATE DATABASE and replicate). Default: $WALWATCH_DSN, else a throwaway cluster.",
    )
    parser.addini(
        "walwatch_tables",
        type="linelist",
        default=[],
        help="tables the `wal` fixture watches when a test has no walwatch marker (default: all)",
    )
    parser.addini(
        "walwatch_database_prefix",
        default="walwatch",
        help="per-worker databases are named <prefix>_<worker id>",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "walwatch(tables=None, ops=None, ...): what the `wal` fixture watches in this test "
        "(keyword arguments of walwatch.watch)",
    )


def run_token(config: pytest.Config) -> str:
    """A token of this pytest session, the same in each of its xdist workers."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get("testrunuid"):
        return str(workerinput["testrunuid"])[:8]
    token = getattr(config, "_walwatch_run", None)
    if token is None:
        token = uuid.uuid4().hex[:8]
        config._walwatch_run = token  # type: ignore[attr-defined]
    return token


def worker_id(config: pytest.Config) -> str:
    """``gw0``, ``gw1``, ... under pytest-xdist, else ``main``."""
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else "main"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


#: A watchdog's shell script: once the process $0 is gone, stop the postmaster of data dir $1
#: (SIGQUIT: immediate shutdown) and remove the cluster's directory $2.
_WATCHDOG = """
while kill -0 "$0" 2>/dev/null; do sleep 0.5; done
pm=$(head -n 1 "$1/postmaster.pid" 2>/dev/null)
if [ -n "$pm" ]; then
  kill -QUIT "$pm" 2>/dev/null
  i=0
  while kill -0 "$pm" 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
fi
rm -rf "$2"
"""


def _start_cluster(owner: int) -> tuple[walwatch.ScratchCluster, subprocess.Popen[bytes]]:
    """A throwaway cluster, and a watchdog that stops it and removes its directory once the
    process `owner` has exited (a SIGKILLed pytest runs no finaliser)."""
    cluster = walwatch.scratch_cluster()
    watchdog = subprocess.Popen(
        ["sh", "-c", _WATCHDOG, str(owner), str(cluster.data_dir), str(cluster.root_dir)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Watching every table needs a publication FOR ALL TABLES, which needs a superuser.
    cluster.psql("postgres", "ALTER ROLE walwatch SUPERUSER")
    return cluster, watchdog


def _explicit_dsn(config: pytest.Config) -> str | None:
    return config.getoption("walwatch_dsn") or os.environ.get("WALWATCH_DSN") or None


def _shared_cluster_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Under xdist: the session's one cluster, started by the first worker that needs it.

    The workers' base temp dirs share a parent made for this session (the pytest-xdist docs'
    way to share a session resource); a lock there makes one worker start the cluster and the
    rest read its DSN. The cluster is detached from the worker that started it and left to a
    watchdog on the controller (every worker's parent), which outlives every worker.
    """
    root = tmp_path_factory.getbasetemp().parent
    with open(root / "walwatch-cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = root / "walwatch-cluster.json"
        if state.exists():
            return json.loads(state.read_text())["dsn"]
        cluster, _ = _start_cluster(os.getppid())
        dsn = cluster.dsn("postgres")
        cluster.detach()
        state.write_text(json.dumps({"dsn": dsn}))
        return dsn


@pytest.fixture(scope="session")
def walwatch_dsn(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The server's DSN (see the module docs)."""
    dsn = _explicit_dsn(pytestconfig)
    if dsn:
        yield dsn
        return
    if getattr(pytestconfig, "workerinput", None) is not None:
        yield _shared_cluster_dsn(tmp_path_factory)
        return
    cluster, watchdog = _start_cluster(os.getpid())
    try:
        yield cluster.dsn("postgres")
    finally:
        try:
            cluster.stop()
        finally:
            watchdog.kill()
            watchdog.wait()


@pytest.fixture(scope="session")
def walwatch_schema() -> str | Callable[[str], Any] | None:
    """Override to give every worker's database a schema: SQL, or a callable taking a DSN."""
    return None


def _schema_key(schema: str | Callable[[str], Any]) -> str:
    if isinstance(schema, str):
        return schema
    try:
        return inspect.getsource(schema)
    except (OSError, TypeError):
        return getattr(schema, "__qualname__", repr(schema))


def _database_exists(dsn: str, name: str) -> bool:
    rows = walwatch.execute(
        dsn, f"SELECT 1 FROM pg_database WHERE datname = '{name.replace(chr(39), chr(39) * 2)}'"
    )
    return bool(rows)


def drop_database(dsn: str, name: str) -> None:
    """Drops `name` (terminating its sessions), retrying while a stopping watch's slot holds it."""
    deadline = time.monotonic() + DROP_DEADLINE_SECONDS
    while True:
        try:
            walwatch.execute(dsn, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            return
        except walwatch.Error as e:
            if "replication slot" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def ensure_template(dsn: str, schema: str | Callable[[str], Any]) -> str:
    """The template database holding `schema`, made once per schema (named by its hash).

    It is built under a private name and renamed when complete, so a concurrent worker either
    sees no template or a finished one; the loser of a race drops its copy.
    """
    digest = hashlib.sha256(_schema_key(schema).encode()).hexdigest()[:16]
    name = f"walwatch_template_{digest}"
    if _database_exists(dsn, name):
        return name
    building = f"{name}_{uuid.uuid4().hex[:8]}"
    walwatch.execute(dsn, f"CREATE DATABASE {quote_ident(building)}")
    try:
        target = walwatch.dsn_with(dsn, dbname=building)
        if isinstance(schema, str):
            walwatch.execute(target, schema)
        else:
            schema(target)
        walwatch.execute(
            dsn, f"ALTER DATABASE {quote_ident(building)} RENAME TO {quote_ident(name)}"
        )
    except Exception:
        drop_database(dsn, building)
        if _database_exists(dsn, name):
            return name
        raise
    return name


@pytest.fixture(scope="session")
def walwatch_template(walwatch_dsn: str, walwatch_schema: Any) -> str | None:
    """The name of the template database (None without a schema)."""
    if walwatch_schema is None:
        return None
    return ensure_template(walwatch_dsn, walwatch_schema)


@pytest.fixture(scope="session")
def walwatch_database(
    pytestconfig: pytest.Config, walwatch_dsn: str, walwatch_template: str | None
) -> Iterator[str]:
    """The DSN of this worker's own database, fresh from the template."""
    prefix = pytestconfig.getini("walwatch_database_prefix") or "walwatch"
    name = f"{prefix}_{run_token(pytestconfig)}_{worker_id(pytestconfig)}"
    drop_database(walwatch_dsn, name)
    template = f" TEMPLATE {quote_ident(walwatch_template)}" if walwatch_template else ""
    walwatch.execute(walwatch_dsn, f"CREATE DATABASE {quote_ident(name)}{template}")
    dsn = walwatch.dsn_with(walwatch_dsn, dbname=name)
    _every_table_publication(pytestconfig, dsn)
    try:
        yield dsn
    finally:
        drop_database(walwatch_dsn, name)


#: The publication of every table made once in each worker's database, for the `wal` watches
#: that watch every table: each then skips creating (and dropping) one of its own.
EVERY_TABLE_PUBLICATION = "walwatch_every_table"


def _every_table_publication(config: pytest.Config, dsn: str) -> None:
    """Creates EVERY_TABLE_PUBLICATION in `dsn` when the role may (a superuser); notes it."""
    try:
        walwatch.execute(
            dsn,
            f"CREATE PUBLICATION {EVERY_TABLE_PUBLICATION} FOR ALL TABLES "
            "WITH (publish_via_partition_root = true)",
        )
    except walwatch.Error:
        return  # not a superuser: each watch says what it needs itself
    made = getattr(config, "_walwatch_publications", set())
    made.add(dsn)
    config._walwatch_publications = made  # type: ignore[attr-defined]


@pytest.fixture
def walwatch_proxy(walwatch_database: str) -> Iterator[walwatch.Proxy]:
    """A fault proxy in front of this worker's database."""
    proxy = walwatch.proxy(walwatch_database)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def wal(request: pytest.FixtureRequest, walwatch_database: str) -> Iterator[walwatch.Watch]:
    """A watch on this worker's database for this test."""
    marker = request.node.get_closest_marker("walwatch")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    tables = options.pop("tables", None) or request.config.getini("walwatch_tables") or None
    proxy = None
    if "walwatch_proxy" in request.fixturenames:
        proxy = request.getfixturevalue("walwatch_proxy")
    # Every table, as the watch would publish them itself: the worker's publication serves.
    if (
        tables is None
        and not {"ops", "publication", "partitions"} & options.keys()
        and walwatch_database in getattr(request.config, "_walwatch_publications", ())
    ):
        options["publication"] = EVERY_TABLE_PUBLICATION
    w = walwatch.watch(
        walwatch_database,
        tables=tables,
        proxy=proxy,
        mark_prefix=f"{request.node.nodeid}::",
        **options,
    )
    try:
        yield w
    finally:
        w.stop()


def _failure_text(item: pytest.Item, excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """Where the test's own code asserted, then the report."""
    package = os.path.dirname(os.path.abspath(walwatch.__file__))
    where = ""
    for entry in reversed(excinfo.traceback):
        path = os.path.abspath(str(entry.path))
        if path.startswith(package + os.sep):
            continue
        try:
            statement = str(entry.statement).strip()
        except Exception:
            statement = ""
        try:
            shown = os.path.relpath(path, str(item.config.rootpath))
        except ValueError:
            shown = path
        where = f"{shown}:{entry.lineno + 1}: in {entry.name}\n    {statement}\n\n"
        break
    return f"{where}{excinfo.value}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    excinfo = call.excinfo
    if (
        excinfo is not None
        and report.failed
        and isinstance(excinfo.value, walwatch.AssertionFailed)
    ):
        report.longrepr = _failure_text(item, excinfo)
    return report
