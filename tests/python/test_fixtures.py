"""Every fixture of the plugin, against the server it provides."""

from __future__ import annotations

import os

import psycopg
import pytest
from conftest import unique

import walwatch


def test_walwatch_dsn_is_a_logical_server(walwatch_dsn: str) -> None:
    assert walwatch.execute(walwatch_dsn, "SHOW wal_level") == [["logical"]]


def test_walwatch_database_is_this_workers_copy_of_the_template(walwatch_database: str) -> None:
    rows = walwatch.execute(
        walwatch_database,
        "SELECT current_database(), to_regclass('public.orders') IS NOT NULL",
    )
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    [[name, has_orders]] = rows
    # <prefix>_<this session's token>_<worker>: another session on the server has another name.
    prefix, token, rest = name.split("_", 2)
    assert (prefix, rest, has_orders) == ("walwatch", worker, "t"), rows
    assert len(token) == 8, rows


def test_wal_sees_a_committed_insert(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    item = unique()
    db.execute("INSERT INTO orders (item, amount) VALUES (%s, 12.5)", (item,))
    e = wal.assert_eventually(
        where=lambda e: e.type == "wal"
        and e.data.get("table") == "orders"
        and e.data["data"]["item"] == item,
        within=5,
    )
    assert e.data["op"] == "INSERT"
    assert e.op == "INSERT" and e.table == "orders"


@pytest.mark.walwatch(tables=["orders"])
def test_the_marker_chooses_the_tables(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    m = wal.mark("start")
    db.execute("INSERT INTO users (name) VALUES ('not watched')")
    db.execute("INSERT INTO orders (item) VALUES ('watched')")
    wal.assert_count(where='data.table == "orders"', since=m, equals=1)
    wal.assert_count(where='data.table == "users"', since=m, equals=0)


def test_marks_are_named_after_the_test(wal: walwatch.Watch, request: pytest.FixtureRequest) -> None:
    m = wal.mark("phase-2")
    assert m.name == f"{request.node.nodeid}::phase-2"
    assert wal.mark_prefix == f"{request.node.nodeid}::"
    assert "/" in m.lsn


def test_wal_merges_the_proxy_it_runs_beside(
    walwatch_proxy: walwatch.Proxy, wal: walwatch.Watch
) -> None:
    assert wal.proxy is not None and wal.proxy.address == walwatch_proxy.address
    item = unique()
    with psycopg.connect(walwatch_proxy.dsn(), autocommit=True) as app:
        app.execute("INSERT INTO orders (item) VALUES (%s)", (item,))
        with wal.fault(walwatch.error(query="SELECT 'fail me'*", message="injected")):
            with pytest.raises(psycopg.Error, match="injected"):
                app.execute("SELECT 'fail me'")
    wal.assert_eventually(where=f'data.table == "orders" && data.data.item == "{item}"')
    e = wal.assert_eventually(where='type == "proxy" && data.action == "error"')
    assert e.data["message"] == "injected" and e.seq is not None


def test_the_proxy_fixture_alone_relays(walwatch_proxy: walwatch.Proxy) -> None:
    with psycopg.connect(walwatch_proxy.dsn(), autocommit=True) as app:
        assert app.execute("SELECT current_database()").fetchone()[0].startswith("walwatch_")
