#!/usr/bin/env python3
"""How fast the Python binding answers, measured on a throwaway cluster.

    bash tests/install-pywalwatch.sh      # builds the wheel (dev profile) into target/pywalwatch
    target/pywalwatch/venv/bin/python benches/python_predicates.py [--events 100000] [--setups 20]

Prints:
* `assert_eventually` over N events already in the watch (one transaction of N INSERTs; the
  predicate matches only the last one, so every event is examined), with a Python lambda
  (called once per event, the GIL taken per call, `Event.data` converted lazily) and with a
  CEL string (evaluated in Rust, no Python per event): events/s, best of 3.
* the `wal` fixture's set-up: `walwatch.watch(dsn)` on every table through the worker
  database's publication of every table, as the plugin starts it (a temporary slot), and its
  teardown (`stop()`); beside it a watch that makes and drops a publication of its own:
  medians over `--setups` runs.

The wheel is a dev-profile build (the dependencies at opt-level 2, walwatch itself at 1): the
figures are what the test suite gets, not a release build's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import walwatch
from walwatch.pytest_plugin import EVERY_TABLE_PUBLICATION


def best_rate(w: walwatch.Watch, where: object, events: int, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        w.assert_eventually(where=where, within=120)
        times.append(time.perf_counter() - t0)
    return events / min(times)


def bench_predicates(c: walwatch.ScratchCluster, n: int) -> None:
    walwatch.execute(
        c.dsn(),
        "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL, status text NOT NULL, "
        "amount numeric(10,2))",
    )
    with walwatch.watch(c.dsn(), tables=["orders"], retain=2 * n + 100) as w:
        walwatch.execute(
            c.dsn(),
            "INSERT INTO orders SELECT g, 'item-' || g, 'new', g / 100.0 "
            f"FROM generate_series(1, {n}) g",
        )
        w.sync()
        scanned = n + 1  # BEGIN, then the INSERTs up to the last
        lam = (
            lambda e: e.type == "wal"
            and e.data.get("op") == "INSERT"
            and e.data["data"]["id"] == n
        )
        cel = f'type == "wal" && data.op == "INSERT" && data.data.id == {n}'
        print(f"assert_eventually over {n:,} recorded events (match on the last):")
        print(f"  python lambda: {best_rate(w, lam, scanned):>12,.0f} events/s")
        print(f"  CEL string:    {best_rate(w, cel, scanned):>12,.0f} events/s")


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.1f} ms"


def bench_setup(c: walwatch.ScratchCluster, runs: int) -> None:
    """The `wal` fixture's watch, as the plugin starts it on every table (the publication of
    every table made once per worker database), beside a watch making its own publication."""
    c.psql("postgres", "ALTER ROLE walwatch SUPERUSER")  # FOR ALL TABLES, as the plugin's
    walwatch.execute(
        c.dsn(),
        f"CREATE PUBLICATION {EVERY_TABLE_PUBLICATION} FOR ALL TABLES "
        "WITH (publish_via_partition_root = true)",
    )
    for label, options in (
        ("wal fixture (every table)", {"publication": EVERY_TABLE_PUBLICATION}),
        ("watch(dsn), its own publication", {}),
    ):
        starts, stops = [], []
        for i in range(runs):
            t0 = time.perf_counter()
            w = walwatch.watch(c.dsn(), mark_prefix=f"bench::{i}::", **options)
            t1 = time.perf_counter()
            w.stop()
            t2 = time.perf_counter()
            starts.append(t1 - t0)
            stops.append(t2 - t1)
        print(f"{label}, {runs} runs:")
        print(f"  set-up (watch start): median {median_ms(starts)}")
        print(f"  teardown (stop):      median {median_ms(stops)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--setups", type=int, default=20)
    args = parser.parse_args()
    with walwatch.scratch_cluster() as c:
        bench_predicates(c, args.events)
        bench_setup(c, args.setups)


if __name__ == "__main__":
    main()
