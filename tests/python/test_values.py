"""Every value type as Python sees it, and the lazy `data` mapping."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from collections.abc import Mapping

import psycopg
import pytest

import walwatch

ROW = """
INSERT INTO kinds VALUES (
    %s, 12.50, '2026-11-22 03:22:01.123456+02', '2026-11-22 03:22:01', '2026-11-22', '13:14:15.5',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdead01', '{"a": [1, 2.5, null], "b": {"c": true}}',
    '{1,2,NULL}', '{"x","y z"}', true, 1.5, '1 day 02:00:00', NULL)
"""


def _row(wal: walwatch.Watch, db: psycopg.Connection, key: int, sql: str = ROW) -> walwatch.Event:
    db.execute(sql, (key,))
    return wal.assert_eventually(
        where=f'data.table == "kinds" && data.op == "INSERT" && data.data.id == {key}', within=5
    )


def test_each_type_arrives_as_its_python_type(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    row = _row(wal, db, 1).data["data"]
    assert row["id"] == 1 and type(row["id"]) is int
    assert row["n"] == decimal.Decimal("12.50") and str(row["n"]) == "12.50"
    assert row["ts"] == datetime.datetime(2026, 11, 22, 1, 22, 1, 123456, tzinfo=datetime.timezone.utc)
    assert row["ts"].utcoffset() == datetime.timedelta(0)
    assert row["t"] == datetime.datetime(2026, 11, 22, 3, 22, 1) and row["t"].tzinfo is None
    assert row["d"] == datetime.date(2026, 11, 22)
    assert row["tm"] == datetime.time(13, 14, 15, 500000)
    assert row["u"] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert row["b"] == b"\xde\xad\x01"
    assert row["j"] == {"a": [1, 2.5, None], "b": {"c": True}}
    assert row["ints"] == [1, 2, None]
    assert row["texts"] == ["x", "y z"]
    assert row["flag"] is True
    assert row["f"] == 1.5 and type(row["f"]) is float
    assert row["iv"] == "1 day 02:00:00"
    assert row["nothing"] is None


def test_values_python_cannot_hold_stay_exact(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    sql = (
        "INSERT INTO kinds (id, n, ts, d, f) "
        "VALUES (%s, 'NaN', 'infinity', '0044-03-15 BC', 'Infinity')"
    )
    row = _row(wal, db, 2, sql).data["data"]
    assert isinstance(row["n"], decimal.Decimal) and row["n"].is_nan()
    assert row["ts"] == "infinity"
    assert row["d"] == "-0043-03-15"
    assert row["f"] == float("inf")
    n = _row(wal, db, 3, "INSERT INTO kinds (id, n) VALUES (%s, '-Infinity')").data["data"]["n"]
    assert n == decimal.Decimal("-Infinity")


def test_the_envelope_fields(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    e = _row(wal, db, 4)
    d = e.data
    assert e.type == "wal" and e.seq is None
    assert d["op"] == "INSERT" and d["schema"] == "public" and d["table"] == "kinds"
    assert isinstance(d["xid"], int) and d["xid"] > 0
    assert d["lsn"].count("/") == 1 and d["commit_lsn"].count("/") == 1
    assert isinstance(d["ts"], datetime.datetime) and d["ts"].tzinfo is not None
    assert e.ts == d["ts"]
    assert d["old"] is None and d["key"] == {"id": 4} and d["unchanged"] == []
    assert "partition_of" not in d
    assert repr(e).startswith("<walwatch.Event INSERT public.kinds at ")


def test_data_is_a_lazy_read_only_mapping(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    e = _row(wal, db, 5, "INSERT INTO kinds (id, flag, nothing) VALUES (%s, false, 'x')")
    row = e.data["data"]
    assert isinstance(e.data, Mapping) and isinstance(row, Mapping)
    assert row.get("flag") is False and row.get("missing") is None and row.get("missing", 7) == 7
    assert "flag" in row and "missing" not in row and 3 not in row
    with pytest.raises(KeyError):
        row["missing"]
    assert len(row) == 15
    assert list(row)[:3] == ["id", "n", "ts"] and row.keys() == list(row)
    assert dict(row.items())["nothing"] == "x"
    assert row.values()[0] == 5
    assert row == {**{k: None for k in row}, "id": 5, "flag": False, "nothing": "x"}
    assert row != {"id": 5}
    assert "'flag': False" in repr(row)
    assert row["id"] is row["id"]  # converted once, then cached
    assert dict(row) == row.as_dict()


def test_whole_event_as_json_and_dict(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    e = _row(wal, db, 6, "INSERT INTO kinds (id, n, u) VALUES (%s, 1.10, gen_random_uuid())")
    parsed = json.loads(e.to_json())
    assert parsed["type"] == "wal" and parsed["data"]["table"] == "kinds"
    assert parsed["data"]["data"]["n"] == "1.10"  # the JSON contract: numeric as a string
    whole = e.as_dict()
    assert type(whole["data"]) is dict and type(whole["data"]["data"]) is dict
    assert whole["data"]["data"]["n"] == decimal.Decimal("1.10")
    assert isinstance(whole["data"]["data"]["u"], uuid.UUID)


def test_update_and_delete_carry_old_and_key(wal: walwatch.Watch, db: psycopg.Connection) -> None:
    db.execute("INSERT INTO users (name) VALUES ('ann') RETURNING id")
    db.execute("UPDATE users SET name = 'anne' WHERE name = 'ann'")
    db.execute("DELETE FROM users WHERE name = 'anne'")
    up = wal.assert_eventually(where=lambda e: e.data.get("op") == "UPDATE")
    assert up.data["data"]["name"] == "anne" and up.data["old"] is None
    gone = wal.assert_eventually(where='data.op == "DELETE" && data.table == "users"')
    assert gone.data["key"] == {"id": gone.data["data"]["id"]}
