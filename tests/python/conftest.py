"""Shared set-up of the walwatch Python suite: the schema every worker's database gets, and a
connection the tests write through (psycopg: the application's side)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

SCHEMA = """
CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (
    id serial PRIMARY KEY,
    user_id int,
    item text NOT NULL,
    status text NOT NULL DEFAULT 'new',
    amount numeric(10, 2)
);
CREATE TABLE kinds (
    id int PRIMARY KEY,
    n numeric, ts timestamptz, t timestamp, d date, tm time, u uuid, b bytea, j jsonb,
    ints int[], texts text[], flag bool, f float8, iv interval, nothing text
);
"""


@pytest.fixture(scope="session")
def walwatch_schema() -> str:
    return SCHEMA


@pytest.fixture
def db(walwatch_database: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this worker's database."""
    with psycopg.connect(walwatch_database, autocommit=True) as conn:
        yield conn


def unique(prefix: str = "item") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def lsn(text: str) -> int:
    """A `pg_lsn` as an integer, for ordering."""
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class Repeater:
    """Runs `action` over and over in a thread until stopped (or a deadline): a stream of
    writes that certainly overlaps a window, instead of one write timed to land in it."""

    def __init__(self, action: Callable[[int], None], deadline_s: float = 30.0) -> None:
        self._stop = threading.Event()
        self._action = action
        self._deadline = time.monotonic() + deadline_s
        self.count = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                self._action(self.count)
                self.count += 1
        except BaseException as e:  # reported by stop()
            self.error = e

    def __enter__(self) -> Repeater:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
