"""The few named error types of Qasino.

Front ends turn these into the protocol's error shape at the edge; nothing
below the front ends builds error dicts.
"""

from __future__ import annotations


class QasinoError(Exception):
    """Base of every error Qasino reports to a client."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidInput(QasinoError):
    """A published table (JSON or CSV) or its options are malformed.

    Front ends report it as ``Invalid input format: <message>``.
    """


class PublishRejected(QasinoError):
    """A well-formed publish that the merge rules refuse (e.g. a second
    publish of a table by the same identity in one generation)."""


class QueryError(QasinoError):
    """A query failed: SQL error, refused statement, time limit, ..."""


class QueryRefused(QueryError):
    """The statement is not a single read-only SELECT / shortcut."""


class QueryTimeout(QueryError):
    """The statement ran longer than the configured time limit."""


class QueryCancelled(QueryError):
    """The client that asked went away; the query was stopped."""


class ViewsFileError(QasinoError):
    """The views file could not be read or parsed; the previous views stay."""


class StoreError(QasinoError):
    """The storage layer failed (disk full, read-only disk, ...)."""


class AlertsFileError(QasinoError):
    """The alerts file could not be read or parsed; the previous rules stay."""
