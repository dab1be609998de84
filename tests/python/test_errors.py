"""What the binding does with what a test does wrong: Ctrl-C inside a predicate stops the run,
a predicate that calls walwatch gets a clear error instead of a panic, absurd timeouts are
refused, and a suite that uses no walwatch fixture never starts a server."""

from __future__ import annotations

import pytest
from conftest import unique

import walwatch


@pytest.mark.walwatch(tables=["orders"])
def test_ctrl_c_in_a_predicate_is_not_a_predicate_error(wal: walwatch.Watch, db) -> None:
    db.execute("INSERT INTO orders (item) VALUES (%s)", (unique(),))

    def interrupted(e: walwatch.Event) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wal.assert_eventually(where=interrupted, within=5)


@pytest.mark.walwatch(tables=["orders"])
def test_a_predicate_that_calls_walwatch_gets_an_error_not_a_panic(
    wal: walwatch.Watch, db, walwatch_database: str
) -> None:
    db.execute("INSERT INTO orders (item) VALUES (%s)", (unique(),))
    with pytest.raises(walwatch.PredicateError) as raised:
        wal.assert_eventually(
            where=lambda e: bool(walwatch.execute(walwatch_database, "SELECT 1")), within=5
        )
    cause = raised.value.__cause__
    assert isinstance(cause, walwatch.ConfigError), repr(cause)
    assert "inside a where= predicate" in str(cause)


@pytest.mark.walwatch(tables=["orders"])
def test_absurd_timeouts_are_refused(wal: walwatch.Watch) -> None:
    for call in (
        lambda: wal.assert_eventually(where="true", within=1e19),
        lambda: wal.assert_never(where="true", during=1e19),
        lambda: wal.assert_eventually(where="true", within=-1),
    ):
        with pytest.raises(ValueError, match="seconds"):
            call()


UNRELATED = '''
def test_nothing_to_do_with_walwatch():
    assert 1 + 1 == 2
'''


def test_a_suite_without_walwatch_fixtures_starts_no_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No server binaries at all: starting one would fail the run.
    monkeypatch.setenv("WALWATCH_PG_BIN", "/nonexistent")
    monkeypatch.delenv("WALWATCH_DSN", raising=False)
    pytester.makepyfile(test_unrelated=UNRELATED)
    for args in ([], ["-n", "2"]):
        result = pytester.runpytest_subprocess(*args, timeout=120)
        result.assert_outcomes(passed=1)
