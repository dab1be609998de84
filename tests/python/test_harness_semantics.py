"""What an assertion sees, from Python: walwatch's own fences and marks never match or count,
`assert_eventually` looks since the watch started or after a mark, and reports show events in
the shape predicates read them (the nested envelope)."""

from __future__ import annotations

import psycopg
import pytest
from conftest import unique

import walwatch


@pytest.mark.walwatch(tables=["orders"])
def test_walwatchs_own_transactions_never_match_or_count(
    wal: walwatch.Watch, db: psycopg.Connection
) -> None:
    edges = 'data.op == "BEGIN" || data.op == "COMMIT"'
    # No application traffic: the window's own fences are not a violation.
    wal.assert_never(where=edges, during=0.5)
    m = wal.mark("one-insert")
    db.execute("INSERT INTO orders (item) VALUES (%s)", (unique(),))
    # Every count fences; none of those fences is counted by the next.
    for _ in range(3):
        assert wal.count(where='data.op == "COMMIT"', since=m) == 1
        assert wal.count(where=lambda e: e.data.get("op") in ("BEGIN", "COMMIT"), since=m) == 2


@pytest.mark.walwatch(tables=["orders"])
def test_eventually_looks_since_the_watch_started_or_after_a_mark(
    wal: walwatch.Watch, db: psycopg.Connection
) -> None:
    before, after = unique("before"), unique("after")
    db.execute("INSERT INTO orders (item) VALUES (%s)", (before,))
    m = wal.mark("step")
    db.execute("INSERT INTO orders (item) VALUES (%s)", (after,))
    wal.assert_eventually(where=f'data.data.item == "{before}"', within=5)
    wal.assert_eventually(where=f'data.data.item == "{after}"', since=m, within=5)
    with pytest.raises(walwatch.AssertionFailed) as failed:
        wal.assert_eventually(where=f'data.data.item == "{before}"', since=m, within=0.3)
    text = str(failed.value)
    assert f"after mark `{m.name}` ({m.lsn})" in text, text


@pytest.mark.walwatch(tables=["orders"])
def test_reports_print_events_as_predicates_read_them(
    wal: walwatch.Watch, db: psycopg.Connection
) -> None:
    db.execute("INSERT INTO orders (item) VALUES ('paid-one')")
    for where in (
        'data.table == "orders" && data.data.item == "shipped-one"',
        lambda e: e.data.get("table") == "orders" and e.data["data"]["item"] == "shipped-one",
    ):
        with pytest.raises(walwatch.AssertionFailed) as failed:
            wal.assert_eventually(where=where, within=0.3)
        text = str(failed.value)
        assert '{"type":"wal","data":{"op":"INSERT"' in text, text
        assert '"data":{"id":' in text, text
