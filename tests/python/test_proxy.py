"""Fault injection from Python: the insert_rejected scenario of the README, and the rules."""

from __future__ import annotations

import psycopg
import pytest
from conftest import unique

import walwatch


def test_insert_rejected(
    walwatch_proxy: walwatch.Proxy, wal: walwatch.Watch, db: psycopg.Connection
) -> None:
    item = unique("book")
    with psycopg.connect(walwatch_proxy.dsn(), autocommit=True) as app:
        m = wal.mark("insert_fail")
        with wal.fault(walwatch.error(query="INSERT*", message="disk full")) as fault:
            with pytest.raises(psycopg.Error, match="disk full"):
                app.execute("INSERT INTO orders (item) VALUES (%s)", (item,))
            e = wal.assert_eventually(
                where=lambda e: e.type == "proxy"
                and e.data["action"] == "error"
                and e.data["query"].startswith("INSERT"),
                within=5,
            )
            assert e.data["rule"].startswith("error:INSERT*:disk full"), e.data
            assert e.data["sqlstate"] == "XX000" and fault.id > 0
            wal.assert_never(where='type == "wal" && data.op == "INSERT"', since=m)
        app.execute("INSERT INTO orders (item) VALUES (%s)", (item,))
    wal.assert_eventually(
        where=f'type == "wal" && data.op == "INSERT" && data.data.item == "{item}"', within=5
    )
    assert wal.count(where='type == "proxy" && data.action == "error"', since=m) == 1


def test_rules_are_checked_when_made() -> None:
    rule = walwatch.error(query="INSERT*", message="disk full", sqlstate="53100", times=1)
    assert "error:INSERT*:disk full" in str(rule) and "sqlstate=53100" in str(rule)
    with pytest.raises(walwatch.ProxyError, match="sqlstate"):
        walwatch.error(query="INSERT*", message="x", sqlstate="nope")
    assert str(walwatch.delay(query="SELECT*", seconds=0.25)).startswith("delay:SELECT*:250ms")
    assert str(walwatch.drop(query="UPDATE*")).startswith("drop:UPDATE*")


def test_a_standalone_proxy_drops_delays_and_records(walwatch_database: str) -> None:
    with walwatch.proxy(walwatch_database) as p:
        assert p.dsn().count(p.address) == 1
        with psycopg.connect(p.dsn(), autocommit=True) as app:
            seq = p.mark("before")
            with p.fault(walwatch.delay(query="SELECT 'slow'*", seconds=0.05)):
                assert app.execute("SELECT 'slow'").fetchone() == ("slow",)
        with psycopg.connect(p.dsn(), autocommit=True) as app:
            fault = p.fault(walwatch.drop(query="SELECT 'drop me'*"))
            with pytest.raises(psycopg.OperationalError):
                app.execute("SELECT 'drop me'")
            fault.remove()
            fault.remove()
        actions = [e.data["action"] for e in p.events() if e.seq > seq]
        assert actions == ["delay", "drop"], actions
        assert all(e.type == "proxy" for e in p.events())
