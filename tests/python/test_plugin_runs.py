"""The plugin in inner pytest sessions: parallel workers (pytest-xdist) that never see each
other, and a failed assertion shown as its report."""

from __future__ import annotations

import os

import pytest

INNER_CONFTEST = '''
import pytest

@pytest.fixture(scope="session")
def walwatch_schema():
    return "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, worker text);"
'''

INNER_TESTS = '''
import os
import psycopg
import pytest
import walwatch

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")

@pytest.mark.parametrize("n", range(6))
def test_only_my_own_changes(wal, walwatch_database, n):
    name = walwatch.execute(walwatch_database, "SELECT current_database()")[0][0]
    assert name.endswith("_" + WORKER), name
    m = wal.mark("go")
    with psycopg.connect(walwatch_database, autocommit=True) as db:
        for i in range(5):
            db.execute("INSERT INTO orders (item, worker) VALUES (%s, %s)", (f"{n}-{i}", WORKER))
    wal.assert_count(where='data.op == "INSERT"', since=m, equals=5)
    with open(os.path.join(os.environ["INNER_OUT"], f"{WORKER}-{n}"), "w") as f:
        f.write(name)
'''

FAILING = '''
import psycopg

def test_fails(wal, walwatch_database):
    with psycopg.connect(walwatch_database, autocommit=True) as db:
        db.execute("INSERT INTO orders (item) VALUES ('paid-one')")
    wal.assert_eventually(where='data.table == "orders" && data.data.item == "shipped-one"',
                          within=0.3)
'''


def _args(walwatch_dsn: str, tag: str) -> list[str]:
    return [f"--walwatch-dsn={walwatch_dsn}", "-o", f"walwatch_database_prefix={tag}_{os.getpid()}"]


def test_xdist_workers_each_get_their_own_database(
    pytester: pytest.Pytester, walwatch_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    out = pytester.mkdir("out")
    monkeypatch.setenv("INNER_OUT", str(out))
    result = pytester.runpytest_subprocess("-n", "2", "-q", *_args(walwatch_dsn, "xd"), timeout=300)
    result.assert_outcomes(passed=6)
    ran = {p.name.split("-")[0]: p.read_text() for p in out.iterdir()}
    assert len(list(out.iterdir())) == 6
    assert sorted(ran) == ["gw0", "gw1"], ran
    assert ran["gw0"] != ran["gw1"], ran


def test_a_failed_assertion_is_shown_as_its_report(
    pytester: pytest.Pytester, walwatch_dsn: str
) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_failing=FAILING)
    result = pytester.runpytest_subprocess(*_args(walwatch_dsn, "rep"), timeout=300)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "assertion eventually failed: no matching event arrived within 300ms" in out, out
    assert "nearest miss: INSERT public.orders" in out, out
    assert 'not true: data.data.item == "shipped-one"' in out, out
    assert "test_failing.py:" in out and ": in test_fails" in out, out
    assert "_walwatch" not in out and "pytest_plugin" not in out, out


ONE_SERVER = '''
import os, pathlib
import walwatch

def test_where_am_i(walwatch_dsn, walwatch_database):
    port = walwatch.execute(walwatch_database, "SHOW port")[0][0]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (pathlib.Path(os.environ["INNER_OUT"]) / worker).write_text(port)

def test_other(walwatch_database):
    test_where_am_i(None, walwatch_database)
'''


def test_without_a_dsn_xdist_workers_share_one_throwaway_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_inner=ONE_SERVER)
    out = pytester.mkdir("out")
    monkeypatch.setenv("INNER_OUT", str(out))
    monkeypatch.delenv("WALWATCH_DSN", raising=False)
    # --dist each: every worker runs every test, so both certainly run one.
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "each", "-q", timeout=300)
    result.assert_outcomes(passed=4)
    ports = {p.name: p.read_text() for p in out.iterdir()}
    assert sorted(ports) == ["gw0", "gw1"], ports
    assert ports["gw0"] == ports["gw1"], f"one server for the session: {ports}"
