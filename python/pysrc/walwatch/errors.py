"""walwatch's exceptions.

Defined in Python (and raised from the Rust extension) so that they can carry attributes and be
caught by their class. Every message is walwatch's own: it says what happened and what to do.
"""

from __future__ import annotations

from typing import Any


class Error(Exception):
    """Base of every walwatch error that is not a failed assertion."""


class ConfigError(Error, ValueError):
    """An argument walwatch cannot use (a bad DSN, table list, option): fix the call."""


class ExprError(Error, ValueError):
    """A CEL string that does not compile, or that failed on an event (a type error)."""


class PredicateError(Error):
    """A Python predicate raised. The message names the event; ``__cause__`` is the exception."""


class SetupError(Error):
    """The server's setup does not allow the watch (privilege, wal_level, missing table)."""


class DatabaseError(Error):
    """The connection or the replication stream failed."""


class FenceTimeout(Error):
    """A fence did not come back through the stream in time: the stream is behind or stalled."""


class ProxyError(Error):
    """The fault proxy cannot start, or a fault rule is invalid."""


class ScratchError(Error):
    """A throwaway cluster could not be started, used or stopped."""


class AssertionFailed(AssertionError):
    """An assertion did not hold.

    ``str(exc)`` is the full text report (what was expected, the window, the nearest miss, the
    last events of the table, why the event may be missing); ``exc.report`` is the same report
    as a dict (walwatch's JSON report).
    """

    def __init__(self, text: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.report: dict[str, Any] = report or {}

    def __str__(self) -> str:
        return self.text.rstrip("\n")


__all__ = [
    "AssertionFailed",
    "ConfigError",
    "DatabaseError",
    "Error",
    "ExprError",
    "FenceTimeout",
    "PredicateError",
    "ProxyError",
    "ScratchError",
    "SetupError",
]
