"""Value types passed between the front ends, the core and the store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

Cell = Union[int, float, str, None]


@dataclass(frozen=True)
class Table:
    """A checked table: identifiers valid, types normalised, rows rectangular.

    ``column_types`` hold the normalised SQLite types (INTEGER, REAL, TEXT).
    ``rows`` is a list of lists of cells (int, float, str or None); it is not
    copied, so callers must not mutate it after building the Table.

    ``cells_checked`` false: the rows are rectangular lists straight from
    orjson and no cell can be over the size limit, but the cells' kinds and
    ranges were left for SQLite's binding to refuse (which it does for
    exactly the cells the checker refuses); the store then explains a
    refusal with :func:`qasino.core.tables.explain_cells`.
    """

    tablename: str
    column_names: tuple[str, ...]
    column_types: tuple[str, ...]
    rows: Sequence[Sequence[Cell]]
    cells_checked: bool = True


@dataclass(frozen=True)
class PublishOptions:
    """Options of one publish; ``keycols`` empty means "all columns"."""

    identity: str
    persist: bool = False
    static: bool = False
    update: bool = False
    keycols: tuple[str, ...] = ()


@dataclass(frozen=True)
class Publish:
    table: Table
    options: PublishOptions


def publish_fields(publish: Publish) -> tuple[Any, ...]:
    """A publish as a flat tuple of plain values (for ``marshal`` between
    processes: the --workers channel and the NATS reader's pipe)."""
    t, o = publish.table, publish.options
    return (
        t.tablename,
        t.column_names,
        t.column_types,
        t.rows,
        t.cells_checked,
        o.identity,
        o.persist,
        o.static,
        o.update,
        o.keycols,
    )


def publish_from_fields(fields: Sequence[Any]) -> Publish:
    """The publish :func:`publish_fields` made ``fields`` of; raises
    ValueError or TypeError for a tuple that is not one."""
    name, names, types, rows, checked, identity, persist, static, update, keycols = fields
    return Publish(
        Table(name, names, types, rows, checked),
        PublishOptions(identity, persist, static, update, keycols),
    )


@dataclass(frozen=True)
class Result:
    """Rows of a query, raw SQLite values (None, int, float, str, bytes).

    ``generation_number``: the generation whose DB answered (the snapshot,
    or the writer generation for ``use_write_db``), when the store knows it.
    """

    column_names: tuple[str, ...]
    rows: list[tuple[object, ...]] = field(default_factory=list)
    truncated: bool = False
    generation_number: Optional[int] = field(default=None, compare=False)


@dataclass(frozen=True)
class ViewDef:
    """One entry of views.conf: its name, the file's text and the SELECT body."""

    viewname: str
    view: str  # the CREATE VIEW statement as written in the file
    select_sql: str  # the part after AS, used to build the TEMP view
    column_list: Optional[tuple[str, ...]] = None  # CREATE VIEW v(a, b) AS ...
    error: Optional[str] = None  # set when the entry itself is malformed
    # The statement's own name when it differs from viewname (the original
    # server created the view under that name): the view gets it, and
    # ``warning`` says so in qasino_server_views.
    create_name: Optional[str] = None
    warning: Optional[str] = None

    @property
    def sql_name(self) -> str:
        """The name the view is created (and queried) under."""
        return self.create_name or self.viewname
