"""psycopg 3 through `walwatch proxy`: the client half of tests/proxy_clients.rs.

A real driver with its own protocol code (libpq, in psycopg's binary build) meets the proxy's
injected faults: each scenario below runs, catches what psycopg raises and reports it, and
the Rust test asserts on that report. Nothing is asserted here, so that one failing
expectation still shows everything the client saw.

    python proxy_client.py CONFIG_JSON

CONFIG_JSON: {"proxy": DSN through the proxy, "direct": DSN of the server itself,
"table": a table `(id int primary key)` the rules below name, "slow_ms": the delay rule's}.
The proxy's rules (set by the Rust test):

    error:INSERT INTO <table> SELECT*:disk full;sqlstate=53100
    error:UPDATE <table>*:disk full;sqlstate=53100;after=2
    delay:SELECT 'slow'*:<slow_ms>ms
    drop:SELECT 'drop me'*

so `INSERT INTO t SELECT %s` fails and `INSERT INTO t VALUES (%s)` passes. Prints one JSON
object: a key per scenario.
"""

import json
import sys
import time
import traceback

import psycopg
import psycopg.errors
from psycopg import pq


def connect(dsn, autocommit=True):
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10)


def error(e):
    """What psycopg raised, as the report shows it."""
    out = {"class": type(e).__name__, "text": str(e).strip()}
    if isinstance(e, psycopg.Error):
        out["sqlstate"] = e.sqlstate
        diag = e.diag
        out["message_primary"] = diag.message_primary
        out["severity"] = diag.severity_nonlocalized or diag.severity
        out["is_operational"] = isinstance(e, psycopg.OperationalError)
        if e.sqlstate:
            # The class psycopg maps the SQLSTATE to (psycopg.errors.DiskFull for 53100).
            out["lookup_matches"] = isinstance(e, psycopg.errors.lookup(e.sqlstate))
    return out


def attempt(f):
    """{"ok": result} or {"error": ...}."""
    try:
        return {"ok": f()}
    except Exception as e:  # noqa: BLE001 - every failure is reported
        return {"error": error(e)}


def one(conn, sql, params=None, **kw):
    cur = conn.execute(sql, params, **kw)
    if cur.description is None:
        return cur.statusmessage
    row = cur.fetchone()
    return row[0] if row else None


def status(conn):
    return conn.info.transaction_status.name


def count(dsn, table, ids):
    with connect(dsn) as c:
        return one(c, f"SELECT count(*) FROM {table} WHERE id = ANY(%s)", (ids,))


def error_outside_a_block(cfg):
    t = cfg["table"]
    with connect(cfg["proxy"]) as c:
        return {
            # Parameters: the extended protocol (Parse/Bind/Execute).
            "extended": attempt(lambda: one(c, f"INSERT INTO {t} SELECT %s", (1,))),
            "status_after_extended": status(c),
            "select_after_extended": attempt(lambda: one(c, "SELECT 40 + 2")),
            # No parameters: psycopg sends a simple Query.
            "simple": attempt(lambda: one(c, f"INSERT INTO {t} SELECT 2")),
            "select_after_simple": attempt(lambda: one(c, "SELECT 40 + 2")),
            "good_insert": attempt(lambda: one(c, f"INSERT INTO {t} VALUES (%s)", (3,))),
            "rows": count(cfg["direct"], t, [1, 2, 3]),
        }


def error_inside_a_block(cfg):
    t = cfg["table"]
    out = {}
    # An explicit BEGIN in autocommit mode.
    with connect(cfg["proxy"]) as c:
        out["begin"] = attempt(lambda: one(c, "BEGIN"))
        out["first_insert"] = attempt(lambda: one(c, f"INSERT INTO {t} VALUES (%s)", (10,)))
        out["failing_insert"] = attempt(lambda: one(c, f"INSERT INTO {t} SELECT %s", (11,)))
        out["status_after_error"] = status(c)
        out["statement_in_aborted_block"] = attempt(lambda: one(c, "SELECT 1"))
        out["rollback"] = attempt(lambda: one(c, "ROLLBACK"))
        out["status_after_rollback"] = status(c)
        out["select_after_rollback"] = attempt(lambda: one(c, "SELECT 40 + 2"))
        out["insert_after_rollback"] = attempt(
            lambda: one(c, f"INSERT INTO {t} VALUES (%s)", (12,))
        )
    out["rows_10_11"] = count(cfg["direct"], t, [10, 11])
    out["rows_12"] = count(cfg["direct"], t, [12])
    # psycopg's own transactions (autocommit off: it sends BEGIN before the first statement),
    # ended with conn.rollback().
    with connect(cfg["proxy"], autocommit=False) as c:
        out["implicit_first_insert"] = attempt(
            lambda: one(c, f"INSERT INTO {t} VALUES (%s)", (13,))
        )
        out["implicit_failing_insert"] = attempt(
            lambda: one(c, f"INSERT INTO {t} SELECT %s", (14,))
        )
        out["implicit_status_after_error"] = status(c)
        out["implicit_rollback"] = attempt(lambda: c.rollback())
        out["implicit_status_after_rollback"] = status(c)
        out["implicit_insert_after_rollback"] = attempt(
            lambda: one(c, f"INSERT INTO {t} VALUES (%s)", (15,))
        )
        out["implicit_commit"] = attempt(lambda: c.commit())
    out["rows_13_14"] = count(cfg["direct"], t, [13, 14])
    out["rows_15"] = count(cfg["direct"], t, [15])
    return out


def prepared_statements(cfg):
    t = cfg["table"]
    out = {}
    with connect(cfg["proxy"]) as c:
        # prepare=True: a named server-side statement, Parse once, then Bind/Execute each time.
        out["failing"] = [
            attempt(lambda i=i: one(c, f"INSERT INTO {t} SELECT %s", (20 + i,), prepare=True))
            for i in range(4)
        ]
        out["passing"] = [
            attempt(lambda i=i: one(c, f"INSERT INTO {t} VALUES (%s)", (30 + i,), prepare=True))
            for i in range(4)
        ]
        # The server holds both as named statements: the Executes were of prepared statements.
        out["server_prepared"] = [
            r[0]
            for r in c.execute(
                "SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'INSERT%%' "
                "ORDER BY statement"
            ).fetchall()
        ]
        # A statement prepared and executed while no rule fires (the rule's after=2), then
        # executed again from psycopg's cache (Bind/Execute only) when the rule does.
        out["cached"] = [
            attempt(lambda: one(c, f"UPDATE {t} SET id = id WHERE id = %s", (30,), prepare=True))
            for _ in range(4)
        ]
        out["select_after"] = attempt(lambda: one(c, "SELECT 40 + 2"))
        out["server_prepared_after"] = [
            r[0]
            for r in c.execute(
                "SELECT statement FROM pg_prepared_statements ORDER BY statement"
            ).fetchall()
        ]
    out["rows_failing"] = count(cfg["direct"], t, [20, 21, 22, 23])
    out["rows_passing"] = count(cfg["direct"], t, [30, 31, 32, 33])
    # The same with a real error, straight to the server: how psycopg itself handles a failed
    # prepared statement (it drops it from its cache and prepares it again next time).
    with connect(cfg["direct"]) as c:
        out["direct_failing"] = [
            attempt(lambda i=i: one(c, f"INSERT INTO {t} SELECT %s / 0", (20 + i,), prepare=True))
            for i in range(4)
        ]
        out["direct_server_prepared"] = [
            r[0]
            for r in c.execute(
                "SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'INSERT%%' "
                "ORDER BY statement"
            ).fetchall()
        ]
    return out


def pipeline(dsn, table, failing_sql, base):
    """Three INSERTs in one pipeline, the second failing; what each raised, and after."""
    out = {"steps": []}
    ids = [base, base + 1, base + 2]
    with connect(dsn) as c:
        try:
            with c.pipeline() as p:
                cursors = []
                for k, i in enumerate(ids):
                    sql = failing_sql if k == 1 else f"INSERT INTO {table} VALUES (%s)"
                    try:
                        cursors.append(c.execute(sql, (i,)))
                        out["steps"].append({"queued": k})
                    except Exception as e:  # noqa: BLE001
                        out["steps"].append({"queue_error": k, "error": error(e)})
                try:
                    p.sync()
                    out["steps"].append({"sync": "ok"})
                except Exception as e:  # noqa: BLE001
                    out["steps"].append({"sync_error": error(e)})
                for k, cur in enumerate(cursors):
                    try:
                        out["steps"].append({"result": k, "status": cur.statusmessage})
                    except Exception as e:  # noqa: BLE001
                        out["steps"].append({"result_error": k, "error": error(e)})
            out["steps"].append({"exit": "ok"})
        except Exception as e:  # noqa: BLE001
            out["steps"].append({"exit_error": error(e)})
        out["status_after"] = status(c)
        out["select_after"] = attempt(lambda: one(c, "SELECT 40 + 2"))
        # And a second pipeline on the same connection goes through whole.
        try:
            with c.pipeline():
                second = [c.execute("SELECT %s::int", (n,)) for n in (1, 2, 3)]
            out["second_pipeline"] = [cur.fetchone()[0] for cur in second]
        except Exception as e:  # noqa: BLE001
            out["second_pipeline"] = {"error": error(e)}
    out["rows"] = [count(dsn, table, [i]) for i in ids]
    return out


def pipelines(cfg):
    t = cfg["table"]
    return {
        "proxy": pipeline(cfg["proxy"], t, f"INSERT INTO {t} SELECT %s", 40),
        # The same pipeline straight to the server with a real error in its second statement:
        # what the proxy's injected error must look like to the client.
        "direct": pipeline(cfg["direct"], t, f"INSERT INTO {t} SELECT %s / 0", 50),
    }


def delay(cfg):
    with connect(cfg["proxy"]) as c:
        one(c, "SELECT 1")  # connected and warm
        t0 = time.monotonic()
        slow = attempt(lambda: one(c, "SELECT 'slow'"))
        slow_ms = (time.monotonic() - t0) * 1000
        t0 = time.monotonic()
        fast = attempt(lambda: one(c, "SELECT 'fast'"))
        fast_ms = (time.monotonic() - t0) * 1000
        # Extended protocol too.
        t0 = time.monotonic()
        slow_ext = attempt(lambda: one(c, "SELECT 'slow', %s::int", (1,)))
        slow_ext_ms = (time.monotonic() - t0) * 1000
    return {
        "slow": slow,
        "slow_ms": slow_ms,
        "fast": fast,
        "fast_ms": fast_ms,
        "slow_extended": slow_ext,
        "slow_extended_ms": slow_ext_ms,
    }


def drop(cfg):
    out = {}
    c = connect(cfg["proxy"])
    try:
        out["before"] = attempt(lambda: one(c, "SELECT 40 + 2"))
        out["dropped"] = attempt(lambda: one(c, "SELECT 'drop me'"))
        out["closed_after"] = c.closed
        out["broken_after"] = c.broken
        out["next_on_same"] = attempt(lambda: one(c, "SELECT 1"))
    finally:
        c.close()
    with connect(cfg["proxy"]) as c2:
        out["new_connection"] = attempt(lambda: one(c2, "SELECT 40 + 2"))
    return out


SCENARIOS = [
    error_outside_a_block,
    error_inside_a_block,
    prepared_statements,
    pipelines,
    delay,
    drop,
]


def main():
    cfg = json.loads(sys.argv[1])
    report = {"psycopg": psycopg.__version__, "libpq_impl": pq.__impl__}
    for s in SCENARIOS:
        try:
            report[s.__name__] = s(cfg)
        except Exception:  # noqa: BLE001 - a scenario that crashed is reported, not fatal
            report[s.__name__] = {"crashed": traceback.format_exc()}
    json.dump(report, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
