"""The benchmark's data: one table shape, its rows, and publish bodies.

Every figure uses the same five-column table, so the ceilings and the
server see the same rows and the same JSON. A publish body is assembled from
pre-encoded pieces: only the identity and the tablename differ between two
publishes of one plan, so building a body costs a few byte joins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

COLUMN_NAMES = ("hostname", "datacenter", "stat_id", "frobs", "load")
COLUMN_TYPES = ("string", "string", "integer", "integer", "real")
SQL_TYPES = ("TEXT", "TEXT", "INTEGER", "INTEGER", "REAL")
DATACENTERS = ("bos", "iad", "sfo", "lhr", "nrt")

Row = tuple[str, str, int, int, float]


def make_rows(count: int, offset: int = 0) -> list[Row]:
    """``count`` deterministic rows; the same arguments give the same rows."""
    rows = []
    for i in range(offset, offset + count):
        rows.append(
            (
                f"host{i % 997:04d}.example.com",
                DATACENTERS[i % len(DATACENTERS)],
                i,
                (i * 7919) % 100_000,
                (i % 1000) / 1000.0,
            )
        )
    return rows


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True)
class BodyTemplate:
    """``add_table_data`` bodies that differ only in identity and tablename."""

    head: bytes
    middle: bytes
    tail: bytes

    def body(self, identity: str, tablename: str) -> bytes:
        return b"".join((self.head, dumps(identity), self.middle, dumps(tablename), self.tail))


def publish_template(rows: int) -> BodyTemplate:
    """The JSON publish request for a table of ``rows`` rows."""
    columns = b'"column_names":' + dumps(COLUMN_NAMES)
    types = b'"column_types":' + dumps(COLUMN_TYPES)
    tail = b"," + columns + b"," + types + b',"rows":' + dumps(make_rows(rows)) + b"}}"
    return BodyTemplate(
        head=b'{"op":"add_table_data","identity":',
        middle=b',"table":{"tablename":',
        tail=tail,
    )


def tablenames(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}_t{j}" for j in range(count))
