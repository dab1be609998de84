"""walwatch for Python: watch PostgreSQL's WAL from tests and assert on what reached it.

The engine is walwatch's own (Rust, through PyO3): ``watch`` wraps ``walwatch::Watch``,
``proxy`` the fault proxy, ``scratch_cluster`` a throwaway server. Blocking calls release the
GIL; a ``where=`` predicate is a Python callable taking an :class:`Event`, or a CEL string
evaluated in Rust over the same shape (``type == "wal" && data.op == "INSERT"``).

    import walwatch
    with walwatch.watch(dsn, tables=["orders"]) as w:
        create_order()
        w.assert_eventually(where=lambda e: e.data.get("table") == "orders", within=5)
        w.assert_never(where='type == "wal" && data.op == "DELETE"', during=1)

An event's ``data`` is the nested envelope of ``walwatch --envelope nested``: for WAL events
``op``, ``schema``, ``table``, ``lsn``, ``commit_lsn``, ``xid``, ``ts``, ``data`` (the row),
``old``, ``key``, ``unchanged`` (and ``partition_of``); for proxy events ``action``, ``query``,
``rule``, ``message``, ``sqlstate``, ``connection``, ... Row values are Python types (Decimal,
aware datetime, date, time, UUID, bytes, dict/list for JSON, lists for arrays).
"""

from __future__ import annotations

from collections.abc import Mapping as _Mapping

from . import _walwatch
from ._walwatch import (
    Data,
    Event,
    Fault,
    Mark,
    Proxy,
    Rule,
    ScratchCluster,
    Watch,
    compile,
    delay,
    drop,
    dsn_with,
    error,
    proxy,
    scratch_cluster,
    watch,
)
from .errors import (
    AssertionFailed,
    ConfigError,
    DatabaseError,
    Error,
    ExprError,
    FenceTimeout,
    PredicateError,
    ProxyError,
    ScratchError,
    SetupError,
)

# `isinstance(e.data, collections.abc.Mapping)` holds, and Mapping's mixins apply.
_Mapping.register(Data)

execute = _walwatch.execute

__all__ = [
    "AssertionFailed",
    "ConfigError",
    "Data",
    "DatabaseError",
    "Error",
    "Event",
    "ExprError",
    "Fault",
    "FenceTimeout",
    "Mark",
    "PredicateError",
    "Proxy",
    "ProxyError",
    "Rule",
    "ScratchCluster",
    "ScratchError",
    "SetupError",
    "Watch",
    "compile",
    "delay",
    "drop",
    "dsn_with",
    "error",
    "execute",
    "proxy",
    "scratch_cluster",
    "watch",
]
