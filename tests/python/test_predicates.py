"""Predicates (Python and CEL), the assertions, and what a failure says."""

from __future__ import annotations

import psycopg
import pytest
from conftest import Repeater, unique

import walwatch


def _orders(db: psycopg.Connection, rows: list[tuple[str, str]]) -> None:
    for item, status in rows:
        db.execute("INSERT INTO orders (item, status) VALUES (%s, %s)", (item, status))


PAIRS = [
    (
        lambda e: e.type == "wal" and e.data.get("op") == "INSERT",
        'type == "wal" && data.op == "INSERT"',
    ),
    (
        lambda e: e.data.get("table") == "orders" and e.data["data"]["status"] == "paid",
        'data.table == "orders" && data.data.status == "paid"',
    ),
    (
        lambda e: e.data.get("op") == "UPDATE" and e.data["data"]["status"] == "shipped",
        'data.op == "UPDATE" && data.data.status == "shipped"',
    ),
    (lambda e: e.data.get("op") == "COMMIT", 'data.op == "COMMIT"'),
]


def test_python_and_cel_predicates_agree(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    m = wal.mark("start")
    tag = unique()
    _orders(db, [(tag, "new"), (tag, "paid"), (tag, "paid")])
    db.execute("UPDATE orders SET status = 'shipped' WHERE item = %s AND status = 'new'", (tag,))
    expected = [3, 2, 1, 4]
    for (py, cel), n in zip(PAIRS, expected):
        assert wal.count(where=py, since=m) == n, cel
        assert wal.count(where=cel, since=m) == n, cel
    first_py = wal.assert_eventually(where=PAIRS[1][0])
    first_cel = wal.assert_eventually(where=PAIRS[1][1])
    assert first_py.to_json() == first_cel.to_json()


def test_a_raising_predicate_is_a_predicate_error_naming_the_event(
    wal: walwatch.Watch, db: psycopg.Connection
) -> None:
    db.execute("INSERT INTO orders (item) VALUES (%s)", (unique(),))

    def broken(e: walwatch.Event) -> bool:
        return e.data.get("table") == "orders" and 1 / 0 > 0

    with pytest.raises(walwatch.PredicateError) as info:
        wal.assert_eventually(where=broken, within=5)
    text = str(info.value)
    assert "INSERT public.orders at " in text, text
    assert "broken" in text and "division by zero" in text, text
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert not isinstance(info.value, AssertionError)


def test_a_failure_raises_assertion_failed_with_the_report(
    wal: walwatch.Watch, db: psycopg.Connection
) -> None:
    item = unique()
    db.execute("INSERT INTO orders (item, status) VALUES (%s, 'paid')", (item,))
    wal.sync()
    where = f'data.table == "orders" && data.data.item == "{item}" && data.data.status == "shipped"'
    with pytest.raises(walwatch.AssertionFailed) as info:
        wal.assert_eventually(where=where, within=0.3)
    exc = info.value
    text = str(exc)
    assert isinstance(exc, AssertionError)
    assert text.startswith("assertion eventually failed: no matching event arrived within 300ms")
    assert "nearest miss: INSERT public.orders at " in text, text
    assert 'not true: data.data.status == "shipped"  (data.data.status is "paid")' in text, text
    assert exc.report["assertion"] == "eventually" and exc.report["passed"] is False
    assert exc.report["near_miss"]["event"]["event"]["data"]["data"]["item"] == item
    assert exc.report["predicate"] == where


def test_assert_never_during_a_window(wal: walwatch.Watch, walwatch_database: str) -> None:
    wal.assert_never(where='data.table == "orders"', during=0.2)
    tag = unique()
    other = psycopg.connect(walwatch_database, autocommit=True)

    def insert(i: int) -> None:
        other.execute("INSERT INTO orders (item) VALUES (%s)", (f"{tag}-{i}",))

    with other, Repeater(insert):  # writes all through the window, so one certainly commits in it
        with pytest.raises(walwatch.AssertionFailed) as info:
            wal.assert_never(where='data.table == "orders" && data.op == "INSERT"', during=1.0)
    assert "a matching change was committed inside the window" in str(info.value)
    assert tag in str(info.value)


def test_assert_never_since_a_mark(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    db.execute("INSERT INTO orders (item) VALUES (%s)", (unique(),))
    m = wal.mark("quiet")
    wal.assert_never(where=lambda e: e.data.get("table") == "orders", since=m)
    item = unique()
    db.execute("INSERT INTO orders (item) VALUES (%s)", (item,))
    db.execute("INSERT INTO users (name) VALUES ('u')")
    with pytest.raises(walwatch.AssertionFailed) as info:
        wal.assert_never(where='data.table == "orders"', since=m)
    assert "1 matching change(s) were committed after the mark" in str(info.value)
    assert info.value.report["matches"][0]["event"]["data"]["data"]["item"] == item
    wal.assert_never(where='data.table == "users" && data.op == "DELETE"', since=m)


def test_count_and_assert_count_since_a_mark(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    tag = unique()
    _orders(db, [(tag, "new")])
    m = wal.mark("counted")
    _orders(db, [(tag, "new"), (tag, "paid"), (tag, "paid")])
    mine = f'data.table == "orders" && data.data.item == "{tag}"'
    assert wal.count(where=mine) == 4
    assert wal.count(where=mine, since=m) == 3
    assert wal.assert_count(where=mine, since=m, equals=3) == 3
    wal.assert_count(where=mine, since=m, at_least=2, at_most=3)
    with pytest.raises(walwatch.AssertionFailed) as info:
        wal.assert_count(where=mine + ' && data.data.status == "paid"', since=m, equals=1)
    text = str(info.value)
    assert "expected exactly 1 matching change(s), counted 2" in text, text
    assert len(info.value.report["matches"]) == 2
    with pytest.raises(ValueError):
        wal.assert_count(where=mine, since=m)


def test_events_since_a_mark_and_sync(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    db.execute("INSERT INTO users (name) VALUES ('before')")
    m = wal.mark("split")
    db.execute("INSERT INTO users (name) VALUES ('after')")
    wal.sync()
    after = [e.data["data"]["name"] for e in wal.events(since=m) if e.data["op"] == "INSERT"]
    assert after == ["after"]
    everything = [e.data["data"]["name"] for e in wal.events() if e.data["op"] == "INSERT"]
    assert everything == ["before", "after"]
    assert all(lsn_after(e.data["commit_lsn"], m.lsn) for e in wal.events(since=m))


def lsn_after(a: str, b: str) -> bool:
    from conftest import lsn

    return lsn(a) > lsn(b)


def test_bad_predicates_are_refused_before_anything_runs(wal: walwatch.Watch) -> None:
    with pytest.raises(walwatch.ExprError, match="line 1, column"):
        wal.assert_eventually(where="data.op ==", within=0.1)
    with pytest.raises(walwatch.ExprError, match="write `data.op`"):
        wal.count(where='op == "INSERT"')
    with pytest.raises(TypeError, match="callable"):
        wal.count(where=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one of during"):
        wal.assert_never(where='data.op == "INSERT"')
    assert walwatch.compile('data.op == "INSERT"') == 'data.op == "INSERT"'


def test_a_stopped_watch_says_so(walwatch_database: str) -> None:
    w = walwatch.watch(walwatch_database, tables=["orders"])
    assert w.slot and w.publications
    w.stop()
    with pytest.raises(walwatch.ConfigError, match="stopped"):
        w.sync()
    w.stop()


def test_a_bad_table_is_a_setup_error_that_says_what_to_do(walwatch_database: str) -> None:
    with pytest.raises(walwatch.Error) as info:
        walwatch.watch(walwatch_database, tables=["no_such_table"])
    assert "no_such_table" in str(info.value)
