"""walwatch.scratch_cluster(): a throwaway server, gone when stopped."""

from __future__ import annotations

import os

import walwatch


def test_a_scratch_cluster_runs_and_removes_itself() -> None:
    with walwatch.scratch_cluster() as c:
        root = c.root_dir
        assert c.running and os.path.isdir(c.data_dir)
        assert walwatch.execute(c.dsn(), "SHOW wal_level") == [["logical"]]
        c.create_database("extra")
        walwatch.execute(c.dsn("extra"), "CREATE TABLE t (x int PRIMARY KEY); INSERT INTO t VALUES (1)")
        assert c.psql("extra", "SELECT x FROM t") == "1"
        assert "user=postgres" in c.admin_dsn()
        with walwatch.watch(c.dsn("extra"), tables=["t"]) as w:
            walwatch.execute(c.dsn("extra"), "INSERT INTO t VALUES (2)")
            assert w.assert_eventually(where="data.data.x == 2").data["table"] == "t"
    assert not c.running
    assert not os.path.exists(root)
