#!/usr/bin/env python3
"""How fast the Python binding answers, measured on a throwaway cluster.

    bash tests/install-pywalwatch.sh      # builds the wheel (dev profile) into target/pywalwatch
    target/pywalwatch/venv/bin/python benches/python_predicates.py [--events 100000] [--setups 20]

Prints:
* `assert_eventually` over N events already in the watch (one transaction of N INSERTs; the
  predicate matches only the last one, so every event is examined), with a Python lambda
  (called once per event, the GIL taken per call, `Event.data` converted lazily) and with a
  CEL string (evaluated in Rust, no Python per event): events/s, best of 3.
* the `wal` fixture's set-up: `walwatch.watch(dsn)` on every table (a publication FOR ALL
  TABLES and a temporary slot), and its teardown (`stop()`): medians over `--setups` runs.

The wheel is a dev-profile build (the dependencies at opt-level 2, walwatch itself at 1): the
figures are what the test suite gets, not a release build's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import walwatch


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


def bench_setup(c: walwatch.ScratchCluster, runs: int) -> None:
    c.psql("postgres", "ALTER ROLE walwatch SUPERUSER")  # FOR ALL TABLES, as the plugin's
    starts, stops = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        w = walwatch.watch(c.dsn(), mark_prefix=f"bench::{i}::")
        t1 = time.perf_counter()
        w.stop()
        t2 = time.perf_counter()
        starts.append(t1 - t0)
        stops.append(t2 - t1)
    print(f"wal fixture (every table), {runs} runs:")
    print(f"  set-up (watch start): median {statistics.median(starts) * 1000:7.1f} ms")
    print(f"  teardown (stop):      median {statistics.median(stops) * 1000:7.1f} ms")


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
